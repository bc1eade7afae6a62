// The fuzz suite's hand-rolled protobuf encoder (test/support/fuzz/wire.ts) against the real
// decoder of proto/pdserve/v1/pdserve.proto: what the fuzzer sends is what a worker reads,
// including the out-of-range values a generated client would never write.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeService, prefillService } from '../packages/common/src/index.ts';
import { encodeFields, mangle, wire } from './support/fuzz/wire.ts';

const decodeReq = (method: string, bytes: Uint8Array) => (decodeService()[method] as any).requestDeserialize(Buffer.from(bytes));
const prefillReq = (method: string, bytes: Uint8Array) => (prefillService()[method] as any).requestDeserialize(Buffer.from(bytes));

test('a GenerateRequest with out-of-range sampling decodes as a worker sees it', () => {
  const bytes = encodeFields([
    wire.str(1, 'r1'),
    wire.int(2, 2n ** 32n + 5n), // uint32: the low 32 bits
    wire.msg(3, [wire.float(1, Number.NaN), wire.float(2, 3.5e38), wire.int(3, 2n ** 31n), wire.int(4, -1n), wire.int(5, -1n), wire.packed(7, [1n, 511n, 2n ** 32n - 1n]), wire.int(9, -(2n ** 31n))]),
    wire.int(4, 2n ** 31n),
  ]);
  const m = decodeReq('Generate', bytes);
  assert.equal(m.request_id, 'r1');
  assert.equal(m.prompt_len, 5);
  assert.ok(Number.isNaN(m.sampling.temperature));
  assert.equal(m.sampling.top_p, Number.POSITIVE_INFINITY); // beyond float32: rounds to Infinity
  assert.equal(m.sampling.top_k, -(2 ** 31)); // int32 2^31 arrives negative, as from the router
  assert.equal(m.sampling.seed, -1);
  assert.equal(m.sampling.max_tokens, 2 ** 32 - 1);
  assert.deepEqual(m.sampling.stop_token_ids, [1, 511, 2 ** 32 - 1]);
  assert.equal(m.sampling.logprobs, -(2 ** 31));
  assert.equal(m.kv_timeout_ms, 2 ** 31);
});

test('an absent sampling field decodes as unset, which a worker must handle', () => {
  const m = decodeReq('Generate', encodeFields([wire.str(1, 'r2'), wire.int(2, 3)]));
  assert.equal(m.sampling, null);
  const p = prefillReq('Prefill', encodeFields([wire.str(1, 'r2'), wire.packed(2, [1n, 2n]), wire.str(4, 'x:1')]));
  assert.deepEqual(p.prompt_ids, [1, 2]);
  assert.equal(p.sampling, null);
  assert.equal(p.decode_address, 'x:1');
});

test('a KvChunk with a first token out of the vocabulary and raw block fields', () => {
  const data = new Uint8Array([1, 2, 3]);
  const m = decodeReq('PushKv', encodeFields([
    wire.str(1, 'r3'), wire.int(2, 7), wire.int(3, 2n ** 32n - 1n), wire.int(4, 0), wire.bytes(5, data), wire.packed(6, [0n]),
    wire.int(7, 1), wire.msg(8, [wire.int(1, 2n ** 32n - 1n), wire.float(2, -1)]), wire.int(9, 16), wire.int(10, 20480),
  ]));
  assert.equal(m.first_block, 7);
  assert.equal(m.block_count, 2 ** 32 - 1);
  assert.deepEqual([...m.data], [1, 2, 3]);
  assert.equal(m.done, true);
  assert.equal(m.first_token.id, 2 ** 32 - 1);
  assert.equal(m.block_bytes, 20480);
});

test('mangled messages: an unknown field is skipped, a message cut inside a tag fails to parse', () => {
  const good = encodeFields([wire.str(1, 'abc')]);
  assert.equal(decodeReq('Cancel', mangle(good, { kind: 'unknown-field', field: 1000, payload: new Uint8Array([9]) })).request_id, 'abc');
  assert.throws(() => decodeReq('Cancel', mangle(good, { kind: 'truncate', keep: 200 })));
});
