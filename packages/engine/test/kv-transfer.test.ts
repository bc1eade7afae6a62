// The KV cache leaves one engine as checksummed blocks and continues in another: the tokens match
// one uninterrupted generation. Batched decode matches each sequence decoded alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { argmax, blocksFor, checksumBlocks, convertLlama2c, Engine, generate, KvChecksumError, verifyBlocks } from '../src/index.ts';
import { requireShared } from '../../../test/support/shared.ts';

async function stories(t: import('node:test').TestContext, blockTokens = 16): Promise<Engine[] | undefined> {
  const dir = requireShared(t, 'models', 'stories260K');
  if (!dir) return undefined;
  const out = mkdtempSync(join(tmpdir(), 'pdserve-kv-'));
  t.after(() => rmSync(out, { recursive: true, force: true }));
  convertLlama2c({ checkpoint: join(dir, 'stories260K.bin'), tokenizer: join(dir, 'tok512.bin'), out });
  return [await Engine.load(out, { threads: 1, blockTokens, maxSequences: 8, prefillChunk: 7 }), await Engine.load(out, { threads: 1, blockTokens, maxSequences: 8 })];
}

const greedy = { temperature: 0, topK: 0, topP: 1 };

/** Each prompt's first `maxTokens` greedy tokens, generated alone: what every batched run must equal. */
async function greedyAlone(engine: Engine, prompts: string[], maxTokens: number): Promise<number[][]> {
  const alone: number[][] = [];
  for (const p of prompts) alone.push((await generate(engine, engine.tokenizer.encode(p), { ...greedy, maxTokens, stopTokenIds: [] })).ids);
  return alone;
}

/** A sequence per prompt (ids `${prefix}${i}`), each prefilled on its own, and the first token each gives. */
async function prefillEach(engine: Engine, prompts: string[], prefix: string): Promise<{ seqs: Array<ReturnType<Engine['newSequence']>>; first: number[] }> {
  const seqs: Array<ReturnType<Engine['newSequence']>> = [];
  const first: number[] = [];
  for (const [i, p] of prompts.entries()) {
    const seq = engine.newSequence(`${prefix}${i}`);
    const logits = await engine.prefill(seq, engine.tokenizer.encode(p));
    seqs.push(seq);
    first.push(argmax(logits.subarray(0, engine.vocabSize)));
  }
  return { seqs, first };
}

test('prefill on one engine, blocks over the wire, decode on another = one generation', async (t) => {
  const engines = await stories(t, 4);
  if (!engines) return;
  const [prefill, decode] = engines;
  const prompt = prefill.tokenizer.encode('Once upon a time, there was a big dog named Max');
  const whole = await generate(prefill, prompt, { ...greedy, maxTokens: 60 });

  const a = prefill.newSequence('a');
  const logits = await prefill.prefill(a, prompt);
  const first = argmax(logits.subarray(0, prefill.vocabSize));
  const blockBytes = prefill.runner.blockBytes;
  const count = blocksFor(a.length, 4);
  const data = prefill.runner.readBlocks(a, 0, count);
  const range = { firstBlock: 0, blockCount: count, tokenCount: a.length, data, checksums: checksumBlocks(data, blockBytes) };
  verifyBlocks(range, blockBytes);
  prefill.release(a);

  const b = decode.newSequence('b');
  decode.runner.writeBlocks(b, 0, range.data, range.tokenCount);
  const ids = [first];
  while (ids.length < 60) {
    const l = await decode.decode([{ seq: b, token: ids[ids.length - 1] }]);
    ids.push(argmax(l.subarray(0, decode.vocabSize)));
  }
  assert.deepEqual(ids, whole.ids);
});

