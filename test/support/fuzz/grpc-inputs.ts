// Generated gRPC scenarios against a worker's own services, as a broken or hostile peer would
// drive them: reservations (Decode.Generate) with out-of-range sampling, KV pushes (Decode.PushKv)
// with wrong layouts, gaps, repeats, chunks after `done` and bad first tokens, prompts
// (Prefill.Prefill) with out-of-range ids and odd decode addresses, cancels racing all of it, and
// plain garbage bytes. The arbitraries describe the scenario; grpc-probes.ts materializes it for
// the model's KV shape and sends it.
import fc from 'fast-check';
import type { Mangle } from './wire.ts';

const U32 = 2n ** 32n;

/** Values for a uint32 field: the edges of int32/uint32/int64, and negatives (sent as 2^64 - n). */
export const hostileU32 = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(0n, 1n, 2n, 15n, 16n, 17n, 255n, 511n, 512n, 513n, 4096n, 65536n, 2n ** 31n - 1n, 2n ** 31n, U32 - 1n, U32, U32 + 1n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n, -1n, -(2n ** 31n)) },
  { weight: 1, arbitrary: fc.bigInt({ min: 0n, max: U32 - 1n }) },
);
export const hostileI32 = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(0n, 1n, -1n, -2n, 5n, 20n, 21n, 40n, 511n, 512n, 513n, 2n ** 31n - 1n, 2n ** 31n, -(2n ** 31n), -(2n ** 31n) - 1n, U32, 2n ** 63n - 1n, -(2n ** 63n)) },
  { weight: 1, arbitrary: fc.bigInt({ min: -(2n ** 31n), max: 2n ** 31n - 1n }) },
);
export const hostileFloat = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(0, -0, 1, 0.5, 2, 2.5, -1, 1e-45, 1e-38, 3.4e38, 100, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY) },
  { weight: 1, arbitrary: fc.float() },
);
const hostileI64 = fc.oneof(fc.constantFrom(0n, 1n, 42n, -1n, 2n ** 53n + 1n, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }));

/** SamplingParams fields as numbers on the wire; an absent key is an absent field (proto3 default). */
export interface SamplingSpec {
  temperature?: number; top_p?: number; top_k?: bigint; seed?: bigint; max_tokens?: bigint; min_tokens?: bigint;
  stop_token_ids?: bigint[]; ignore_eos?: bigint; logprobs?: bigint;
}

const saneSampling: SamplingSpec = { temperature: 0, top_p: 1, top_k: 0n, seed: 7n, max_tokens: 4n, min_tokens: 0n, stop_token_ids: [], ignore_eos: 0n, logprobs: -1n };

const hostileSamplingField: fc.Arbitrary<Partial<SamplingSpec>> = fc.oneof(
  hostileFloat.map((temperature) => ({ temperature })),
  hostileFloat.map((top_p) => ({ top_p })),
  hostileI32.map((top_k) => ({ top_k })),
  hostileI64.map((seed) => ({ seed })),
  hostileU32.map((max_tokens) => ({ max_tokens })),
  hostileU32.map((min_tokens) => ({ min_tokens })),
  fc.array(hostileU32, { maxLength: 70 }).map((stop_token_ids) => ({ stop_token_ids })),
  fc.constantFrom(0n, 1n, 2n, -1n).map((ignore_eos) => ({ ignore_eos })),
  hostileI32.map((logprobs) => ({ logprobs })),
);

/** Unset (what a peer that forgot the field sends), sane with a few hostile fields, or all random. */
export const sampling: fc.Arbitrary<SamplingSpec | null> = fc.oneof(
  { weight: 1, arbitrary: fc.constant(null) },
  { weight: 4, arbitrary: fc.array(hostileSamplingField, { maxLength: 3 }).map((fs) => Object.assign({}, saneSampling, ...fs) as SamplingSpec) },
  { weight: 1, arbitrary: fc.array(hostileSamplingField, { maxLength: 9 }).map((fs) => Object.assign({}, ...fs) as SamplingSpec) },
);

/** A request id: this run's fresh one, one shared by every run (stale state), or odd bytes. */
export type IdSpec = { kind: 'fresh' } | { kind: 'shared' } | { kind: 'bytes'; value: Uint8Array };
export const requestId: fc.Arbitrary<IdSpec> = fc.oneof(
  { weight: 8, arbitrary: fc.constant({ kind: 'fresh' } as IdSpec) },
  { weight: 1, arbitrary: fc.constant({ kind: 'shared' } as IdSpec) },
  { weight: 1, arbitrary: fc.oneof(
    fc.constantFrom('', '#1', 'x'.repeat(100_000), '\u0000', '🦙').map((s) => new TextEncoder().encode(s)),
    fc.uint8Array({ maxLength: 16 }), // often not UTF-8
  ).map((value) => ({ kind: 'bytes', value }) as IdSpec) },
);

