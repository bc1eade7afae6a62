// The prefix cache's bookkeeping over a small slot arena (no model): the hash chain, reuse of a
// finished or running sequence's blocks, LRU eviction that never touches a live slot, the
// collision guard, events, and retained contents surviving the arena's re-layouts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { blockHash, blockHashChain, prefixRootHash } from '../src/kv/block-hash.ts';
import { PrefixCache } from '../src/kv/prefix-cache.ts';
import { SlotKvCache, type KvSequence } from '../src/kv/slot-cache.ts';

const B = 4;

function arena(maxSlots = 3, maxTokensPerSlot = 64): SlotKvCache {
  return new SlotKvCache({ layers: 2, kvHeads: 2, headDim: 3, blockTokens: B, maxSlots, maxTokensPerSlot });
}

/** What a forward pass would store for `token` at `pos`: recognisable in every layer, head and dim. */
function kvValue(token: number, pos: number, layer: number, head: number, kind: 0 | 1): number {
  return token * 1000 + pos + layer * 0.25 + head * 0.125 + kind * 0.0625;
}

/** Stands in for prefill: writes the KV of tokens[seq.length..] as a forward pass would. */
function compute(cache: SlotKvCache, seq: KvSequence, tokens: readonly number[], upTo = tokens.length): void {
  const { layers, kvHeads, headDim } = cache.shape;
  const from = seq.length;
  const count = upTo - from;
  if (count <= 0) return;
  cache.reserve(upTo);
  for (let l = 0; l < layers; l++) {
    const k = new Float32Array(kvHeads * count * headDim);
    const v = new Float32Array(kvHeads * count * headDim);
    for (let h = 0; h < kvHeads; h++) {
      for (let i = 0; i < count; i++) {
        for (let d = 0; d < headDim; d++) {
          k[(h * count + i) * headDim + d] = kvValue(tokens[from + i], from + i, l, h, 0);
          v[(h * count + i) * headDim + d] = kvValue(tokens[from + i], from + i, l, h, 1);
        }
      }
    }
    cache.writeNew(seq, l, k, v, count, count, 0);
  }
  seq.length = upTo;
}

/** Asserts that seq's first `n` positions hold exactly what computing `tokens` would have stored. */
function assertHolds(cache: SlotKvCache, seq: KvSequence, tokens: readonly number[], n = seq.length): void {
  const { layers, kvHeads, headDim } = cache.shape;
  const blocks = Math.ceil(n / B);
  const data = new Float32Array(cache.readBlocks(seq, 0, blocks).buffer);
  let o = 0;
  for (let b = 0; b < blocks; b++) {
    for (let l = 0; l < layers; l++) {
      for (const kind of [0, 1] as const) {
        for (let h = 0; h < kvHeads; h++) {
          for (let i = 0; i < B; i++) {
            const pos = b * B + i;
            for (let d = 0; d < headDim; d++, o++) {
              if (pos < n) assert.equal(data[o], Math.fround(kvValue(tokens[pos], pos, l, h, kind)), `position ${pos} layer ${l} head ${h}`);
            }
          }
        }
      }
    }
  }
}

const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

test('hash chain: deterministic, prefix-closed, covers the parent, the model and the block size', () => {
  const root = prefixRootHash({ model: 'm', blockTokens: B });
  const tokens = range(14, 1);
  const chain = blockHashChain(root, tokens, B);
  assert.equal(chain.length, 3, 'only full blocks are hashed');
  assert.match(chain[0], /^[0-9a-f]{16}$/);
  assert.deepEqual(blockHashChain(root, tokens, B), chain);
  assert.deepEqual(blockHashChain(root, tokens.slice(0, 9), B), chain.slice(0, 2));
  assert.deepEqual(blockHashChain(root, tokens, B, 1), chain.slice(0, 1));
  // The same four tokens after a different first block hash differently (the chain covers the parent).
  const other = [...range(4, 100), ...tokens.slice(4, 8)];
  assert.notEqual(blockHashChain(root, other, B)[1], chain[1]);
  assert.equal(blockHash(chain[0], tokens, 4, B), chain[1]);
  assert.notEqual(prefixRootHash({ model: 'other', blockTokens: B }), root);
  assert.notEqual(prefixRootHash({ model: 'm', blockTokens: 8 }), root);
  assert.notEqual(prefixRootHash({ model: 'm', blockTokens: B, layout: 'pdserve-kv/2' }), root);
});

