// The KV data channel's frame codec: a chunk frame round-trips to the same KvChunk whatever way the
// bytes are split on the wire; sizes over the limits and malformed headers are refused from the header.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chunkFromFrame, chunkMeta, encodeHeader, FrameReader, HEADER_BYTES } from '../src/kv-data/frames.ts';

const chunk = {
  request_id: 'r1', first_block: 3, block_count: 2, token_count: 40, data: Uint8Array.from({ length: 64 }, (_, i) => i * 3), checksums: [1, 0xffffffff],
  done: true, first_token: { id: 7, logprob: -0.5, top_logprobs: [] }, block_tokens: 16, block_bytes: 32, layout: 'pdserve-kv/1', wire_dtype: 'fp32', cached_tokens: 16,
} as any;
const frame = () => Buffer.concat([encodeHeader('chunk', chunkMeta(chunk), chunk.data.byteLength), Buffer.from(chunk.data), encodeHeader('ack', { r: 'r1' }, 0)]);

test('frames round-trip whole, byte by byte, and in odd splits; the payload gets its own aligned buffer', () => {
  const bytes = frame();
  for (const step of [bytes.byteLength, 1, 5, 17, 63]) {
    const r = new FrameReader(1024);
    const got = [];
    for (let i = 0; i < bytes.byteLength; i += step) got.push(...r.push(bytes.subarray(i, i + step)));
    assert.equal(got.length, 2, `split ${step}`);
    const c = chunkFromFrame(got[0].meta, got[0].payload);
    assert.notEqual(typeof c, 'string');
    assert.deepEqual({ ...(c as any), data: [...(c as any).data] }, { ...chunk, data: [...chunk.data] });
    assert.equal(got[0].payload.byteOffset, 0);
    assert.equal(got[0].payload.buffer.byteLength, chunk.data.byteLength);
    assert.equal(got[1].type, 'ack');
  }
});

test('a payload over the limit, a bad magic or version, an unknown type and non-JSON meta are refused', () => {
  assert.throws(() => new FrameReader(63).push(frame()), /exceeds 63/);
  const bad = (edit: (b: Buffer) => void) => { const b = frame(); edit(b); return () => new FrameReader(1024).push(b); };
  assert.throws(bad((b) => b.writeUInt32BE(0x47455420, 0)), /bad magic/);
  assert.throws(bad((b) => b.writeUInt8(9, 4)), /version 9/);
  assert.throws(bad((b) => b.writeUInt8(77, 5)), /type 77/);
  assert.throws(bad((b) => b.writeUInt32BE(1 << 30, 8)), /meta of/);
  assert.throws(bad((b) => b.write('!', HEADER_BYTES)), /not JSON/);
});

test('chunk meta of the wrong shape is named, not trusted', () => {
  const m = chunkMeta(chunk) as any;
  assert.match(chunkFromFrame({ ...m, fb: -1 }, chunk.data) as string, /fb/);
  assert.match(chunkFromFrame({ ...m, cs: ['x'] }, chunk.data) as string, /checksums/);
  assert.match(chunkFromFrame({ ...m, r: '' }, chunk.data) as string, /request id/);
  assert.match(chunkFromFrame(null, chunk.data) as string, /not an object/);
});
