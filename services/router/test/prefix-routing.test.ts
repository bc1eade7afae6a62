// Prefix-aware routing without processes: the router's index of worker -> block hashes (fed by
// batches as the workers publish them), and the policy that weighs expected cache hits against load.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { blockHashChain, prefixRootHash } from '@pdserve/engine';
import { parsePrefixEventBatch, type PrefixEventBatch } from '@pdserve/common';
import { MAX_HASHES_PER_WORKER, PrefixIndex } from '../src/prefix-index.ts';
import { decidePlacement, decodeScore, type PlacementInput, type WorkerView } from '../src/placement.ts';

const B = 16;
const root = prefixRootHash({ model: 'm', blockTokens: B });
const prompt = Array.from({ length: 100 }, (_, i) => (i * 7) % 500);
const chain = blockHashChain(root, prompt, B);

function batch(over: Partial<PrefixEventBatch>): PrefixEventBatch {
  return { worker: 'w1', root, block_tokens: B, seq: 1, resync: true, stored: [], removed: [], ...over };
}

describe('prefix index', () => {
  test('counts the leading blocks a worker holds, never the last prompt token', () => {
    const ix = new PrefixIndex();
    ix.apply(batch({ stored: chain.slice(0, 3) }));
    ix.apply(batch({ worker: 'w2', stored: chain }));
    const hits = ix.cachedTokens(prompt, ['w1', 'w2', 'unknown']);
    assert.equal(hits.get('w1'), 48);
    assert.equal(hits.get('w2'), 96, 'six full blocks: the 100th token is outside them anyway');
    assert.equal(hits.get('unknown'), 0);
    const exact = prompt.slice(0, 96);
    assert.equal(ix.cachedTokens(exact, ['w2']).get('w2'), 80, 'a 96-token prompt recomputes its last block');
    // A hole in the chain ends the run: block 0 missing means nothing usable.
    ix.apply(batch({ worker: 'w3', stored: chain.slice(1) }));
    assert.equal(ix.cachedTokens(prompt, ['w3']).get('w3'), 0);
  });

  test('deltas in order apply; an evicted prefix stops attracting; a gap asks for a re-read', () => {
    const ix = new PrefixIndex();
    ix.apply(batch({ stored: chain.slice(0, 2) }));
    assert.equal(ix.apply(batch({ seq: 2, resync: false, stored: chain.slice(2, 4) })), false);
    assert.equal(ix.cachedTokens(prompt, ['w1']).get('w1'), 64);
    assert.equal(ix.apply(batch({ seq: 3, resync: false, removed: [chain[0]] })), false);
    assert.equal(ix.cachedTokens(prompt, ['w1']).get('w1'), 0, 'evicted: the prefix no longer attracts requests');
    assert.equal(ix.apply(batch({ seq: 5, resync: false, stored: [chain[0]] })), true, 'seq 4 was missed');
    assert.equal(ix.cachedTokens(prompt, ['w1']).get('w1'), 0, 'the out-of-order batch was not applied');
    ix.replace('w1', { root, blockTokens: B, seq: 5, hashes: chain.slice(0, 1) });
    assert.equal(ix.cachedTokens(prompt, ['w1']).get('w1'), 16);
    assert.equal(ix.apply(batch({ seq: 6, resync: false, root: prefixRootHash({ model: 'other', blockTokens: B }) })), true, 'another root: re-read');
    assert.equal(ix.apply(batch({ worker: 'new', seq: 9, resync: false, stored: chain })), true, 'unknown worker: re-read');
  });

  test('forgets workers that left the registry, and bounds what one worker may claim', () => {
    const ix = new PrefixIndex();
    ix.apply(batch({ stored: chain }));
    ix.apply(batch({ worker: 'w2', stored: chain }));
    ix.retain(new Set(['w2']));
    assert.equal(ix.has('w1'), false);
    assert.equal(ix.size.workers, 1);
    const flood = Array.from({ length: MAX_HASHES_PER_WORKER + 10 }, (_, i) => i.toString(16).padStart(16, '0'));
    ix.replace('w2', { root, blockTokens: B, seq: 1, hashes: flood });
    assert.equal(ix.size.hashes, MAX_HASHES_PER_WORKER);
  });

  test('malformed or oversized batches from Redis are ignored', () => {
    const good = batch({ stored: chain.slice(0, 2) });
    assert.deepEqual(parsePrefixEventBatch(JSON.stringify(good)), good);
    for (const bad of [
      'not json', '[]', JSON.stringify({ ...good, root: 'zz' }), JSON.stringify({ ...good, seq: 0 }), JSON.stringify({ ...good, worker: 'a b' }),
      JSON.stringify({ ...good, stored: ['short'] }), JSON.stringify({ ...good, block_tokens: -1 }),
      JSON.stringify({ ...good, stored: Array.from({ length: 5000 }, () => chain[0]) }),
    ]) assert.equal(parsePrefixEventBatch(bad), undefined, bad.slice(0, 60));
  });
});

