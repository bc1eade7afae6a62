// The model commands as a user runs them: convert a llama2.c checkpoint, generate with --json, build
// a dummy model; bad input exits non-zero with a message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot, requireShared } from '../../../test/support/shared.ts';

const main = join(repoRoot, 'packages/cli/src/main.ts');
function pdserve(...args: string[]) {
  return spawnSync(process.execPath, ['--import', 'tsx', main, ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 60_000 });
}

test('convert then generate --json prints the reference ids and text on its last line', async (t) => {
  const src = requireShared(t, 'models', 'stories260K');
  const goldenPath = requireShared(t, 'golden', 'stories260K.once-upon-a-time.json');
  if (!src || !goldenPath) return;
  const golden = JSON.parse(readFileSync(goldenPath, 'utf8'));
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'stories260K');
  const conv = pdserve('convert', '--from', 'llama2c', '--checkpoint', join(src, 'stories260K.bin'), '--tokenizer', join(src, 'tok512.bin'), '--out', out);
  assert.equal(conv.status, 0, conv.stderr);
  const gen = pdserve('generate', '--model', out, '--prompt', golden.prompt, '--max-tokens', '40', '--temperature', '0', '--json');
  assert.equal(gen.status, 0, gen.stderr);
  const last = JSON.parse(gen.stdout.trim().split('\n').at(-1)!);
  assert.deepEqual(Object.keys(last).sort(), ['finish_reason', 'ids', 'prompt_ids', 'text']);
  assert.deepEqual(last.prompt_ids, golden.prompt_ids);
  assert.deepEqual(last.ids, golden.generated_ids.slice(0, 40));
  assert.equal(last.finish_reason, 'length');
  assert.ok(golden.completion_text.startsWith(last.text));
});

test('dummy builds a model that generate can run; bad arguments exit non-zero with a message', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const d = pdserve('dummy', '--preset', 'tiny', '--out', join(dir, 'tiny'));
  assert.equal(d.status, 0, d.stderr);
  const gen = pdserve('generate', '--model', join(dir, 'tiny'), '--prompt', 'hello', '--max-tokens', '3', '--json');
  assert.equal(gen.status, 0, gen.stderr);
  assert.equal(JSON.parse(gen.stdout.trim().split('\n').at(-1)!).ids.length, 3);
  const unknown = pdserve('dummy', '--preset', 'no-such', '--out', join(dir, 'x'));
  assert.notEqual(unknown.status, 0);
  assert.match(unknown.stderr, /unknown dummy preset "no-such"/);
  const missing = pdserve('generate', '--model', join(dir, 'absent'), '--prompt', 'hi', '--json');
  assert.notEqual(missing.status, 0);
  assert.match(missing.stderr, /absent/);
  const badTemp = pdserve('generate', '--model', join(dir, 'tiny'), '--prompt', 'hi', '--temperature', 'hot');
  assert.notEqual(badTemp.status, 0);
  assert.match(badTemp.stderr, /temperature/);
  for (const cmd of ['worker', 'up']) {
    const badSpin = pdserve(cmd, '--model', join(dir, 'tiny'), '--ort-spinning', 'sometimes');
    assert.notEqual(badSpin.status, 0);
    assert.match(badSpin.stderr, /--ort-spinning must be one of on, off.*got sometimes/);
  }
});

test('--dtype: convert and dummy record it in config.json and generate runs the model; a bad --dtype exits non-zero naming it', (t) => {
  const src = requireShared(t, 'models', 'stories260K');
  if (!src) return;
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const out = join(dir, 'stories260K-q8');
  const conv = pdserve('convert', '--from', 'llama2c', '--checkpoint', join(src, 'stories260K.bin'), '--tokenizer', join(src, 'tok512.bin'), '--out', out, '--dtype', 'q8');
  assert.equal(conv.status, 0, conv.stderr);
  assert.match(conv.stdout, /q8/);
  assert.equal(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')).dtype, 'q8');
  const gen = pdserve('generate', '--model', out, '--prompt', 'Once upon a time', '--max-tokens', '8', '--temperature', '0', '--json');
  assert.equal(gen.status, 0, gen.stderr);
  assert.equal(JSON.parse(gen.stdout.trim().split('\n').at(-1)!).ids.length, 8);
  const d = pdserve('dummy', '--preset', 'tiny', '--out', join(dir, 'tiny-q4'), '--dtype', 'q4', '--block-size', '16');
  assert.equal(d.status, 0, d.stderr);
  const cfg = JSON.parse(readFileSync(join(dir, 'tiny-q4', 'config.json'), 'utf8'));
  assert.equal(cfg.dtype, 'q4');
  assert.equal(cfg.quantization.block_size, 16);
  const bad = pdserve('dummy', '--preset', 'tiny', '--out', join(dir, 'x'), '--dtype', 'int2');
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /unknown --dtype "int2" \(expected one of fp32, q8, q4\)/);
  const fp16 = pdserve('convert', '--from', 'llama2c', '--checkpoint', join(src, 'stories260K.bin'), '--tokenizer', join(src, 'tok512.bin'), '--out', join(dir, 'y'), '--dtype', 'fp16');
  assert.notEqual(fp16.status, 0);
  assert.match(fp16.stderr, /fp16 is not supported/);
  const block = pdserve('dummy', '--preset', 'tiny', '--out', join(dir, 'z'), '--dtype', 'q8', '--block-size', '20');
  assert.notEqual(block.status, 0);
  assert.match(block.stderr, /block size 20/);
});