/** Field numbers from 16 up are unknown to every message (a known one would overwrite, e.g., the id). */
export const mangleSpec: fc.Arbitrary<Mangle> = fc.oneof(
  { weight: 12, arbitrary: fc.constant({ kind: 'none' } as Mangle) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 999 }).map((keep) => ({ kind: 'truncate', keep }) as Mangle) },
  { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 16, max: 2 ** 29 - 1 }), fc.uint8Array({ maxLength: 32 })).map(([field, payload]) => ({ kind: 'unknown-field', field, payload }) as Mangle) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 48 }).map((bytes) => ({ kind: 'garbage', bytes }) as Mangle) },
);

export interface GenerateSpec {
  id: IdSpec;
  /** 'auto': the scenario's prompt length. */
  promptLen: 'auto' | bigint;
  sampling: SamplingSpec | null;
  kvTimeoutMs: bigint;
  mangle: Mangle;
}

export const generateSpec: fc.Arbitrary<GenerateSpec> = fc.record({
  id: requestId,
  promptLen: fc.oneof({ weight: 4, arbitrary: fc.constant('auto' as const) }, { weight: 1, arbitrary: hostileU32 }),
  sampling,
  kvTimeoutMs: fc.oneof({ weight: 3, arbitrary: fc.constantFrom(0n, 400n, 2_000n) }, { weight: 1, arbitrary: fc.constantFrom(1n, 2n ** 31n, 2n ** 31n - 1n, U32 - 1n, U32, -1n) }),
  mangle: mangleSpec,
});

/** One KvChunk, relative to the reservation it targets (blocks counted from the prompt length). */
export interface ChunkSpec {
  target: 'same' | 'unknown';
  /** Which blocks: all the prompt's, a prefix, one past the end, or raw numbers. */
  range: { kind: 'all' } | { kind: 'prefix'; blocks: number } | { kind: 'block'; index: number } | { kind: 'raw'; first: bigint; count: bigint };
  tokenCount: 'auto' | bigint;
  data: 'zeros' | 'noise' | 'short' | 'long' | 'empty';
  checksums: 'ok' | 'wrong' | 'missing' | 'extra';
  done: boolean;
  firstToken: { kind: 'valid' } | { kind: 'unset' } | { kind: 'id'; id: bigint; logprob: number; topLogprobs: number };
  blockTokens: 'ok' | bigint;
  blockBytes: 'ok' | bigint;
}

export const chunkSpec: fc.Arbitrary<ChunkSpec> = fc.record({
  target: fc.oneof({ weight: 6, arbitrary: fc.constant('same' as const) }, { weight: 1, arbitrary: fc.constant('unknown' as const) }),
  range: fc.oneof(
    { weight: 4, arbitrary: fc.constant({ kind: 'all' } as const) },
    { weight: 2, arbitrary: fc.integer({ min: 0, max: 4 }).map((blocks) => ({ kind: 'prefix', blocks }) as const) },
    { weight: 2, arbitrary: fc.integer({ min: 0, max: 40 }).map((index) => ({ kind: 'block', index }) as const) },
    { weight: 1, arbitrary: fc.tuple(hostileU32, hostileU32).map(([first, count]) => ({ kind: 'raw', first, count }) as const) },
  ),
  tokenCount: fc.oneof({ weight: 4, arbitrary: fc.constant('auto' as const) }, { weight: 1, arbitrary: hostileU32 }),
  data: fc.oneof({ weight: 6, arbitrary: fc.constant('zeros' as const) }, { weight: 1, arbitrary: fc.constantFrom('noise' as const, 'short' as const, 'long' as const, 'empty' as const) }),
  checksums: fc.oneof({ weight: 6, arbitrary: fc.constant('ok' as const) }, { weight: 1, arbitrary: fc.constantFrom('wrong' as const, 'missing' as const, 'extra' as const) }),
  done: fc.boolean(),
  firstToken: fc.oneof(
    { weight: 4, arbitrary: fc.constant({ kind: 'valid' } as const) },
    { weight: 1, arbitrary: fc.constant({ kind: 'unset' } as const) },
    { weight: 1, arbitrary: fc.record({ id: hostileU32, logprob: hostileFloat, topLogprobs: fc.constantFrom(0, 1, 25, 5000) }).map((t) => ({ kind: 'id', ...t }) as const) },
  ),
  blockTokens: fc.oneof({ weight: 8, arbitrary: fc.constant('ok' as const) }, { weight: 1, arbitrary: hostileU32 }),
  blockBytes: fc.oneof({ weight: 8, arbitrary: fc.constant('ok' as const) }, { weight: 1, arbitrary: hostileU32 }),
});

export type Step =
  | { kind: 'push'; chunks: ChunkSpec[]; mangle: Mangle }
  | { kind: 'cancel'; service: 'decode' | 'prefill'; target: 'same' | 'unknown' }
  | { kind: 'client-cancel' }
  | { kind: 'wait'; ms: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('push' as const), chunks: fc.array(chunkSpec, { minLength: 1, maxLength: 3 }), mangle: mangleSpec }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('cancel' as const), service: fc.constantFrom('decode' as const, 'prefill' as const), target: fc.constantFrom('same' as const, 'unknown' as const) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'client-cancel' } as const) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 40 }).map((ms) => ({ kind: 'wait', ms }) as const) },
);

