// The per-block checks of a KV transfer, alone, on one 16-token block of the smollm2-135m shape
// (0.7 MiB, fp32): CRC-32 by node:zlib and by @node-rs/crc32 (the one kv/crc32.ts uses), and the
// NaN/Inf scan in JavaScript (firstNonFiniteIn) and in WebAssembly SIMD over a shared memory
// (kv/finite-scan.ts, as the worker's receive pool runs it). Fastest of 300 runs each, data in cache.
//
//   node --import tsx scripts/bench-kv-checks.ts
import { crc32 as zlibCrc32 } from 'node:zlib';
import { crc32, crc32Implementation, finiteScanner, firstNonFiniteIn, scanMemory } from '../packages/engine/src/index.ts';

const BYTES = 16 * 30 * 2 * 3 * 64 * 4; // tokens x layers x (k, v) x kv heads x head_dim x float32

function fastestMs(f: () => unknown): number {
  for (let i = 0; i < 50; i++) f();
  let best = Infinity;
  for (let i = 0; i < 300; i++) {
    const t = performance.now();
    f();
    best = Math.min(best, performance.now() - t);
  }
  return best;
}

const memory = scanMemory(BYTES);
const floats = new Float32Array(memory.buffer as unknown as SharedArrayBuffer, 0, BYTES / 4);
for (let i = 0; i < floats.length; i++) floats[i] = Math.sin(i);
const bytes = new Uint8Array(floats.buffer, 0, BYTES);
if (crc32(bytes) !== zlibCrc32(bytes)) throw new Error('the two CRC-32s disagree');
const scan = finiteScanner(memory);
if (scan(0, BYTES) || firstNonFiniteIn(floats, 0, floats.length) !== -1) throw new Error('a finite block reads as non-finite');

const rows: Array<[string, number]> = [
  ['CRC-32, node:zlib', fastestMs(() => zlibCrc32(bytes))],
  [`CRC-32, ${crc32Implementation}`, fastestMs(() => crc32(bytes))],
  ['NaN/Inf scan, JavaScript (firstNonFiniteIn)', fastestMs(() => firstNonFiniteIn(floats, 0, floats.length))],
  ['NaN/Inf scan, WebAssembly SIMD (finiteScanner)', fastestMs(() => scan(0, BYTES))],
  ['memcpy (Uint8Array.set), for scale', fastestMs(() => bytes.set(bytes.subarray(0, BYTES / 2), BYTES / 2))],
];
console.log(`one block: ${(BYTES / 2 ** 20).toFixed(2)} MiB`);
console.log('| check | ms per block | GB/s |');
console.log('|---|---|---|');
for (const [name, ms] of rows) {
  const n = name.startsWith('memcpy') ? BYTES / 2 : BYTES;
  console.log(`| ${name} | ${ms.toFixed(4)} | ${(n / ms / 1e6).toFixed(1)} |`);
}
