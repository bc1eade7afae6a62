// The worker's checks of gRPC input (issue 12): what the engine could not serve is named here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateProblem, kvChunkProblem, kvTimeoutMs, MAX_TIMER_MS, samplingProblem, type KvReceiveState } from '../src/validate.ts';
import type { KvChunkMsg, SamplingParamsMsg } from '@pdserve/common';

const good: SamplingParamsMsg = { temperature: 0.7, top_p: 0.9, top_k: 40, seed: 7, max_tokens: 16, min_tokens: 0, stop_token_ids: [2], ignore_eos: false, logprobs: -1 };

test('sampling: every field out of range, NaN or unset is named', () => {
  assert.equal(samplingProblem(good), undefined);
  assert.equal(samplingProblem({ ...good, top_p: 0, top_k: 0, logprobs: 20, min_tokens: 100 }), undefined, 'proto3 zeros mean off');
  const bad: Array<[Partial<SamplingParamsMsg> | null, RegExp]> = [
    [null, /sampling is required/],
    [{ top_k: -2147483648 }, /top_k/], [{ top_k: 1.5 }, /top_k/],
    [{ temperature: NaN }, /temperature/], [{ temperature: Infinity }, /temperature/], [{ temperature: -0.1 }, /temperature/],
    [{ top_p: NaN }, /top_p/], [{ top_p: 1.5 }, /top_p/], [{ top_p: -1 }, /top_p/],
    [{ seed: 2 ** 60 }, /seed/], [{ max_tokens: 0 }, /max_tokens/],
    [{ logprobs: -2 }, /logprobs/], [{ logprobs: 21 }, /logprobs/],
    [{ stop_token_ids: new Array(1025).fill(1) }, /stop_token_ids/],
  ];
  for (const [p, re] of bad) assert.match(samplingProblem(p === null ? null : { ...good, ...p }) ?? 'accepted', re, JSON.stringify(p));
});

test('kv_timeout_ms: 0 is the default, anything past setTimeout\'s limit is clamped', () => {
  assert.equal(kvTimeoutMs(0), 60_000);
  assert.equal(kvTimeoutMs(5), 5);
  assert.equal(kvTimeoutMs(2 ** 31), MAX_TIMER_MS);
  assert.equal(kvTimeoutMs(2 ** 32 - 1), MAX_TIMER_MS);
});

test('KV chunks: in order, once, within the reservation, nothing after done, done with a first token in the vocabulary', () => {
  const st = (): KvReceiveState => ({ promptLen: 40, blockTokens: 16, blockBytes: 8, wireBlockBytes: { fp32: 8, fp16: 4, bf16: 4, int8: 6 }, nextBlock: 0, done: false });
  const chunk = (first: number, count: number, extra: Partial<KvChunkMsg> = {}): KvChunkMsg => ({
    request_id: 'r', first_block: first, block_count: count, token_count: Math.min(40, (first + count) * 16), data: new Uint8Array(count * 8),
    checksums: [], done: false, first_token: null, block_tokens: 16, block_bytes: 8, layout: 'pdserve-kv/1', wire_dtype: 'fp32', ...extra,
  });
  assert.equal(kvChunkProblem(st(), chunk(0, 2), 512), undefined);
  assert.equal(kvChunkProblem(st(), chunk(0, 3, { done: true, first_token: { id: 5, logprob: 0, top_logprobs: [] } }), 512), undefined);
  assert.match(kvChunkProblem({ ...st(), nextBlock: 1 }, chunk(0, 1), 512)!, /expected block 1/, 'repeat');
  assert.match(kvChunkProblem(st(), chunk(1, 1), 512)!, /expected block 0/, 'gap');
  assert.match(kvChunkProblem(st(), chunk(0, 4), 512)!, /past the 3 blocks/, 'beyond the reservation');
  assert.match(kvChunkProblem(st(), chunk(0, 1, { data: new Uint8Array(100) }), 512)!, /bytes/, 'size');
  // Compressed blocks take their dtype's size on the wire, one dtype for the whole transfer.
  assert.equal(kvChunkProblem(st(), chunk(0, 2, { wire_dtype: 'int8', data: new Uint8Array(12) }), 512), undefined);
  assert.match(kvChunkProblem(st(), chunk(0, 2, { wire_dtype: 'fp16', data: new Uint8Array(16) }), 512)!, /2 fp16 blocks carries 16 bytes, expected 8/);
  assert.match(kvChunkProblem({ ...st(), nextBlock: 1, wireDtype: 'fp16' }, chunk(1, 1), 512)!, /wire dtype fp32 after chunks in fp16/);
  assert.match(kvChunkProblem(st(), chunk(0, 1, { token_count: 3 }), 512)!, /token_count/);
  assert.match(kvChunkProblem({ ...st(), done: true }, chunk(3, 0), 512)!, /after the transfer was done/);
  assert.match(kvChunkProblem(st(), chunk(0, 3, { done: true }), 512)!, /no first_token/);
  assert.match(kvChunkProblem(st(), chunk(0, 3, { done: true, first_token: { id: 512, logprob: 0, top_logprobs: [] } }), 512)!, /first_token.id 512/);
  assert.match(kvChunkProblem(st(), chunk(0, 2, { done: true, first_token: { id: 1, logprob: 0, top_logprobs: [] } }), 512)!, /done after 2 of 3/);
});

test('Generate: prompt_ids are optional, but when sent they must be prompt_len ids in the vocabulary', () => {
  const limits = { vocabSize: 100, maxModelLen: 64 };
  const req = (prompt_ids?: number[]) => ({ request_id: 'r1', prompt_len: 3, sampling: good, kv_timeout_ms: 0, ...(prompt_ids ? { prompt_ids } : {}) });
  assert.equal(generateProblem(req(), limits), undefined);
  assert.equal(generateProblem(req([]), limits), undefined);
  assert.equal(generateProblem(req([5, 6, 7]), limits), undefined);
  assert.match(generateProblem(req([5, 6]), limits)!, /prompt_ids has 2 ids for a prompt_len of 3/);
  assert.match(generateProblem(req([5, 6, 100]), limits)!, /token id 100 at position 2 is outside/);
});
