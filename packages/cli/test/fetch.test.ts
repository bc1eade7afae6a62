// `pdserve fetch OWNER/NAME` and `convert --from hf` as a user runs them, against a local server
// that answers like the Hugging Face Hub (test/support/mock-hub.ts): a verified, resumable
// download that converts into a model matching the llama2.c golden; a wrong sha256 refused with
// nothing left behind; an interrupted download resumed with an HTTP Range request.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot, requireShared } from '../../../test/support/shared.ts';
import { exportSharedModelToHf } from '../../../test/support/hf-fixture.ts';
import { startMockHub } from '../../../test/support/mock-hub.ts';

const main = join(repoRoot, 'packages/cli/src/main.ts');

/** Runs the CLI without blocking this process's event loop (the mock hub lives here). */
function pdserve(env: Record<string, string>, ...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, ['--import', 'tsx', main, ...args], { cwd: repoRoot, env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), 120_000);
    p.on('close', (status) => { clearTimeout(timer); resolve({ status, stdout, stderr }); });
  });
}

function lastJson(stdout: string): any {
  return JSON.parse(stdout.trim().split('\n').at(-1)!);
}

test('convert --from hf, then generate --json: the llama2.c golden; a bad folder exits non-zero', async (t) => {
  const goldenPath = requireShared(t, 'golden', 'stories260K.once-upon-a-time.json');
  if (!requireShared(t, 'models', 'stories260K') || !goldenPath) return;
  const golden = JSON.parse(readFileSync(goldenPath, 'utf8'));
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-cli-hf-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  exportSharedModelToHf('stories260K', join(dir, 'hf'), { dtype: 'F32', shards: 2 });
  const conv = await pdserve({}, 'convert', '--from', 'hf', join(dir, 'hf'), '--out', join(dir, 'model'));
  assert.equal(conv.status, 0, conv.stderr);
  assert.match(conv.stdout, /wrote .*model: 5 layers, dim 64, vocab 512, context 512/);
  const gen = await pdserve({}, 'generate', '--model', join(dir, 'model'), '--prompt', golden.prompt, '--max-tokens', '60', '--temperature', '0', '--json');
  assert.equal(gen.status, 0, gen.stderr);
  const last = lastJson(gen.stdout);
  assert.deepEqual(last.prompt_ids, golden.prompt_ids);
  assert.deepEqual(last.ids, golden.generated_ids.slice(0, 60));
  assert.ok(golden.completion_text.startsWith(last.text));
  const missing = await pdserve({}, 'convert', '--from', 'hf', '--out', join(dir, 'x'));
  assert.notEqual(missing.status, 0);
  assert.match(missing.stderr, /--from hf needs the Hugging Face model folder/);
  const absent = await pdserve({}, 'convert', '--from', 'hf', join(dir, 'nope'), '--out', join(dir, 'x'));
  assert.notEqual(absent.status, 0);
  assert.match(absent.stderr, /folder .*nope does not exist/);
  assert.equal(existsSync(join(dir, 'x')), false);
});

