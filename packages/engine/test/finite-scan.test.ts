// The WebAssembly NaN/Inf scan (kv/finite-scan.ts) and the CRC-32 the KV blocks carry (kv/crc32.ts):
// the scan answers as firstNonFiniteIn does for every position a non-finite value can take (in the
// 64-byte vector loop, in the 4-byte tail, at the range's edges), never reads outside the range it
// is given, and runs the bytes of finite-scan.wat; crc32 is zlib's CRC-32 whichever library computes it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32 as zlibCrc32 } from 'node:zlib';
import fc from 'fast-check';
import { crc32, crc32Implementation, finiteScanner, firstNonFiniteIn, scanMemory } from '../src/index.ts';
import { assemble, WASM_MODULES } from '../../../scripts/build-wasm.ts';

test('the embedded module is finite-scan.wat assembled (node --import tsx scripts/build-wasm.ts)', async () => {
  const { FINITE_SCAN_WASM } = await import('../src/kv/finite-scan.ts');
  const m = WASM_MODULES.find((x) => x.name === 'FINITE_SCAN_WASM')!;
  assert.equal(FINITE_SCAN_WASM, await assemble(m.wat));
});

test('finiteScanner finds NaN and +-Inf at every position of the vector loop and the tail, and only inside its range', () => {
  const memory = scanMemory(4096);
  const scan = finiteScanner(memory);
  const f = new Float32Array(memory.buffer as unknown as SharedArrayBuffer, 0, 1024);
  const fill = () => { for (let i = 0; i < f.length; i++) f[i] = Math.sin(i) * 1e3; };
  // Lengths of 0..35 floats from offsets 0..19 floats: vector loop, tail words, and both.
  for (const value of [NaN, Infinity, -Infinity]) {
    for (const from of [0, 1, 3, 16, 19]) {
      for (let n = 0; n <= 35; n++) {
        fill();
        assert.equal(scan(from * 4, n * 4), false, `finite [${from}, +${n})`);
        for (let at = Math.max(0, from - 1); at <= from + n; at++) {
          fill();
          f[at] = value;
          const inside = at >= from && at < from + n;
          assert.equal(scan(from * 4, n * 4), inside, `${value} at ${at}, range [${from}, +${n})`);
          assert.equal(firstNonFiniteIn(f, from, from + n) >= 0, inside);
        }
      }
    }
  }
  // Finite extremes are finite: the largest float, subnormals, -0, the smallest normal.
  f.set([3.4028234663852886e38, -3.4028234663852886e38, 1e-45, -0, 0, 1.17549435e-38]);
  assert.equal(scan(0, 24), false);
  // Every NaN payload and sign is found (any exponent of all ones is non-finite).
  const u = new Uint32Array(f.buffer, 0, 1024);
  for (const bits of [0x7f800001, 0xffc00000, 0x7fffffff, 0xff800000]) {
    fill();
    u[700] = bits;
    assert.equal(scan(0, 4096), true, bits.toString(16));
  }
  assert.throws(() => scan(0, 3), RangeError);
  assert.throws(() => scan(65536 - 4, 8), RangeError, 'past the end of the memory');
});

test('finiteScanner agrees with firstNonFiniteIn on random data (property)', () => {
  const memory = scanMemory(1 << 16);
  const scan = finiteScanner(memory);
  const f = new Float32Array(memory.buffer as unknown as SharedArrayBuffer);
  fc.assert(fc.property(
    fc.array(fc.float({ noDefaultInfinity: false, noNaN: false }), { maxLength: 300 }), fc.nat(100),
    (values, from) => {
      f.set(values, from);
      const want = firstNonFiniteIn(f, from, from + values.length) >= 0;
      return scan(from * 4, values.length * 4) === want;
    },
  ), { numRuns: 500, seed: 7 });
});

test('crc32 is zlib\'s CRC-32, in one piece and continued across pieces', () => {
  assert.equal(crc32(new TextEncoder().encode('123456789')), 0xcbf43926);
  assert.equal(crc32(new Uint8Array(0)), 0);
  fc.assert(fc.property(fc.uint8Array({ maxLength: 5000 }), fc.nat(5000), (data, cut) => {
    const at = Math.min(cut, data.length);
    const whole = zlibCrc32(data);
    return crc32(data) === whole && crc32(data.subarray(at), crc32(data.subarray(0, at))) === whole;
  }), { numRuns: 300, seed: 3 });
  // A view of shared memory (the KV buffer pools) at an odd offset.
  const shared = new Uint8Array(new SharedArrayBuffer(1 << 20));
  for (let i = 0; i < shared.length; i++) shared[i] = (i * 2654435761) >>> 24;
  assert.equal(crc32(shared.subarray(3)), zlibCrc32(shared.subarray(3)));
  // The prebuilt native library is installed by pnpm install on this platform (CI, linux-x64).
  assert.equal(crc32Implementation, '@node-rs/crc32');
});
