// Clear errors, naming the file or the limit, for the ways a model or a prompt can be wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertLlama2c, Engine, generate, writeDummyModel } from '../src/index.ts';
import { requireShared } from '../../../test/support/shared.ts';

function tmp(t: import('node:test').TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-errors-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('a missing model directory or weight file is named', async (t) => {
  const dir = tmp(t);
  await assert.rejects(Engine.load(join(dir, 'nowhere')), /nowhere/);
  const model = join(dir, 'm');
  writeDummyModel('tiny', model);
  rmSync(join(model, 'model.onnx.data'));
  await assert.rejects(Engine.load(model), (err: Error) => /model\.onnx/.test(err.message));
});

test('a corrupt config.json or graph is named', async (t) => {
  const dir = tmp(t);
  const model = join(dir, 'm');
  writeDummyModel('tiny', model);
  const config = readFileSync(join(model, 'config.json'), 'utf8');
  writeFileSync(join(model, 'config.json'), config.slice(0, 40));
  await assert.rejects(Engine.load(model), /config\.json is not valid JSON/);
  writeFileSync(join(model, 'config.json'), config);
  writeFileSync(join(model, 'model.onnx'), Buffer.from('not a protobuf at all'));
  await assert.rejects(Engine.load(model), /model\.onnx/);
});

test('an unsupported architecture or format is refused by name', async (t) => {
  const dir = tmp(t);
  const model = join(dir, 'm');
  writeDummyModel('tiny', model);
  const cfg = JSON.parse(readFileSync(join(model, 'config.json'), 'utf8'));
  writeFileSync(join(model, 'config.json'), JSON.stringify({ ...cfg, format: 'pdserve-model/9' }));
  await assert.rejects(Engine.load(model), /unsupported format "pdserve-model\/9"/);
  writeFileSync(join(model, 'config.json'), JSON.stringify({ ...cfg, architecture: 'mamba' }));
  await assert.rejects(Engine.load(model), /unsupported architecture "mamba"/);
});

test('a truncated or foreign llama2.c checkpoint is refused by name', async (t) => {
  const dir = tmp(t);
  const src = requireShared(t, 'models', 'stories260K');
  if (!src) return;
  const bytes = readFileSync(join(src, 'stories260K.bin'));
  writeFileSync(join(dir, 'short.bin'), bytes.subarray(0, bytes.length - 1000));
  assert.throws(() => convertLlama2c({ checkpoint: join(dir, 'short.bin'), tokenizer: join(src, 'tok512.bin'), out: join(dir, 'o1') }), /short\.bin is truncated/);
  writeFileSync(join(dir, 'noise.bin'), Buffer.alloc(4096, 0xff));
  assert.throws(() => convertLlama2c({ checkpoint: join(dir, 'noise.bin'), tokenizer: join(src, 'tok512.bin'), out: join(dir, 'o2') }), /noise\.bin has an implausible header/);
  assert.throws(() => convertLlama2c({ checkpoint: join(src, 'stories260K.bin'), tokenizer: join(dir, 'missing.bin'), out: join(dir, 'o3') }), /missing\.bin does not exist/);
});

test('a prompt longer than the context names the limit', async (t) => {
  const dir = tmp(t);
  const model = join(dir, 'm');
  writeDummyModel('tiny', model, { maxSeqLen: 64 });
  const engine = await Engine.load(model, { threads: 1, maxSequences: 1 });
  const prompt = Array.from({ length: 65 }, (_, i) => 3 + (i % 200));
  await assert.rejects(generate(engine, prompt, { temperature: 0, topK: 0, topP: 1, maxTokens: 4 }), /65 tokens exceeds the context of 64 tokens/);
});

test('a dummy model encodes and generates from any text (byte fallback)', async (t) => {
  const dir = tmp(t);
  const model = join(dir, 'm');
  writeDummyModel('tiny', model);
  const engine = await Engine.load(model, { threads: 1, maxSequences: 1 });
  const ids = engine.tokenizer.encode('hi there, ünïcode ✓');
  assert.equal(ids[0], 1);
  const r = await generate(engine, ids, { temperature: 0, topK: 0, topP: 1, maxTokens: 5, stopTokenIds: [] });
  assert.equal(r.ids.length, 5);
});