test("a finished sequence's full blocks serve the next prompt that starts with them, in its own slot", () => {
  const cache = arena();
  const pc = new PrefixCache(cache, { model: 'm' });
  const a = range(10, 1);
  const hitA = pc.start('a', a)!;
  assert.equal(hitA.cachedTokens, 0);
  compute(cache, hitA.seq, a);
  const slotA = hitA.seq.slot;
  pc.release(hitA.seq);
  assert.equal(cache.retainedBlocks, 2, 'the two full blocks stay; the partial third does not');
  assert.equal(cache.freeSlots, 3, 'a retained slot counts as free');
  assert.equal(cache.usedBlocks, 0);

  const b = [...a.slice(0, 9), 77, 78];
  const hitB = pc.start('b', b)!;
  assert.equal(hitB.cachedTokens, 8);
  assert.equal(hitB.seq.slot, slotA, 'taken over in place, nothing copied');
  assertHolds(cache, hitB.seq, b);
  compute(cache, hitB.seq, b);
  assertHolds(cache, hitB.seq, b);
  assert.deepEqual(pc.counters, { queries: 21, hits: 8, collisions: 0, evictions: 0 });
});

test("the prompt's last token is always recomputed", () => {
  const cache = arena();
  const pc = new PrefixCache(cache, { model: 'm' });
  const a = range(8, 1);
  const h = pc.start('a', a)!;
  compute(cache, h.seq, a);
  pc.release(h.seq);
  assert.equal(pc.start('again', a)!.cachedTokens, 4, 'an 8-token prompt that is fully cached reuses one block, not two');
});

test('two requests sharing a prefix in flight: the second copies the first one\'s computed blocks', () => {
  const cache = arena();
  const pc = new PrefixCache(cache, { model: 'm' });
  const system = range(12, 1);
  const a = [...system, 50, 51, 52];
  const b = [...system, 60, 61];
  const hitA = pc.start('a', a)!;
  compute(cache, hitA.seq, a, 8); // mid-prompt: two blocks computed
  const hitB = pc.start('b', b)!;
  assert.equal(hitB.cachedTokens, 8, 'only blocks already computed are shared');
  assert.notEqual(hitB.seq.slot, hitA.seq.slot);
  assertHolds(cache, hitB.seq, b);
  compute(cache, hitA.seq, a);
  compute(cache, hitB.seq, b);
  assertHolds(cache, hitA.seq, a);
  assertHolds(cache, hitB.seq, b);
  // A third, once both have computed their prompts, gets the three system-prompt blocks.
  const hitC = pc.start('c', [...system, 70])!;
  assert.equal(hitC.cachedTokens, 12);
  assertHolds(cache, hitC.seq, [...system, 70]);
});

test('eviction drops the least recently used retained prefix and never a slot in use', () => {
  const cache = arena(3);
  const pc = new PrefixCache(cache, { model: 'm' });
  const prompts = [range(9, 100), range(9, 200), range(9, 300)];
  const seqs = prompts.map((p, i) => { const h = pc.start(`s${i}`, p)!; compute(cache, h.seq, p); return h.seq; });
  assert.equal(pc.allocate('x'), null, 'every slot is live: nothing to evict');
  pc.release(seqs[0]);
  pc.release(seqs[1]);
  // s1's prefix is used again (and released): s0's is now the least recently used.
  const again = pc.start('s1-again', [...prompts[1].slice(0, 8), 9])!;
  assert.equal(again.cachedTokens, 8);
  pc.release(again.seq);
  const fresh = pc.start('new', range(9, 400))!;
  assert.equal(fresh.cachedTokens, 0);
  assert.equal(pc.counters.evictions, 1);
  assert.equal(cache.retained.length, 1, "s1's prefix is the one left");
  assertHolds(cache, seqs[2], prompts[2]);
  assertHolds(cache, fresh.seq, range(9, 400), 0);
  // s1's retained prefix is still intact; s0's is gone.
  pc.release(fresh.seq);
  const s1 = pc.start('s1-third', [...prompts[1].slice(0, 8), 2])!;
  assert.equal(s1.cachedTokens, 8);
  assertHolds(cache, s1.seq, prompts[1], 8);
  assertHolds(cache, seqs[2], prompts[2]);
});