test('fetch OWNER/NAME from a hub: verified, resumed after an interruption, wrong sha256 refused', async (t) => {
  const goldenPath = requireShared(t, 'golden', 'stories260K.once-upon-a-time.json');
  if (!requireShared(t, 'models', 'stories260K') || !goldenPath) return;
  const golden = JSON.parse(readFileSync(goldenPath, 'utf8'));
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-fetch-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  exportSharedModelToHf('stories260K', join(dir, 'repo'), { chatTemplate: '{{ messages[0].content }}' });
  exportSharedModelToHf('stories260K', join(dir, 'repo-sharded'), { shards: 3 });
  const hub = await startMockHub({
    'test-org/stories-hf': { dir: join(dir, 'repo'), sha: 'c0ffee'.padEnd(40, '0') },
    'test-org/stories-sharded': { dir: join(dir, 'repo-sharded') },
  });
  t.after(() => hub.close());
  const cache = join(dir, 'cache');
  const env = { HF_ENDPOINT: hub.url, PDSERVE_CACHE_DIR: cache };
  const weights = statSync(join(dir, 'repo', 'model.safetensors')).size;
  const downloads = join(cache, '.downloads', 'test-org--stories-hf', 'c0ffee'.padEnd(40, '0'));

  // A listed sha256 that the bytes do not match: refused, and nothing is left behind.
  hub.lie.add('model.safetensors');
  const lied = await pdserve(env, 'fetch', 'test-org/stories-hf');
  assert.notEqual(lied.status, 0);
  assert.match(lied.stderr, /model\.safetensors: sha256 [0-9a-f]{64} does not match the published [0-9a-f]{64}/);
  assert.equal(existsSync(join(cache, 'test-org--stories-hf')), false, 'no model directory');
  assert.equal(existsSync(downloads), false, 'no downloaded files');
  hub.lie.clear();
  // Same for a small file checked by its git blob id.
  hub.lie.add('tokenizer.json');
  const liedBlob = await pdserve(env, 'fetch', 'test-org/stories-hf');
  assert.match(liedBlob.stderr, /tokenizer\.json: git blob id [0-9a-f]{40} does not match/);
  assert.equal(existsSync(downloads), false);
  hub.lie.clear();

  // Every response for the weights stops after a quarter of the file: three attempts, each resuming
  // where the last stopped, still fall short, so the run fails and keeps what it has...
  hub.cutAfter.set('model.safetensors', Math.floor(weights / 4));
  const cut = await pdserve(env, 'fetch', 'test-org/stories-hf');
  assert.notEqual(cut.status, 0);
  assert.match(cut.stderr, /cannot download .*model\.safetensors after 3 attempts: .*run the command again to resume/);
  const part = join(downloads, 'model.safetensors.part');
  assert.equal(statSync(part).size, 3 * Math.floor(weights / 4));
  const ranges = hub.requests.filter((r) => r.path.endsWith('/model.safetensors') && r.path.startsWith('/cdn/')).map((r) => r.range);
  assert.deepEqual(ranges.slice(-3), [undefined, `bytes=${Math.floor(weights / 4)}-`, `bytes=${2 * Math.floor(weights / 4)}-`]);
  assert.equal(existsSync(join(cache, 'test-org--stories-hf')), false);
  // ...and the next run asks only for the rest.
  hub.cutAfter.clear();
  hub.requests.length = 0;
  const ok = await pdserve(env, 'fetch', 'test-org/stories-hf');
  assert.equal(ok.status, 0, ok.stderr);
  assert.match(ok.stderr, /resuming .*model\.safetensors at byte \d+/);
  const rest = hub.requests.filter((r) => r.path.startsWith('/cdn/'));
  assert.deepEqual(rest.map((r) => [r.path.split('/').at(-1), r.range, r.status]), [['model.safetensors', `bytes=${3 * Math.floor(weights / 4)}-`, 206]], 'the small files were kept; only the rest of the weights was fetched');
  const out = join(cache, 'test-org--stories-hf');
  const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
  assert.equal(config.name, 'test-org/stories-hf');
  assert.equal(config.source.repo, 'test-org/stories-hf');
  assert.equal(config.source.revision, 'c0ffee'.padEnd(40, '0'));
  assert.equal(existsSync(downloads), false, 'downloads are removed once converted');
  assert.deepEqual(readdirSync(out).sort(), ['config.json', 'generation_config.json', 'model.onnx', 'model.onnx.data', 'tokenizer.json', 'tokenizer_config.json']);
  const gen = await pdserve({}, 'generate', '--model', out, '--prompt', golden.prompt, '--max-tokens', '40', '--temperature', '0', '--json');
  assert.equal(gen.status, 0, gen.stderr);
  assert.deepEqual(lastJson(gen.stdout).ids, golden.generated_ids.slice(0, 40));

  // A sharded repository: the index, then the shards it names; the same weights.
  const sharded = await pdserve(env, 'fetch', 'test-org/stories-sharded', '--out', join(dir, 'sharded'));
  assert.equal(sharded.status, 0, sharded.stderr);
  for (let i = 1; i <= 3; i++) assert.match(sharded.stderr, new RegExp(`downloading model-0000${i}-of-00003\\.safetensors`));
  assert.ok(readFileSync(join(dir, 'sharded', 'model.onnx.data')).equals(readFileSync(join(out, 'model.onnx.data'))));
  const q8 = await pdserve(env, 'fetch', 'test-org/stories-sharded', '--out', join(dir, 'sharded-q8'), '--dtype', 'q8');
  assert.equal(q8.status, 0, q8.stderr);
  assert.match(q8.stdout, /context 512, q8/);

  // An unknown repository and an unreachable hub: clear errors.
  const unknown = await pdserve(env, 'fetch', 'test-org/absent');
  assert.match(unknown.stderr, /test-org\/absent at revision main was not found/);
  const offline = await pdserve({ ...env, HF_ENDPOINT: 'http://127.0.0.1:1' }, 'fetch', 'test-org/stories-hf');
  assert.match(offline.stderr, /cannot reach http:\/\/127\.0\.0\.1:1/);
});
