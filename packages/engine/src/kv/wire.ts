// KV blocks on the wire: the fp32 `pdserve-kv/1` blocks of kv/layout.ts, optionally compressed for
// the trip from a prefill worker to a decode worker (the CacheGen / ZipCache line of work) and
// expanded back into the decode worker's fp32 arena. Each wire block stands alone (it is what one
// CRC-32 covers), so a corrupted block is still refused by number.
//
// A block's floats are rows of head_dim values, one row per (layer, keys|values, kv head, token)
// in that order (layout.ts). Per dtype, one wire block is:
//   fp32  the canonical block itself: bit-exact, no work on either side.
//   fp16  IEEE half per float, round to nearest even; magnitudes above 65504 saturate to +-65504.
//         Error: |x - y| <= max(|x| * 2^-11, 2^-25).
//   bf16  the upper 16 bits of each float, round to nearest even. Error: |x - y| <= |x| * 2^-8.
//   int8  [rows x float32 scale][rows x head_dim int8]: symmetric per row (per token per head, finer
//         than per block per head), scale = max|row| / 127, q = round(x / scale).
//         Error: |x - y| <= max|row| / 254 (plus float32 rounding, max|row| * 2^-23).
// Bounds hold for finite inputs; NaN and Inf survive fp32, fp16 and bf16 as themselves.
import { blockBytes, type KvShape } from './layout.ts';
import { halfToFloat32Table } from '../numeric/half.ts';

export const KV_WIRE_DTYPES = ['fp32', 'fp16', 'bf16', 'int8'] as const;
export type KvWireDtype = (typeof KV_WIRE_DTYPES)[number];

export function isKvWireDtype(s: string): s is KvWireDtype {
  return (KV_WIRE_DTYPES as readonly string[]).includes(s);
}

/** Rows of head_dim floats in one block. */
function blockRows(s: KvShape): number {
  return s.layers * 2 * s.kvHeads * s.blockTokens;
}

/** Bytes of one block on the wire in `dtype`. */
export function wireBlockBytes(s: KvShape, dtype: KvWireDtype): number {
  const floats = blockBytes(s) / 4;
  switch (dtype) {
    case 'fp32': return floats * 4;
    case 'fp16': case 'bf16': return floats * 2;
    case 'int8': return blockRows(s) * 4 + floats;
  }
}

/** The documented per-value error bound of `dtype` for value x in a row whose max |value| is rowMax. */
export function wireErrorBound(dtype: KvWireDtype, x: number, rowMax: number): number {
  switch (dtype) {
    case 'fp32': return 0;
    case 'fp16': return Math.max(Math.abs(x) * 2 ** -11, 2 ** -25);
    case 'bf16': return Math.abs(x) * 2 ** -8;
    case 'int8': return rowMax / 254 + rowMax * 2 ** -23;
  }
}

function f32View(bytes: Uint8Array): Float32Array {
  // Float32Array views need 4-byte alignment; gRPC hands out Buffers at any offset (copy those).
  const b = bytes.byteOffset % 4 === 0 ? bytes : new Uint8Array(bytes);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength >>> 2);
}

function u32View(bytes: Uint8Array): Uint32Array {
  const b = bytes.byteOffset % 4 === 0 ? bytes : new Uint8Array(bytes);
  return new Uint32Array(b.buffer, b.byteOffset, b.byteLength >>> 2);
}

function u16View(bytes: Uint8Array): Uint16Array {
  const b = bytes.byteOffset % 2 === 0 ? bytes : new Uint8Array(bytes);
  return new Uint16Array(b.buffer, b.byteOffset, b.byteLength >>> 1);
}

/**
 * Encodes whole canonical fp32 blocks (`data`, a multiple of blockBytes(s)) for the wire. fp32
 * returns `data` itself.
 */
export function encodeKvBlocks(data: Uint8Array, s: KvShape, dtype: KvWireDtype): Uint8Array {
  if (dtype === 'fp32') return data;
  const bb = blockBytes(s);
  if (data.byteLength % bb !== 0) throw new Error(`KV payload of ${data.byteLength} bytes is not a whole number of ${bb}-byte blocks`);
  const count = data.byteLength / bb;
  const out = new Uint8Array(count * wireBlockBytes(s, dtype));
  if (dtype === 'fp16') encodeF16(u32View(data), new Uint16Array(out.buffer));
  else if (dtype === 'bf16') encodeBf16(u32View(data), new Uint16Array(out.buffer));
  else encodeInt8(f32View(data), out, count, s);
  return out;
}

/**
 * Decodes wire blocks into canonical fp32 blocks. fp32 returns the payload's bytes as they are
 * (no copy); the others fill a new buffer.
 */
export function decodeKvBlocks(wire: Uint8Array, s: KvShape, dtype: KvWireDtype): Uint8Array {
  if (dtype === 'fp32') return wire;
  const wb = wireBlockBytes(s, dtype);
  if (wire.byteLength % wb !== 0) throw new Error(`KV payload of ${wire.byteLength} bytes is not a whole number of ${wb}-byte ${dtype} blocks`);
  const count = wire.byteLength / wb;
  const out = new Float32Array(count * (blockBytes(s) / 4));
  if (dtype === 'fp16') decodeF16(u16View(wire), out);
  else if (dtype === 'bf16') decodeBf16(u16View(wire), new Uint32Array(out.buffer));
  else decodeInt8(wire, out, count, s);
  return new Uint8Array(out.buffer);
}