test('a corrupted block is detected and named', () => {
  const blockBytes = 64;
  const data = new Uint8Array(blockBytes * 3).map((_, i) => i % 251);
  const range = { firstBlock: 5, blockCount: 3, tokenCount: 40, data, checksums: checksumBlocks(data, blockBytes) };
  verifyBlocks(range, blockBytes);
  data[blockBytes + 10] ^= 1;
  assert.throws(() => verifyBlocks(range, blockBytes), (err: unknown) => err instanceof KvChecksumError && err.block === 6);
});

test('batched decode of different prompt lengths equals each sequence alone', async (t) => {
  const engines = await stories(t);
  if (!engines) return;
  const engine = engines[1];
  const prompts = ['Once upon a time', 'The cat sat on the mat and looked at the big red ball', 'Lily', 'Tom and Sue went to the park to play with their friends. They'];
  const alone = await greedyAlone(engine, prompts, 40);

  // Occupy a slot first so the batch starts scattered and has to be gathered.
  const blocker = engine.newSequence('blocker');
  const { seqs, first } = await prefillEach(engine, prompts, 's');
  engine.release(blocker);
  const got: number[][] = first.map((t) => [t]);
  // Sequences leave the batch at different times, as in continuous batching.
  for (let step = 0; step < 39; step++) {
    const active = seqs.map((seq, i) => ({ seq, i })).filter(({ i }) => got[i].length < 40 - i * 5);
    const logits = await engine.decode(active.map(({ seq, i }) => ({ seq, token: got[i][got[i].length - 1] })));
    active.forEach(({ i }, row) => got[i].push(argmax(logits.subarray(row * engine.vocabSize, (row + 1) * engine.vocabSize))));
  }
  prompts.forEach((_, i) => assert.deepEqual(got[i], alone[i].slice(0, got[i].length)));
});

test('a batch in any order: each sequence runs in its slot\'s row and its logits come back in the order asked', async (t) => {
  const engines = await stories(t);
  if (!engines) return;
  const engine = engines[1];
  const prompts = ['Once upon a time', 'The cat sat on the mat', 'Lily', 'Tom and Sue went to the park'];
  const alone = await greedyAlone(engine, prompts, 12);
  const { seqs, first } = await prefillEach(engine, prompts, 'o');
  const got: number[][] = first.map((t) => [t]);
  const orders = [[3, 1, 0, 2], [2, 3, 1, 0], [1, 0, 3, 2]];
  for (let step = 0; step < 11; step++) {
    const order = orders[step % orders.length];
    const logits = await engine.decode(order.map((i) => ({ seq: seqs[i], token: got[i][got[i].length - 1] })));
    order.forEach((i, row) => got[i].push(argmax(logits.subarray(row * engine.vocabSize, (row + 1) * engine.vocabSize))));
  }
  prompts.forEach((_, i) => assert.deepEqual(got[i], alone[i]));
  for (const seq of seqs) engine.release(seq);
});

test('prompts prefilled together in one padded pass continue exactly as prompts prefilled alone', async (t) => {
  const engines = await stories(t);
  if (!engines) return;
  const engine = engines[1];
  const prompts = ['Once upon a time', 'The big brown dog', 'Lily went to the park with her mom and saw a'];
  const alone = await greedyAlone(engine, prompts, 20);
  const seqs = prompts.map((_, i) => engine.newSequence(`p${i}`));
  const logits = await engine.runner.forward(seqs.map((seq, i) => ({ seq, tokens: engine.tokenizer.encode(prompts[i]) })));
  const got = prompts.map((_, i) => [argmax(logits.subarray(i * engine.vocabSize, (i + 1) * engine.vocabSize))]);
  for (let step = 0; step < 19; step++) {
    const l = await engine.decode(seqs.map((seq, i) => ({ seq, token: got[i][got[i].length - 1] })));
    seqs.forEach((_, i) => got[i].push(argmax(l.subarray(i * engine.vocabSize, (i + 1) * engine.vocabSize))));
  }
  prompts.forEach((_, i) => assert.deepEqual(got[i], alone[i]));
  seqs.forEach((s) => engine.release(s));
});
