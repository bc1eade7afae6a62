// `pdserve up` with no model configured: where the hub answers (here a local server that mimics
// huggingface.co, HF_ENDPOINT) it fetches stories260K and serves real text; where it does not, it
// serves the random-weight dummy and says so loudly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { postJson, startCluster } from './support/cluster.ts';
import { startMockHub } from './support/mock-hub.ts';
import { requireShared } from './support/shared.ts';

test('no model configured, hub reachable: stories260K is fetched, verified and served', async (t) => {
  const src = requireShared(t, 'models', 'stories260K');
  const goldenPath = requireShared(t, 'golden', 'stories260K.once-upon-a-time.json');
  if (!src || !goldenPath) return;
  const golden = JSON.parse(readFileSync(goldenPath, 'utf8'));
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-default-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  // karpathy/tinyllamas as the hub lays it out: stories260K/stories260K.bin and stories260K/tok512.bin.
  mkdirSync(join(dir, 'tinyllamas', 'stories260K'), { recursive: true });
  for (const f of ['stories260K.bin', 'tok512.bin']) symlinkSync(join(src, f), join(dir, 'tinyllamas', 'stories260K', f));
  const hub = await startMockHub({ 'karpathy/tinyllamas': { dir: join(dir, 'tinyllamas') } });
  t.after(() => hub.close());
  const cache = join(dir, 'cache');
  const env: Record<string, string> = { HF_ENDPOINT: hub.url, PDSERVE_CACHE_DIR: cache, PDSERVE_MODEL: '' };
  const cluster = await startCluster(null, ['--unified', '1'], 60_000, { env });
  t.after(() => cluster.stop());
  assert.match(cluster.output(), /fetching stories260K/);
  assert.doesNotMatch(cluster.output(), /DUMMY/);
  assert.ok(existsSync(join(cache, 'stories260K', 'config.json')));
  const r = await postJson(`${cluster.url}/v1/completions`, { model: 'stories260K', prompt: golden.prompt, max_tokens: 40, temperature: 0 });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  assert.ok(golden.completion_text.startsWith(r.json.choices[0].text), r.json.choices[0].text);
  assert.ok(r.json.choices[0].text.length > 100);
});

test('no model configured, hub unreachable: the dummy model, with a loud warning', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-default-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const env: Record<string, string> = { HF_ENDPOINT: 'http://127.0.0.1:1', PDSERVE_CACHE_DIR: join(dir, 'cache'), PDSERVE_MODEL: '' };
  const cluster = await startCluster(null, ['--unified', '1'], 60_000, { env, modelName: 'dummy-tiny' });
  t.after(() => cluster.stop());
  assert.match(cluster.output(), /NO MODEL CONFIGURED and stories260K could not be fetched: serving a DUMMY model/);
  assert.match(cluster.output(), /cannot download http:\/\/127\.0\.0\.1:1\/karpathy\/tinyllamas/);
  const models = await (await fetch(`${cluster.url}/v1/models`)).json() as { data: Array<{ id: string }> };
  assert.deepEqual(models.data.map((m) => m.id), ['dummy-tiny']);
});