test('an eviction for a copy never drops the prefix being copied', () => {
  const cache = arena(2);
  const pc = new PrefixCache(cache, { model: 'm' });
  const p = range(9, 1);
  const a = pc.start('a', p)!;
  compute(cache, a.seq, p);
  const other = pc.start('o', range(9, 50))!;
  compute(cache, other.seq, range(9, 50));
  pc.release(other.seq); // retained, and the only eviction candidate
  const b = pc.start('b', [...p.slice(0, 8), 3])!; // the match is live a: copy into a fresh slot
  assert.equal(b.cachedTokens, 8);
  assertHolds(cache, b.seq, p, 8);
  assertHolds(cache, a.seq, p);
});

test('hash collision guard: matching hashes with different token ids are never reused', () => {
  const cache = arena();
  // Every block of every prompt gets the same hash: only the token comparison tells them apart.
  const pc = new PrefixCache(cache, { model: 'm' }, { chain: (_root, tokens, bt) => Array.from({ length: Math.floor(tokens.length / bt) }, () => '0000000000000000') });
  const a = range(12, 1);
  const h = pc.start('a', a)!;
  compute(cache, h.seq, a);
  pc.release(h.seq);
  const forged = pc.start('b', range(12, 500))!;
  assert.equal(forged.cachedTokens, 0);
  assert.equal(forged.seq.length, 0);
  pc.release(forged.seq);
  const partly = pc.start('c', [...a.slice(0, 4), 9, 9, 9, 9, 9, 9, 9, 9, 9])!;
  assert.equal(partly.cachedTokens, 4, 'only the verified first block');
  assertHolds(cache, partly.seq, a, 4);
  assert.ok(pc.counters.collisions >= 2);
});

test('events: a hash is stored once however many slots hold it, removed when the last one goes', () => {
  const cache = arena(2);
  const pc = new PrefixCache(cache, { model: 'm' });
  const p = range(9, 1);
  const chain = blockHashChain(pc.root, p, B);
  const a = pc.start('a', p)!;
  compute(cache, a.seq, p);
  const b = pc.start('b', p)!; // copies one block (the last token is recomputed), registers both
  compute(cache, b.seq, p);
  assert.deepEqual(pc.drainEvents(), { events: chain.map((hash) => ({ kind: 'stored', hash })), resync: false });
  pc.release(a.seq);
  pc.release(b.seq);
  assert.deepEqual(pc.drainEvents().events, []);
  assert.deepEqual(new Set(pc.heldHashes()), new Set(chain));
  pc.allocate('x');
  pc.allocate('y'); // both retained slots are dropped
  const { events } = pc.drainEvents();
  assert.deepEqual(new Set(events.map((e) => `${e.kind}:${e.hash}`)), new Set(chain.map((h) => `removed:${h}`)));
  assert.deepEqual(pc.heldHashes(), []);
});

test('events past the bound are dropped and the next drain asks for a resync', () => {
  const cache = arena(2, 256);
  const pc = new PrefixCache(cache, { model: 'm' }, { maxEvents: 5 });
  const h = pc.start('a', range(40, 1))!;
  const drained = pc.drainEvents();
  assert.equal(drained.resync, true);
  assert.deepEqual(drained.events, []);
  assert.equal(pc.heldHashes().length, 10);
  pc.release(h.seq); // nothing computed: all ten hashes go, again more than the bound
  assert.deepEqual(pc.drainEvents(), { events: [], resync: true });
  assert.deepEqual(pc.heldHashes(), []);
  const small = range(8, 1);
  pc.start('b', small);
  assert.deepEqual(pc.drainEvents(), { events: blockHashChain(pc.root, small, B).map((hash) => ({ kind: 'stored', hash })), resync: false });
});

