// The safetensors reader and writer: round trips through every float dtype, the 16-bit
// conversions on edge values (rounding ties, subnormals, infinities, NaN), and header validation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bf16ToFloat32, f16ToFloat32, float32ToBf16, float32ToF16, SafetensorsFile, writeSafetensors } from '../src/model/safetensors.ts';
import { ModelLoadError } from '../src/model/config.ts';

test('float32 -> f16 -> float32: exact for representable values, nearest-even otherwise', () => {
  const cases: Array<[number, number]> = [
    [0, 0], [1, 1], [-2.5, -2.5], [65504, 65504], [65520, Infinity], [1e6, Infinity], [-Infinity, -Infinity],
    [2 ** -24, 2 ** -24], [2 ** -25, 0], [3 * 2 ** -26, 2 ** -24], [2 ** -14, 2 ** -14], [5.960464477539063e-8 * 3, 3 * 2 ** -24],
    [1 + 2 ** -11, 1], [1 + 3 * 2 ** -11, 1 + 2 ** -9], [2047.5, 2048], [0.1, 0.0999755859375],
  ];
  const got = f16ToFloat32(float32ToF16(new Float32Array(cases.map((c) => c[0]))));
  cases.forEach(([x, want], i) => assert.equal(got[i], want, `f16(${x})`));
  assert.ok(Number.isNaN(f16ToFloat32(float32ToF16(new Float32Array([NaN])))[0]));
  // Every half value survives a round trip.
  const all = new Uint16Array(65536).map((_, i) => i);
  const back = float32ToF16(f16ToFloat32(all));
  for (let h = 0; h < 65536; h++) {
    const exp = (h >> 10) & 31;
    if (exp === 31 && h & 0x3ff) continue; // NaN payloads are not kept
    assert.equal(back[h], h, `half 0x${h.toString(16)}`);
  }
});

test('float32 -> bf16 -> float32: top 16 bits, rounded to nearest even', () => {
  // 3.4e38 is 0x7F7FC99E: rounds up into infinity (as torch does); 1e-40 is the subnormal 0x000116C2.
  const x = new Float32Array([1, -3.140625, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 3.4e38, 1e-40]);
  assert.deepEqual(Array.from(bf16ToFloat32(float32ToBf16(x))), [1, -3.140625, 1, 1 + 2 ** -6, Infinity, 2 ** -133]);
  assert.ok(Number.isNaN(bf16ToFloat32(float32ToBf16(new Float32Array([NaN])))[0]));
});

test('write then read: shapes, dtypes, metadata, values', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-st-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'a.safetensors');
  const data = new Float32Array([1, 2, 3, 4, 5, 6]);
  writeSafetensors(path, [
    { name: 'a', shape: [2, 3], data, dtype: 'F32' },
    { name: 'b', shape: [6], data, dtype: 'BF16' },
    { name: 'c.é', shape: [3, 2], data, dtype: 'F16' },
    { name: 'empty', shape: [0, 4], data: new Float32Array(0), dtype: 'F32' },
  ], { format: 'pt', note: 'x' });
  const buf = readFileSync(path);
  assert.equal(Number(buf.readBigUInt64LE(0)) % 8, 0, 'header padded to 8 bytes');
  const f = SafetensorsFile.open(path);
  t.after(() => f.close());
  assert.deepEqual(f.metadata, { format: 'pt', note: 'x' });
  assert.deepEqual(f.tensors.get('c.é')!.shape, [3, 2]);
  for (const name of ['a', 'b', 'c.é']) assert.deepEqual(Array.from(f.readFloat32(name)), [1, 2, 3, 4, 5, 6]);
  assert.equal(f.readFloat32('empty').length, 0);
  assert.throws(() => f.readFloat32('zzz'), /has no tensor zzz/);
});

test('invalid files are refused with the reason', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-st-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'bad.safetensors');
  const withHeader = (header: unknown, dataBytes: number, headerLen?: number) => {
    const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(headerLen ?? json.length));
    writeFileSync(path, Buffer.concat([len, json, Buffer.alloc(dataBytes)]));
  };
  const refuses = (pattern: RegExp) => assert.throws(() => SafetensorsFile.open(path), (e: unknown) => e instanceof ModelLoadError && pattern.test((e as Error).message) && (e as Error).message.includes(path));
  writeFileSync(path, Buffer.alloc(3));
  refuses(/shorter than the 8-byte header length/);
  withHeader({}, 0, 1000);
  refuses(/header length 1000 runs past the end/);
  withHeader('{"a": ', 0);
  refuses(/header is not JSON/);
  withHeader('[1]', 0);
  refuses(/header is not a JSON object/);
  withHeader({ a: { dtype: 'F33', shape: [1], data_offsets: [0, 4] } }, 4);
  refuses(/tensor a has unknown dtype "F33"/);
  withHeader({ a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, 4);
  refuses(/tensor a has an invalid shape/);
  withHeader({ a: { dtype: 'F32', shape: [1], data_offsets: [4, 0] } }, 4);
  refuses(/tensor a has invalid data_offsets \[4,0\]/);
  withHeader({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, 4);
  refuses(/span 4 bytes, but F32 \[2\] needs 8/);
  withHeader({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, 4);
  refuses(/tensor a ends at byte 8 of the data, but the file holds only 4 data bytes \(truncated\?\)/);
  withHeader({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [2, 6] } }, 8);
  refuses(/tensor b starts at data byte 2, expected 4/);
  withHeader({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, 12);
  refuses(/tensors cover 4 data bytes but the file holds 12/);
  assert.throws(() => SafetensorsFile.open(join(dir, 'absent.safetensors')), /cannot open .*absent\.safetensors/);
});
