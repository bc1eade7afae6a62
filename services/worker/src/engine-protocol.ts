// Messages between a worker's main thread (gRPC, Redis, metrics) and its engine thread (ONNX
// Runtime, the KV cache, the scheduler). ONNX Runtime's node binding runs a forward pass
// synchronously, so the engine gets a thread of its own: the main thread stays free to stream KV
// blocks and tokens while a step computes.
import type { EngineOptions, KvShape, KvWireDtype, ModelConfig, PrefixEvent, SampledToken } from '@pdserve/engine';
import type { KvChunkMsg, SamplingParamsMsg, WorkerLoad } from '@pdserve/common';
import type { SchedulerOptions } from './scheduler.ts';
import type { SharedSlotsHandle } from './kv-buffers.ts';

/**
 * Default nice value of the engine thread: below the I/O threads, so that a request's gRPC, SSE and
 * admission work is not queued behind forward passes when cores are oversubscribed (2 cores running
 * a router and two workers). Linux applies a nice value per thread, so only compute yields.
 */
export const ENGINE_NICE = 10;

export interface EngineThreadData {
  model: string;
  engine: EngineOptions;
  scheduler: Omit<SchedulerOptions, 'onStep'>;
  /** How this worker's outgoing KV blocks travel (kv/wire.ts); incoming ones say their own. */
  kvWireDtype: KvWireDtype;
  /** Nice value of the engine thread (and of ONNX Runtime's pool threads, which inherit it). */
  nice: number;
}

export interface EngineInfo {
  config: ModelConfig;
  maxModelLen: number;
  vocabSize: number;
  blockBytes: number;
  blockTokens: number;
  kvShape: KvShape;
  kvBytes: number;
  maxSequences: number;
  /** Root of the prefix cache's block hash chain; absent when prefix caching is off. */
  prefixRoot?: string;
  /** KV message buffers shared with the main thread (kv-buffers.ts): outgoing and incoming. */
  kvPools: { send: SharedSlotsHandle; receive: SharedSlotsHandle };
}

/** Why an engine-side operation failed, so the gRPC layer can pick a status code. */
export type FailureKind = 'queue_full' | 'too_long' | 'invalid' | 'cancelled' | 'checksum' | 'exists' | 'precondition' | 'internal';

export type ToEngine =
  | { type: 'prefill'; requestId: string; promptIds: number[]; sampling: SamplingParamsMsg; local: boolean }
  | { type: 'reserve'; requestId: string; promptLen: number; sampling: SamplingParamsMsg; promptIds?: number[] }
  /**
   * A received chunk, checked on the main thread: `verified`, its blocks' CRC-32s matched; `finite`,
   * its fp32 floats hold no NaN or Inf. `slot`: its data is a view of that receive-pool slot, which
   * the engine thread gives back once the chunk is written or dropped.
   */
  | { type: 'kv'; requestId: string; chunk: KvChunkMsg; verified?: boolean; finite?: boolean; slot?: number }
  | { type: 'kvAck'; requestId: string; error?: string }
  /** Cancels the request's prefill or its decode side (on a unified worker both share the id). */
  | { type: 'cancel'; requestId: string; scope: 'prefill' | 'decode' }
  /** A decode stream whose client stopped reading: its sequence sits out decode steps until resumed. */
  | { type: 'pause'; requestId: string; paused: boolean }
  | { type: 'stop' };

export type FromEngine =
  | { type: 'ready'; info: EngineInfo }
  | { type: 'loadFailed'; message: string }
  | { type: 'prefillDone'; requestId: string; firstToken: SampledToken; queueMs: number; prefillMs: number; transferTailMs: number; cachedTokens: number }
  | { type: 'prefillFailed'; requestId: string; message: string; kind: FailureKind }
  /** Blocks to send; slots[i] >= 0: chunks[i].data is a view of that send-pool slot, which the main thread gives back once sent. */
  | { type: 'kvOut'; requestId: string; chunks: KvChunkMsg[]; final: boolean; slots: number[] }
  | { type: 'kvAbort'; requestId: string }
  | { type: 'reserved'; requestId: string }
  | { type: 'reserveFailed'; requestId: string; message: string; kind: FailureKind }
  | { type: 'tokens'; requestId: string; tokens: SampledToken[]; admitMs?: number; cachedTokens?: number }
  | { type: 'finished'; requestId: string; reason: 'stop' | 'length'; stopTokenId?: number; generated: number }
  | { type: 'decodeFailed'; requestId: string; message: string; kind: FailureKind }
  /** KV bytes of a request written into the cache (the main thread's backlog shrinks). */
  | { type: 'kvApplied'; requestId: string; bytes: number }
  /** A unified worker's local prefill completed a chunk for this decode request (its KV wait restarts). */
  | { type: 'kvProgress'; requestId: string }
  | { type: 'step'; phase: 'prefill' | 'decode'; ms: number; tokens: number; batch: number }
  | { type: 'load'; load: WorkerLoad & Record<string, unknown> }
  /** Block hashes the prefix cache stored or dropped since the last report; with resync, `held` is all it holds. */
  | { type: 'prefixEvents'; events: PrefixEvent[]; resync: boolean; held?: string[] }
  | { type: 'stopped' };