test('a retained prefix survives the arena growing, shrinking and compacting a batch around it', () => {
  const cache = arena(3, 128);
  const pc = new PrefixCache(cache, { model: 'm' });
  const p = range(20, 1);
  const a = pc.start('a', p)!;
  compute(cache, a.seq, p);
  pc.release(a.seq); // slot 0 retained, 20 positions (5 blocks)
  const long = range(90, 300);
  const x = pc.start('x', long)!;
  const y = pc.start('y', range(5, 700))!;
  compute(cache, x.seq, long); // stride grows past 90
  compute(cache, y.seq, range(5, 700));
  cache.gather([y.seq, x.seq]); // y and x into slots 0 and 1: the retained prefix trades places with y (no empty slot)
  pc.release(x.seq);
  pc.release(y.seq); // stride may shrink
  const again = pc.start('a2', [...p, 5])!;
  assert.equal(again.cachedTokens, 20);
  assertHolds(cache, again.seq, p);
  const x2 = pc.start('x2', [...long.slice(0, 88), 1])!;
  assert.equal(x2.cachedTokens, 88);
  assertHolds(cache, x2.seq, long, 88);
});

test('decode steps extend the reusable prefix (a conversation\'s next turn hits its previous answer)', () => {
  const cache = arena();
  const pc = new PrefixCache(cache, { model: 'm' });
  const prompt = range(6, 1);
  const h = pc.start('t1', prompt)!;
  compute(cache, h.seq, prompt);
  const answer = [40, 41, 42, 43, 44];
  const all = [...prompt];
  for (const t of answer) {
    all.push(t);
    compute(cache, h.seq, all);
    pc.appended(h.seq, t);
  }
  pc.release(h.seq);
  const turn2 = [...all, 90, 91];
  const h2 = pc.start('t2', turn2)!;
  assert.equal(h2.cachedTokens, 8);
  assertHolds(cache, h2.seq, turn2, 8);
});

test('attach: a reserved empty sequence (a unified worker\'s decode side) takes the cached prefix', () => {
  const cache = arena();
  const pc = new PrefixCache(cache, { model: 'm' });
  const p = range(13, 1);
  const a = pc.start('a', p)!;
  compute(cache, a.seq, p);
  pc.release(a.seq);
  const reserved = pc.allocate('r')!;
  const hit = pc.attach(reserved, [...p.slice(0, 12), 99]);
  assert.equal(hit.seq, reserved);
  assert.equal(hit.cachedTokens, 12);
  assertHolds(cache, reserved, p, 12);
  assert.equal(cache.sequences.length, 1, 'its old empty slot is free again');
});

test('a reservation over a full cache keeps the LRU slot\'s contents for its own prompt, and only for it', () => {
  const cache = arena(1);
  const pc = new PrefixCache(cache, { model: 'm' });
  const p = range(13, 1);
  const a = pc.start('a', p)!;
  compute(cache, a.seq, p);
  pc.release(a.seq);
  // The only slot is retained: the reservation takes it over, contents and all.
  const r = pc.reserve('r')!;
  assert.equal(r.length, 12, 'over the old contents (three blocks) until attach or a transfer sets it');
  assert.equal(pc.start('other', p), null, 'no other slot, and a reservation\'s old contents are nobody else\'s');
  const hit = pc.attach(r, [...p.slice(0, 8), 99, 98]);
  assert.equal(hit.cachedTokens, 8);
  assertHolds(cache, r, p, 8);
  pc.release(r);

  // A reservation whose KV then arrives from elsewhere (a decode worker) keeps nothing stale.
  const r2 = pc.reserve('r2')!;
  const incoming = range(10, 600);
  r2.length = 0;
  compute(cache, r2, incoming);
  pc.release(r2);
  assert.equal(cache.retainedBlocks, 0, 'its blocks have no known token ids: not cached');
  const again = pc.start('again', [...p.slice(0, 8), 1])!;
  assert.equal(again.cachedTokens, 0);
});

