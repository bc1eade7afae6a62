// Prefix caching on a real model (stories260K on ONNX Runtime): a prompt whose beginning comes from
// the cache gives the same tokens as computing it all, greedy and seeded, including two prompts
// sharing a prefix in flight at once and a conversation's next turn.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertLlama2c, Engine, Sampler, type KvSequence } from '../src/index.ts';
import { requireShared } from '../../../test/support/shared.ts';

async function stories(t: import('node:test').TestContext): Promise<{ warm: Engine; cold: Engine } | undefined> {
  const dir = requireShared(t, 'models', 'stories260K');
  if (!dir) return undefined;
  const out = mkdtempSync(join(tmpdir(), 'pdserve-prefix-'));
  t.after(() => rmSync(out, { recursive: true, force: true }));
  convertLlama2c({ checkpoint: join(dir, 'stories260K.bin'), tokenizer: join(dir, 'tok512.bin'), out });
  // Odd chunk sizes, so cached and computed parts never line up with the cold run's chunks.
  return {
    warm: await Engine.load(out, { threads: 1, maxSequences: 4, prefillChunk: 13 }),
    cold: await Engine.load(out, { threads: 1, maxSequences: 4, prefillChunk: 13, prefixCache: false }),
  };
}

interface Sampling { temperature: number; topK: number; topP: number; seed?: number }
const greedy: Sampling = { temperature: 0, topK: 0, topP: 1 };
const seeded: Sampling = { temperature: 0.9, topK: 40, topP: 0.95, seed: 1234 };

/** Runs a prompt as a worker does: the cached beginning, prefill of the rest, then decode steps. */
async function run(engine: Engine, id: string, prompt: number[], s: Sampling, maxTokens: number): Promise<{ ids: number[]; cached: number; seq: KvSequence }> {
  const hit = engine.startPrompt(id, prompt);
  assert.ok(hit, 'a free slot');
  const sampler = new Sampler(s);
  const V = engine.vocabSize;
  const logits = await engine.prefill(hit.seq, prompt.slice(hit.cachedTokens));
  const ids = [sampler.sample(logits, 0, V).id];
  while (ids.length < maxTokens) ids.push(sampler.sample(await engine.decode([{ seq: hit.seq, token: ids[ids.length - 1] }]), 0, V).id);
  return { ids, cached: hit.cachedTokens, seq: hit.seq };
}

async function once(engine: Engine, id: string, prompt: number[], s: Sampling, maxTokens: number) {
  const r = await run(engine, id, prompt, s, maxTokens);
  engine.release(r.seq);
  return r;
}

test('warm and cold runs give identical greedy and seeded tokens', async (t) => {
  const engines = await stories(t);
  if (!engines) return;
  const { warm, cold } = engines;
  const tok = warm.tokenizer;
  const system = tok.encode('Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends every day.');
  assert.ok(system.length >= 32, `a prefix of several blocks (${system.length} tokens)`);
  for (const [name, s] of [['greedy', greedy], ['seeded', seeded]] as const) {
    const prompts = [' One day, she saw a cat.', ' She had a red ball.', ' Her mom said'].map((u) => [...system, ...tok.encode(u, { addBos: false })]);
    for (const [i, prompt] of prompts.entries()) {
      const reference = await once(cold, `cold-${name}-${i}`, prompt, s, 40);
      const got = await once(warm, `warm-${name}-${i}`, prompt, s, 40);
      if (i > 0 || name === 'seeded') assert.ok(got.cached >= Math.floor(system.length / 16) * 16 - 16, `${name} prompt ${i} hit the cache (${got.cached} tokens)`);
      assert.deepEqual(got.ids, reference.ids, `${name} prompt ${i}`);
    }
  }
  const c = warm.prefixCache!.counters;
  assert.ok(c.hits > 0 && c.hits < c.queries, JSON.stringify(c));
  assert.equal(c.collisions, 0);
});

test('two prompts sharing a prefix in flight at once, and the next turn of a conversation', async (t) => {
  const engines = await stories(t);
  if (!engines) return;
  const { warm, cold } = engines;
  const tok = warm.tokenizer;
  const system = tok.encode('Tim and Sam were best friends. They liked to build big towers with blocks and race their toy cars.');
  const a = [...system, ...tok.encode(' Tim said', { addBos: false })];
  const b = [...system, ...tok.encode(' Sam was sad because', { addBos: false })];
  const refA = await once(cold, 'ra', a, greedy, 30);
  const refB = await once(cold, 'rb', b, greedy, 30);
  // a is still running (its slot live) when b starts: b copies a's blocks.
  const ra = await run(warm, 'a', a, greedy, 30);
  const rb = await run(warm, 'b', b, greedy, 30);
  assert.ok(rb.cached > 0, 'b reused a\'s blocks while a was live');
  assert.notEqual(ra.seq.slot, rb.seq.slot);
  assert.deepEqual(ra.ids, refA.ids);
  assert.deepEqual(rb.ids, refB.ids);
  // Both decode on, batched, after the copy: a's cache was not disturbed.
  const more = await warm.decode([{ seq: ra.seq, token: ra.ids.at(-1)! }, { seq: rb.seq, token: rb.ids.at(-1)! }]);
  assert.equal(more.length, 2 * warm.vocabSize);
  warm.release(ra.seq);
  warm.release(rb.seq);

  // Turn 2 sends turn 1's prompt, its answer and a new line: the answer's blocks were cached by decode.
  const turn1 = await once(warm, 't1', a, greedy, 40);
  const turn2 = [...a, ...turn1.ids, ...tok.encode(' Then they went home.', { addBos: false })];
  const ref2 = await once(cold, 'r2', turn2, greedy, 30);
  const got2 = await once(warm, 't2', turn2, greedy, 30);
  assert.ok(got2.cached > a.length, `turn 2 reused turn 1's answer too (${got2.cached} of ${turn2.length} tokens cached)`);
  assert.deepEqual(got2.ids, ref2.ids);
});
