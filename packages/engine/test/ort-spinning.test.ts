// ONNX Runtime's intra-op spinning as a session option: off reaches ORT's session config
// (`session.intra_op.allow_spinning` = 0), on leaves ORT's default, and a model loaded with it off
// still gives the reference greedy output (two threads, so the pool is really used).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertLlama2c, Engine } from '../src/index.ts';
import { ortSessionOptions } from '../src/runtime/session.ts';
import { assertGreedyGolden } from './support/golden.ts';
import { requireShared } from '../../../test/support/shared.ts';

test('spinning off sets allow_spinning 0; on or unset leaves the default', () => {
  assert.deepEqual(ortSessionOptions({ threads: 2, spinning: false }).extra, { session: { intra_op: { allow_spinning: '0' } } });
  assert.equal(ortSessionOptions({ threads: 2, spinning: true }).extra, undefined);
  assert.equal(ortSessionOptions({ threads: 2 }).extra, undefined);
  assert.equal(ortSessionOptions({ threads: 2 }).intraOpNumThreads, 2);
});

test('a model loaded with spinning off on 2 threads still equals llama2.c run.c', async (t) => {
  const dir = requireShared(t, 'models', 'stories260K');
  const goldenPath = requireShared(t, 'golden', 'stories260K.once-upon-a-time.json');
  if (!dir || !goldenPath) return;
  const out = mkdtempSync(join(tmpdir(), 'pdserve-spin-'));
  t.after(() => rmSync(out, { recursive: true, force: true }));
  convertLlama2c({ checkpoint: join(dir, 'stories260K.bin'), tokenizer: join(dir, 'tok512.bin'), out });
  const engine = await Engine.load(out, { threads: 2, spinning: false, maxSequences: 2 });
  await assertGreedyGolden(engine, JSON.parse(readFileSync(goldenPath, 'utf8')));
});
