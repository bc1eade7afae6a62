// The decode side's checks made while a KV payload arrives (kv-data/verify.ts), the faster NaN/Inf
// scan (firstNonFiniteIn) and the buffer pool shared by a worker's threads (kv-buffers.ts): the
// per-block CRC-32 computed piece by piece equals pdserve-kv/1's checksum of the whole block
// (checksumBlocks) however the bytes are split, a flipped bit changes exactly its block's CRC, a
// NaN or Inf is found at its index wherever it falls, and a pool slot is never handed out twice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checksumBlocks, firstNonFinite, firstNonFiniteIn } from '@pdserve/engine';
import { chunkMeta, encodeHeader, FrameReader } from '../src/kv-data/frames.ts';
import { VerifyingPayload } from '../src/kv-data/verify.ts';
import { SharedSlots } from '../src/kv-buffers.ts';

function randomFloats(n: number, seed: number): Float32Array {
  const f = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; f[i] = (s / 2 ** 32 - 0.5) * 8; }
  return f;
}

const BLOCK = 4096 + 64; // bytes per block: not a power of two, so block edges fall inside pieces
const BLOCKS = 5;

function feed(v: VerifyingPayload, src: Uint8Array, step: number): void {
  for (let at = 0; at < src.byteLength; at += step) {
    const end = Math.min(src.byteLength, at + step);
    v.bytes.set(src.subarray(at, end), at);
    v.progress(end);
  }
}

test('CRC-32 per block computed as the bytes arrive equals checksumBlocks over the whole payload, for every split', () => {
  const src = new Uint8Array(randomFloats((BLOCK * BLOCKS) / 4, 7).buffer);
  const want = checksumBlocks(src, BLOCK);
  assert.equal(new Set(want).size, BLOCKS);
  for (const step of [1, 3, 4, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 65536, src.byteLength]) {
    const v = new VerifyingPayload(new Uint8Array(src.byteLength), BLOCK, true);
    feed(v, src, step);
    assert.ok(v.complete, `step ${step}`);
    assert.deepEqual(v.crcs, want, `step ${step}`);
    assert.equal(v.firstNonFinite, -1, `step ${step}`);
  }
  // A known value: the standard CRC-32 (IEEE) check value of "123456789".
  const v = new VerifyingPayload(new Uint8Array(9), 9, false);
  feed(v, new TextEncoder().encode('123456789'), 2);
  assert.deepEqual(v.crcs, [0xcbf43926]);
});

test('one flipped bit changes exactly its own block\'s CRC', () => {
  const src = new Uint8Array(randomFloats((BLOCK * BLOCKS) / 4, 11).buffer);
  const want = checksumBlocks(src, BLOCK);
  for (const at of [0, BLOCK - 1, BLOCK, 2 * BLOCK + 1234, src.byteLength - 1]) {
    const bad = src.slice();
    bad[at] ^= 0x10;
    const v = new VerifyingPayload(new Uint8Array(src.byteLength), BLOCK, false);
    feed(v, bad, 777);
    const differs = v.crcs.map((c, i) => c !== want[i]);
    assert.deepEqual(differs, want.map((_, i) => i === Math.floor(at / BLOCK)), `bit flipped at byte ${at}`);
  }
});

test('NaN and +-Inf are found at their index as the bytes arrive, and by firstNonFiniteIn and firstNonFinite', () => {
  const n = (BLOCK * BLOCKS) / 4;
  for (const value of [NaN, Infinity, -Infinity]) {
    for (const at of [0, 1, 2, 3, 4, 1021, n - 5, n - 1]) {
      const f = randomFloats(n, 3);
      f[at] = value;
      if (at + 7 < n) f[at + 7] = NaN; // a later one does not hide the first
      assert.equal(firstNonFiniteIn(f, 0, n), at, `${value} at ${at}`);
      assert.equal(firstNonFinite(new Uint8Array(f.buffer)), at);
      assert.equal(firstNonFiniteIn(f, at + 1, at + 1), -1, 'an empty range');
      if (at > 0) assert.equal(firstNonFiniteIn(f, 0, at), -1, 'the range before it is finite');
      for (const step of [5, 4096, n * 4]) {
        const v = new VerifyingPayload(new Uint8Array(n * 4), BLOCK, true);
        feed(v, new Uint8Array(f.buffer), step);
        assert.equal(v.firstNonFinite, at, `${value} at ${at}, step ${step}`);
      }
    }
  }
  // Finite extremes are finite: the largest float, subnormals, -0.
  const edge = Float32Array.of(3.4028234663852886e38, -3.4028234663852886e38, 1e-45, -0, 0, 1.17549435e-38);
  assert.equal(firstNonFiniteIn(edge, 0, edge.length), -1);
});

