// KV wire dtypes: each round-trips within the bound documented in kv/wire.ts; fp32 is bit-exact.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { blockBytes, checksumBlocks, decodeKvBlocks, encodeKvBlocks, KV_WIRE_DTYPES, verifyBlocks, wireBlockBytes, wireErrorBound, type KvShape } from '../src/index.ts';

const shape: KvShape = { layers: 2, kvHeads: 3, headDim: 8, blockTokens: 4 };

/** Deterministic canonical blocks: rows of very different magnitudes, zeros, tiny and large values. */
function sampleBlocks(count: number): Float32Array {
  const floats = (blockBytes(shape) / 4) * count;
  const out = new Float32Array(floats);
  let x = 12345;
  const rand = () => ((x = (x * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  for (let i = 0; i < floats; i++) {
    const row = Math.floor(i / shape.headDim);
    const magnitude = [1, 1e-3, 30, 1e-6, 0, 60000, 1e-30][row % 7];
    out[i] = rand() * magnitude;
  }
  out[5] = 0.5; // exact ties for the rounding paths
  out[6] = -(2 ** -20);
  return out;
}

for (const dtype of KV_WIRE_DTYPES) {
  test(`${dtype}: wire blocks round-trip within the documented bound, CRC over the wire bytes`, () => {
    const count = 3;
    const src = sampleBlocks(count);
    const bytes = new Uint8Array(src.buffer);
    const wire = encodeKvBlocks(bytes, shape, dtype);
    assert.equal(wire.byteLength, count * wireBlockBytes(shape, dtype));
    verifyBlocks({ firstBlock: 0, blockCount: count, tokenCount: count * shape.blockTokens, data: wire, checksums: checksumBlocks(wire, wireBlockBytes(shape, dtype)) }, wireBlockBytes(shape, dtype));
    const back = decodeKvBlocks(wire, shape, dtype);
    const got = new Float32Array(back.buffer, back.byteOffset, back.byteLength / 4);
    assert.equal(got.length, src.length);
    const D = shape.headDim;
    let worst = 0;
    for (let r = 0; r < src.length / D; r++) {
      let rowMax = 0;
      for (let i = 0; i < D; i++) rowMax = Math.max(rowMax, Math.abs(src[r * D + i]));
      for (let i = r * D; i < (r + 1) * D; i++) {
        const err = Math.abs(got[i] - src[i]);
        const bound = wireErrorBound(dtype, src[i], rowMax);
        assert.ok(err <= bound, `${dtype} value ${i}: ${src[i]} came back as ${got[i]} (error ${err} > bound ${bound})`);
        worst = Math.max(worst, err);
      }
    }
    if (dtype === 'fp32') assert.deepEqual(Buffer.from(back), Buffer.from(bytes), 'fp32 is bit-exact');
    else assert.ok(worst > 0, `${dtype} is lossy on these values`);
  });
}

test('fp32 on the wire is the canonical block itself; fp16 and bf16 halve it; int8 is a quarter plus a scale per row', () => {
  const bb = blockBytes(shape);
  assert.equal(wireBlockBytes(shape, 'fp32'), bb);
  assert.equal(wireBlockBytes(shape, 'fp16'), bb / 2);
  assert.equal(wireBlockBytes(shape, 'bf16'), bb / 2);
  const rows = shape.layers * 2 * shape.kvHeads * shape.blockTokens;
  assert.equal(wireBlockBytes(shape, 'int8'), bb / 4 + rows * 4);
});

test('fp16 saturates at 65504 and keeps NaN and Inf; bf16 keeps NaN', () => {
  const one: KvShape = { layers: 1, kvHeads: 1, headDim: 4, blockTokens: 2 };
  const src = new Float32Array(16);
  src.set([70000, -1e9, Infinity, NaN, -Infinity, 65504, 2 ** -24, 0]);
  const h = new Float32Array(decodeKvBlocks(encodeKvBlocks(new Uint8Array(src.buffer), one, 'fp16'), one, 'fp16').buffer);
  assert.deepEqual([...h.subarray(0, 8)], [65504, -65504, Infinity, NaN, -Infinity, 65504, 2 ** -24, 0]);
  const b = new Float32Array(decodeKvBlocks(encodeKvBlocks(new Uint8Array(src.buffer), one, 'bf16'), one, 'bf16').buffer);
  assert.ok(Number.isNaN(b[3]));
  assert.equal(b[2], Infinity);
});

test('an unaligned wire payload (as gRPC hands them out) decodes the same', () => {
  const src = sampleBlocks(2);
  for (const dtype of KV_WIRE_DTYPES) {
    const wire = encodeKvBlocks(new Uint8Array(src.buffer), shape, dtype);
    const shifted = new Uint8Array(wire.byteLength + 1).subarray(1);
    shifted.set(wire);
    assert.deepEqual(Buffer.from(decodeKvBlocks(shifted, shape, dtype)), Buffer.from(decodeKvBlocks(wire, shape, dtype)), dtype);
  }
});

test('a payload that is not whole wire blocks is refused', () => {
  assert.throws(() => decodeKvBlocks(new Uint8Array(wireBlockBytes(shape, 'int8') + 4), shape, 'int8'), /not a whole number/);
  assert.throws(() => encodeKvBlocks(new Uint8Array(blockBytes(shape) - 4), shape, 'fp16'), /not a whole number/);
});

test('fp16: every finite half survives float32 and back unchanged, and midpoints round to even', () => {
  const one: KvShape = { layers: 1, kvHeads: 1, headDim: 4, blockTokens: 1 }; // 8 floats per block
  const halves = new Uint16Array(65536).map((_, i) => i).filter((h) => ((h >>> 10) & 0x1f) !== 31); // drop Inf/NaN
  const asFloats = new Float32Array(decodeKvBlocks(new Uint8Array(halves.buffer), one, 'fp16').buffer);
  const back = new Uint16Array(encodeKvBlocks(new Uint8Array(asFloats.buffer), one, 'fp16').buffer);
  assert.deepEqual(back, halves);
  // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1); 1 + 3*2^-11 to 1 + 2^-9.
  const ties = new Float32Array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -25, 3 * 2 ** -25, 0, 0, 0, 0]);
  const got = new Float32Array(decodeKvBlocks(encodeKvBlocks(new Uint8Array(ties.buffer), one, 'fp16'), one, 'fp16').buffer);
  assert.deepEqual([...got.subarray(0, 4)], [1, 1 + 2 ** -9, 0, 2 ** -23]);
});