/** Decode.Generate, then pushes and cancels; a twin reservation with the same id races it. */
export interface DecodeScenario {
  promptLen: number;
  generate: GenerateSpec;
  twin: boolean;
  steps: Step[];
  /** A well-formed, complete transfer at the end, so the sampling reaches the decode loop. */
  completeTransfer: boolean;
}

export const decodeScenario: fc.Arbitrary<DecodeScenario> = fc.record({
  promptLen: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 40 }) }, { weight: 1, arbitrary: fc.constantFrom(16, 32, 500, 511, 512) }),
  generate: generateSpec,
  twin: fc.oneof({ weight: 6, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  steps: fc.array(step, { maxLength: 4 }),
  completeTransfer: fc.boolean(),
});

export type DecodeAddress = 'decode' | 'self' | 'refused' | 'router-http' | { literal: string };

/** Prefill.Prefill, optionally after a reservation on the decode side, with a cancel racing it. */
export interface PrefillScenario {
  /** Reserve on the decode worker first, under the same id (the router's order). */
  reserve: GenerateSpec | null;
  id: IdSpec;
  promptIds: { kind: 'sane'; ids: number[] } | { kind: 'hostile'; ids: bigint[] } | { kind: 'repeat'; id: bigint; count: number };
  sampling: SamplingSpec | null;
  decodeAddress: DecodeAddress;
  race: { kind: 'prefill-cancel' | 'decode-cancel' | 'generate-cancel' | 'prefill-client-cancel'; afterMs: number } | null;
  mangle: Mangle;
}

export function prefillScenario(vocab: number): fc.Arbitrary<PrefillScenario> {
  return fc.record({
    reserve: fc.option(generateSpec.map((g) => ({ ...g, id: { kind: 'fresh' } as IdSpec, mangle: { kind: 'none' } as Mangle })), { freq: 4, nil: null }),
    id: fc.oneof({ weight: 10, arbitrary: fc.constant({ kind: 'fresh' } as IdSpec) }, { weight: 1, arbitrary: requestId }),
    promptIds: fc.oneof(
      { weight: 5, arbitrary: fc.array(fc.integer({ min: 0, max: vocab - 1 }), { minLength: 1, maxLength: 40 }).map((ids) => ({ kind: 'sane', ids }) as const) },
      { weight: 2, arbitrary: fc.array(fc.oneof(fc.bigInt({ min: 0n, max: BigInt(vocab - 1) }), hostileU32), { maxLength: 24 }).map((ids) => ({ kind: 'hostile', ids }) as const) },
      { weight: 1, arbitrary: fc.record({ id: fc.oneof(fc.constant(1n), hostileU32), count: fc.constantFrom(0, 511, 512, 513, 100_000) }).map((r) => ({ kind: 'repeat', ...r }) as const) },
    ),
    sampling,
    decodeAddress: fc.oneof(
      { weight: 8, arbitrary: fc.constant('decode' as const) },
      { weight: 1, arbitrary: fc.constantFrom('self' as const, 'refused' as const, 'router-http' as const) },
      { weight: 1, arbitrary: fc.constantFrom('', ':::', 'localhost:0', '127.0.0.1:99999', 'unix:/nonexistent', 'x'.repeat(5000), '\u0000').map((literal) => ({ literal })) },
    ),
    race: fc.option(fc.record({ kind: fc.constantFrom('prefill-cancel' as const, 'decode-cancel' as const, 'generate-cancel' as const, 'prefill-client-cancel' as const), afterMs: fc.integer({ min: 0, max: 30 }) }), { freq: 2, nil: null }),
    mangle: mangleSpec,
  });
}

/** One call to any method of a worker with bytes that may not parse. */
export interface GarbageCall {
  method: 'Prefill.Prefill' | 'Prefill.Cancel' | 'Prefill.Health' | 'Decode.Generate' | 'Decode.PushKv' | 'Decode.Cancel' | 'Decode.Health';
  payload: { kind: 'cancel'; id: IdSpec } | { kind: 'bytes'; bytes: Uint8Array };
  mangle: Mangle;
}

export const garbageCalls: fc.Arbitrary<GarbageCall[]> = fc.array(fc.record({
  method: fc.constantFrom('Prefill.Prefill' as const, 'Prefill.Cancel' as const, 'Prefill.Health' as const, 'Decode.Generate' as const, 'Decode.PushKv' as const, 'Decode.Cancel' as const, 'Decode.Health' as const),
  payload: fc.oneof(
    requestId.map((id) => ({ kind: 'cancel', id }) as const),
    fc.uint8Array({ maxLength: 64 }).map((bytes) => ({ kind: 'bytes', bytes }) as const),
  ),
  mangle: mangleSpec,
}), { minLength: 1, maxLength: 6 });