function view(over: Partial<WorkerView>): WorkerView {
  return { id: 'p', role: 'prefill', queuedPrefillTokens: 0, prefillTokensPerS: 1000, batch: 0, decodeStepMsByBatch: new Map([[1, 20]]), prefillChunkTokens: 256, localPrefillShare: 0, ...over };
}

function input(over: Partial<PlacementInput>): PlacementInput {
  return { promptTokens: 1056, decode: view({ id: 'd', role: 'decode' }), prefillers: [], transfer: { fixedMs: 1, msPerToken: 0.01 }, ...over };
}

describe('prefix-aware policy', () => {
  test('the prefill worker holding the prefix wins, unless its queue costs more than the hit saves', () => {
    const hot = view({ id: 'hot', cachedTokens: 1024 });
    const cold = view({ id: 'cold' });
    const p = decidePlacement(input({ prefillers: [cold, hot] }), { mode: 'remote' });
    assert.equal(p.prefillWorker, 'hot');
    assert.equal(p.expectedCachedTokens, 1024);
    // 1024 tokens saved = 1.02 s at 1000 tokens/s; 500 queued tokens ahead cost less, 2000 more.
    assert.equal(decidePlacement(input({ prefillers: [cold, { ...hot, queuedPrefillTokens: 500 }] }), { mode: 'remote' }).prefillWorker, 'hot');
    const busy = decidePlacement(input({ prefillers: [cold, { ...hot, queuedPrefillTokens: 2000 }] }), { mode: 'remote' });
    assert.equal(busy.prefillWorker, 'cold');
    assert.equal(busy.expectedCachedTokens, 0);
    // Local prefill on a decode worker that holds the prefix is cheaper still.
    const local = decidePlacement(input({ prefillers: [cold], decode: view({ id: 'd', role: 'unified', cachedTokens: 1024 }) }), { mode: 'auto' });
    assert.deepEqual([local.where, local.expectedCachedTokens], ['local', 1024]);
  });

  test('decode choice: a unified worker\'s hit counts against its load; misses spread to emptier caches', () => {
    const load = (over = {}) => ({ queue_len: 0, running: 0, waiting: 0, free_kv_blocks: 100, total_kv_blocks: 100, ...over });
    const idle = decodeScore({ role: 'unified', load: load(), inflight: 0, cachedTokens: 0 }, 1000);
    const hitBusy = decodeScore({ role: 'unified', load: load({ running: 1, free_kv_blocks: 90 }), inflight: 0, cachedTokens: 960 }, 1000);
    assert.ok(hitBusy < idle, 'one running request is worth less than a 96% hit');
    const hitBusier = decodeScore({ role: 'unified', load: load({ running: 3, free_kv_blocks: 70 }), inflight: 0, cachedTokens: 960 }, 1000);
    assert.ok(hitBusier > idle, 'three are worth more');
    // A decode worker under remote-only placement never prefills: its (index) hits do not count.
    assert.equal(decodeScore({ role: 'decode', load: load(), inflight: 0, cachedTokens: 960 }, 1000), decodeScore({ role: 'decode', load: load(), inflight: 0, cachedTokens: 0 }, 1000));
    // When it may prefill locally (auto), the conversation it holds draws the next turn to it.
    assert.ok(
      decodeScore({ role: 'decode', load: load({ running: 1 }), inflight: 0, cachedTokens: 960, mayPrefillLocally: true }, 1000)
        < decodeScore({ role: 'decode', load: load(), inflight: 0, cachedTokens: 0, mayPrefillLocally: true }, 1000),
    );
    const emptier = decodeScore({ role: 'unified', load: load({ prefix_cache_blocks: 0 }), inflight: 0, cachedTokens: 0 }, 1000);
    const fuller = decodeScore({ role: 'unified', load: load({ prefix_cache_blocks: 50 }), inflight: 0, cachedTokens: 0 }, 1000);
    assert.ok(emptier < fuller && fuller - emptier < 0.01, 'a tie-break only');
  });
});