test('FrameReader fills the payload buffer its owner hands out and reports progress; dispose gives back a partial one', () => {
  const data = new Uint8Array(randomFloats((BLOCK * 2) / 4, 5).buffer);
  const chunk = {
    request_id: 'r', first_block: 0, block_count: 2, token_count: 20, data, checksums: checksumBlocks(data, BLOCK), done: false,
    first_token: null, block_tokens: 16, block_bytes: BLOCK, layout: 'pdserve-kv/1', wire_dtype: 'fp32', cached_tokens: 0,
  } as any;
  const bytes = Buffer.concat([encodeHeader('chunk', chunkMeta(chunk), data.byteLength), Buffer.from(data)]);
  let released = 0;
  const made: VerifyingPayload[] = [];
  const reader = new FrameReader(1 << 20, { payload: (_t, _m, len) => { const v = new VerifyingPayload(new Uint8Array(len), BLOCK, true, () => { released++; }); made.push(v); return v; } });
  const frames = [];
  for (let i = 0; i < bytes.byteLength; i += 1500) frames.push(...reader.push(bytes.subarray(i, i + 1500)));
  assert.equal(frames.length, 1);
  const v = frames[0].incoming as VerifyingPayload;
  assert.equal(v, made[0]);
  assert.equal(frames[0].payload, v.bytes);
  assert.deepEqual(v.crcs, chunk.checksums);
  assert.equal(released, 0);
  // Half a frame, then the connection goes: its buffer is given back once.
  reader.push(bytes.subarray(0, bytes.byteLength >> 1));
  reader.dispose();
  reader.dispose();
  assert.equal(released, 1);
});

test('SharedSlots: a slot is handed out once until given back; a double give-back throws; views do not overlap', () => {
  const pool = SharedSlots.create(10_000, 3);
  assert.equal(pool.slotBytes % 4096, 0);
  const a = pool.take(10_000)!, b = pool.take(5)!, c = pool.take(1)!;
  assert.deepEqual(new Set([a.slot, b.slot, c.slot]).size, 3);
  assert.equal(pool.take(1), undefined, 'all three taken');
  assert.equal(pool.free(), 0);
  a.view.fill(1); b.view.fill(2); c.view.fill(3);
  assert.ok(a.view.every((x) => x === 1), 'a is not overwritten by b or c');
  pool.give(b.slot);
  assert.throws(() => pool.give(b.slot), /given back twice/);
  assert.equal(pool.free(), 1);
  const again = pool.take(100)!;
  assert.equal(again.slot, b.slot);
  assert.equal(pool.take(pool.slotBytes + 1), undefined, 'larger than a slot');
  // The other thread's view of the same handle sees the same states.
  const other = new SharedSlots(pool.handle);
  assert.equal(other.free(), 0);
  other.give(again.slot);
  assert.equal(pool.free(), 1);
});

test('readBlocks into a reused buffer gives the same bytes as into a new one: the padding past the sequence is zeroed', async () => {
  const { SlotKvCache } = await import('../../../packages/engine/src/kv/slot-cache.ts');
  const cache = new SlotKvCache({ layers: 2, kvHeads: 2, headDim: 8, blockTokens: 16, maxSlots: 2, maxTokensPerSlot: 64 });
  const seq = cache.allocate('a')!;
  cache.reserve(48);
  for (const t of [...cache.keys, ...cache.values]) for (let i = 0; i < t.length; i++) t[i] = 1 + (i % 97);
  seq.length = 20; // block 1 holds 4 tokens and 12 of padding (whose arena rows hold nonzero values)
  const fresh = cache.readBlocks(seq, 0, 2);
  const stale = new Uint8Array(new SharedArrayBuffer(fresh.byteLength + 4096)).fill(0xff);
  const got = cache.readBlocks(seq, 0, 2, stale);
  assert.equal(got.buffer, stale.buffer);
  assert.equal(got.byteLength, fresh.byteLength);
  assert.deepEqual([...got], [...fresh]);
  assert.ok(new Float32Array(fresh.buffer).some((x) => x === 0), 'the padding is there, as zeros');
  assert.throws(() => cache.readBlocks(seq, 0, 2, stale.subarray(1)), /aligned/);
});

test('a payload in a receive-pool slot is scanned in place by the pool (WebAssembly): NaN/Inf found at its index as the bytes arrive', () => {
  const pool = SharedSlots.create(BLOCK * BLOCKS, 2);
  const n = (BLOCK * BLOCKS) / 4;
  let scans = 0;
  for (const at of [-1, 0, 5, 1023, n - 1]) {
    const f = randomFloats(n, 9);
    if (at >= 0) f[at] = at % 2 ? NaN : -Infinity;
    const taken = pool.take(n * 4)!;
    const v = new VerifyingPayload(taken.view, BLOCK, true, () => pool.give(taken.slot), taken.slot, (part) => { scans++; return pool.hasNonFinite(part); });
    feed(v, new Uint8Array(f.buffer), 3000);
    assert.ok(v.complete);
    assert.equal(v.firstNonFinite, at, `at ${at}`);
    assert.deepEqual(v.crcs, checksumBlocks(new Uint8Array(f.buffer), BLOCK));
    v.release();
  }
  assert.ok(scans > 0, 'the pool scanned');
  assert.equal(pool.free(), 2);
  // The other thread's pool (the same handle) scans the same memory.
  const other = new SharedSlots(pool.handle);
  const t = other.take(64)!;
  new Float32Array(t.view.buffer, t.view.byteOffset, 16).fill(1)[9] = Infinity;
  assert.equal(pool.hasNonFinite(new Uint8Array(t.view.buffer, t.view.byteOffset, 64)), true);
  assert.throws(() => pool.hasNonFinite(new Uint8Array(64)), /not of this pool/);
});