test('remember: a reservation filled by a KV transfer becomes a reusable prefix under its prompt\'s ids, its answer included', () => {
  const cache = arena();
  const pc = new PrefixCache(cache, { model: 'm' });
  const p = range(10, 1);
  const r = pc.reserve('r')!;
  compute(cache, r, p); // what a transfer writes: the KV of all 10 positions
  pc.remember(r, p);
  // Decode steps append the answer (its last token is never fed back, so 13 positions hold 10 + 3).
  for (const t of [50, 51, 52]) {
    compute(cache, r, [...p, 50, 51, 52], r.length + 1);
    pc.appended(r, t);
  }
  pc.release(r);
  const next = [...p, 50, 51, 52, 53, 7, 8];
  const hit = pc.start('turn2', next)!;
  assert.equal(hit.cachedTokens, 12, 'three full blocks: the prompt and the start of the answer');
  assertHolds(cache, hit.seq, next, 12);
  assert.throws(() => pc.remember(pc.reserve('short')!, p), /holds 0 positions, not the 10/);
});

test('gathering a batch into slots 0..n-1 moves only the sequences outside that range', () => {
  const cache = arena(6, 64);
  const seqs = ['a', 'b', 'c', 'd', 'e'].map((id) => cache.allocate(id)!);
  seqs.forEach((s, i) => compute(cache, s, range(5 + i, 10 * (i + 1))));
  cache.free(seqs[1]); // b finished: a, c, d, e decode on
  const batch = [seqs[0], seqs[2], seqs[3], seqs[4]];
  assert.equal(cache.gather(batch), 1, 'only e (slot 4) moves, into b\'s old slot 1; the batch order is not kept');
  assert.deepEqual(batch.map((s) => s.slot).sort(), [0, 1, 2, 3]);
  assert.equal(seqs[4].slot, 1);
  batch.forEach((s) => assertHolds(cache, s, range(5 + ['a', 'b', 'c', 'd', 'e'].indexOf(s.id), 10 * (['a', 'b', 'c', 'd', 'e'].indexOf(s.id) + 1))));
  assert.equal(cache.gather([...batch].reverse()), 0, 'already gathered: nothing moves, whatever the order asked');
  // A holder that is not in the batch moves out to an empty slot rather than trading places.
  const pc = new PrefixCache(cache, { model: 'm' });
  const x = pc.start('x', range(8, 500))!;
  compute(cache, x.seq, range(8, 500)); // slot 4
  pc.release(x.seq); // retained in slot 4
  const f = cache.allocate('f')!; // slot 5
  compute(cache, f, range(6, 600));
  const [a, c, d, e] = batch; // slots 0, 2, 3, 1
  cache.free(d); // slot 3 empty
  assert.equal(cache.gather([a, c, f]), 1, 'f fills slot 1; e, not in this step, moves out of its way');
  assert.deepEqual([a.slot, c.slot, f.slot, e.slot], [0, 2, 1, 3]);
  assertHolds(cache, f, range(6, 600));
  assertHolds(cache, e, range(9, 50));
  // No empty slot left: the holder in the way trades places (slots: a0 f1 c2 e3 x4, and g5).
  const g = cache.allocate('g')!;
  compute(cache, g, range(7, 700));
  assert.equal(cache.gather([a, c, g]), 1);
  assert.deepEqual([a.slot, c.slot, g.slot, f.slot], [0, 2, 1, 5]);
  assertHolds(cache, g, range(7, 700));
  assertHolds(cache, f, range(6, 600));
  const again = pc.start('x2', [...range(8, 500), 1])!;
  assert.equal(again.cachedTokens, 8, 'the retained prefix is intact');
  assertHolds(cache, again.seq, range(8, 500), 8);
});

test('a holder in the way trades places row by row: both keep every position, the longer one moving first or second', () => {
  const cache = arena(2, 64);
  const long = cache.allocate('long')!; // slot 0
  const short = cache.allocate('short')!; // slot 1
  compute(cache, long, range(40, 100));
  compute(cache, short, range(9, 900));
  // short alone decodes: it must sit in slot 0, and with no empty slot long trades places with it.
  assert.equal(cache.gather([short]), 1);
  assert.deepEqual([short.slot, long.slot], [0, 1]);
  assertHolds(cache, short, range(9, 900));
  assertHolds(cache, long, range(40, 100));
  // And back: now the longer one moves into the shorter one's slot.
  assert.equal(cache.gather([long]), 1);
  assert.deepEqual([long.slot, short.slot], [0, 1]);
  assertHolds(cache, long, range(40, 100));
  assertHolds(cache, short, range(9, 900));
});