/**
 * Index of the first float32 of `floats` (a block payload in the cache's layout, at any byte
 * alignment) whose exponent is all ones (NaN or Inf), or -1. A decode worker checks every block it
 * is sent: attention reads the whole stride of a slot, masked positions included, so a NaN left in a
 * freed slot (even in the padding past a block's last token) would poison every later sequence that
 * slot holds (0 * NaN is NaN).
 */
export function firstNonFinite(floats: Uint8Array): number {
  const n = floats.byteLength >>> 2;
  if ((floats.byteOffset & 3) === 0) return firstNonFiniteIn(new Float32Array(floats.buffer, floats.byteOffset, n), 0, n);
  const v = new DataView(floats.buffer, floats.byteOffset, n * 4);
  for (let i = 0; i < n; i++) if ((v.getUint32(i * 4, true) & 0x7f800000) === 0x7f800000) return i;
  return -1;
}

/**
 * Index of the first NaN or infinite float of f[from, to), or -1. The common case (none) is one
 * branch-free pass: x * 0 is 0 for every finite x and NaN for NaN and +-Inf, so four running sums
 * of x * 0 stay 0 exactly when the range is finite (1.4x the speed of testing each value's
 * exponent bits); only a range that holds one is scanned again for the index.
 */
export function firstNonFiniteIn(f: Float32Array, from: number, to: number): number {
  let a = 0, b = 0, c = 0, d = 0;
  let i = from;
  for (; i + 4 <= to; i += 4) {
    a += f[i] * 0;
    b += f[i + 1] * 0;
    c += f[i + 2] * 0;
    d += f[i + 3] * 0;
  }
  for (; i < to; i++) a += f[i] * 0;
  if (a + b + c + d === 0) return -1;
  for (let j = from; j < to; j++) if (!Number.isFinite(f[j])) return j;
  return -1;
}

// ---- fp16 ----

// Round to nearest even without a branch per bit (F. Giesen's float_to_half_fast3_rtne): normal
// halves by integer arithmetic on the float's bits, subnormal ones by letting a float32 addition of
// 0.5 do the rounding (exact in a double, then one rounding to float32: that is the RNE result).
const scratchF = new Float32Array(1);
const scratchU = new Uint32Array(scratchF.buffer);

function encodeF16(src: Uint32Array, dst: Uint16Array): void {
  for (let i = 0; i < src.length; i++) {
    const u = src[i];
    const x = u & 0x7fffffff;
    let h: number;
    if (x >= 0x47800000) h = x > 0x7f800000 ? 0x7e00 : x === 0x7f800000 ? 0x7c00 : 0x7bff; // NaN, Inf, saturate
    else if (x < 0x38800000) { // below 2^-14: a half subnormal (or zero)
      scratchU[0] = x;
      scratchF[0] += 0.5;
      h = scratchU[0] - 0x3f000000;
    } else {
      h = (x + 0xc8000fff + ((x >>> 13) & 1)) >>> 13; // rebias the exponent, round the mantissa
      if (h > 0x7bff) h = 0x7bff; // 65504 < |x| < 65536 would round up to Inf: saturate
    }
    dst[i] = ((u >>> 16) & 0x8000) | h;
  }
}

function decodeF16(src: Uint16Array, dst: Float32Array): void {
  const t = halfToFloat32Table();
  for (let i = 0; i < src.length; i++) dst[i] = t[src[i]];
}

// ---- bf16 ----

function encodeBf16(src: Uint32Array, dst: Uint16Array): void {
  for (let i = 0; i < src.length; i++) {
    const u = src[i];
    dst[i] = (u & 0x7fffffff) > 0x7f800000 ? (u >>> 16) | 0x40 : (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
}

function decodeBf16(src: Uint16Array, dst: Uint32Array): void {
  for (let i = 0; i < src.length; i++) dst[i] = src[i] << 16;
}

// ---- int8 ----

function encodeInt8(src: Float32Array, out: Uint8Array, count: number, s: KvShape): void {
  const rows = blockRows(s);
  const D = s.headDim;
  const wb = wireBlockBytes(s, 'int8');
  for (let b = 0; b < count; b++) {
    const scales = new Float32Array(out.buffer, b * wb, rows);
    const q = new Int8Array(out.buffer, b * wb + rows * 4, rows * D);
    const base = b * rows * D;
    for (let r = 0; r < rows; r++) {
      const o = base + r * D;
      let max = 0;
      for (let i = 0; i < D; i++) { const a = Math.abs(src[o + i]); if (a > max) max = a; }
      scales[r] = max / 127;
      if (max === 0) continue; // q stays 0
      const inv = 127 / max;
      for (let i = 0; i < D; i++) q[r * D + i] = Math.max(-127, Math.min(127, Math.round(src[o + i] * inv)));
    }
  }
}

function decodeInt8(wire: Uint8Array, dst: Float32Array, count: number, s: KvShape): void {
  const rows = blockRows(s);
  const D = s.headDim;
  const wb = wireBlockBytes(s, 'int8');
  const aligned = wire.byteOffset % 4 === 0 ? wire : new Uint8Array(wire);
  for (let b = 0; b < count; b++) {
    const scales = new Float32Array(aligned.buffer, aligned.byteOffset + b * wb, rows);
    const q = new Int8Array(aligned.buffer, aligned.byteOffset + b * wb + rows * 4, rows * D);
    const base = b * rows * D;
    for (let r = 0; r < rows; r++) {
      const sc = scales[r];
      const o = base + r * D;
      for (let i = 0; i < D; i++) dst[o + i] = q[r * D + i] * sc;
    }
  }
}
