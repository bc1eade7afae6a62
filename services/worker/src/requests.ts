// Request state kept by a worker's scheduler, apart from the scheduler's policy (vLLM v1 keeps
// request state, scheduling and the KV-cache manager apart in the same way).
import type { KvSequence, Sampler, SampledToken } from '@pdserve/engine';
import type { KvChunkMsg, SamplingParamsMsg } from '@pdserve/common';
import type { FailureKind } from './engine-protocol.ts';

/** A failure of one request, with the kind the gRPC layer turns into a status code. */
export class RequestFailure extends Error {
  constructor(message: string, readonly kind: FailureKind) {
    super(message);
  }
}

/** Where a prefill's KV blocks go: a remote decode worker, or this worker's own decode batch. */
export interface KvSink {
  /** Sends blocks [first, first+count) once the sequence holds `tokenCount` positions. */
  send(seq: KvSequence, first: number, count: number, tokenCount: number): void;
  /**
   * Last call: the remaining blocks, the first sampled token and how many leading prompt tokens
   * came from the prefix cache. Resolves when the decode side has it all.
   */
  finish(seq: KvSequence, first: number, count: number, firstToken: SampledToken, cachedTokens: number): Promise<void>;
  /** Stops the transfer (the request was cancelled or failed). */
  abort(): void;
}

export interface PrefillJob {
  requestId: string;
  promptIds: number[];
  sampling: SamplingParamsMsg;
  /** Built when the job is queued, so bad parameters fail it before the prompt runs. */
  sampler: Sampler;
  sink: KvSink;
  /** Its KV stays here for the request's own decode side (a unified worker). */
  local: boolean;
  /** The job writes into its request's decode sequence (a unified worker): that side owns the slot. */
  sharesDecodeSeq?: boolean;
  enqueuedAt: number;
  startedAt?: number;
  computeMs: number;
  seq?: KvSequence;
  /** Leading prompt tokens the prefix cache held when the job started (not computed again). */
  cachedTokens: number;
  /** Blocks already handed to the sink. */
  sentBlocks: number;
  cancelled: boolean;
  done(result: { firstToken: SampledToken; queueMs: number; prefillMs: number; transferTailMs: number; cachedTokens: number }): void;
  fail(err: Error): void;
}

export type DecodeStatus = 'waiting_kv' | 'ready' | 'running';

export interface DecodeRequest {
  requestId: string;
  seq: KvSequence;
  sampling: SamplingParamsMsg;
  sampler: Sampler;
  promptLen: number;
  /** The prompt's ids when the router sent them: the transferred KV is then kept in the prefix cache under them. */
  promptIds?: readonly number[];
  status: DecodeStatus;
  /** Received KV chunks not yet written into the cache (the scheduler writes them between steps). */
  pendingKv: PendingKvChunk[];
  /** The token sampled last, not yet run through the model. */
  lastToken?: SampledToken;
  generated: number;
  kvDoneAt?: number;
  /** Leading prompt tokens whose KV came from a prefix cache (reported with the first token). */
  cachedTokens?: number;
  cancelled: boolean;
  /** Its client is not reading: it sits out decode steps until resumed (the stream's buffer stays bounded). */
  paused?: boolean;
  /** Called with the bytes of each received KV chunk once it is written (or dropped). */
  kvApplied?(bytes: number): void;
  /** `admitMs` is set on the first token's call only. */
  emit(tokens: SampledToken[], admitMs?: number): void;
  finish(reason: 'stop' | 'length', stopTokenId?: number): void;
  fail(err: Error): void;
}

/**
 * A received KV chunk waiting on the engine thread. `verified` / `finite`: the main thread already
 * checked its CRC-32s / (fp32) its floats for NaN and Inf, so the engine thread only scatters it.
 * `release` gives its receive buffer back; called once, when the chunk is written or dropped.
 */
export type PendingKvChunk = KvChunkMsg & { verified?: boolean; finite?: boolean; release?: () => void };
