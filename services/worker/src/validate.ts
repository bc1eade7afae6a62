// Validation of what arrives over gRPC, on the main thread, before anything is queued: a request the
// engine could not serve is answered INVALID_ARGUMENT here and never reaches the engine thread.
// proto3 carries no ranges (an HTTP `top_k` of 2^31 arrives as -2^31, a float field may be NaN, a
// message field may be unset), so every numeric field is checked against what the engine accepts.
import type { GenerateRequestMsg, KvChunkMsg, PrefillRequestMsg, SamplingParamsMsg } from '@pdserve/common';
import type { KvWireDtype } from '@pdserve/engine';

/** The most top-N alternatives reported per token (OpenAI's and vLLM's cap). */
export const MAX_LOGPROBS = 20;
/** Stop ids per request at most (each sampled token is compared with all of them). */
export const MAX_STOP_TOKEN_IDS = 1024;
/** Longest request id accepted (it keys maps and travels in every log line). */
export const MAX_REQUEST_ID_CHARS = 256;
/** setTimeout's largest delay (2^31 - 1 ms, ~24.8 days); a longer kv_timeout_ms is clamped to it. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export interface ModelLimits {
  vocabSize: number;
  maxModelLen: number;
}

/** Returns why the parameters are unusable, or undefined when they are fine. */
export function samplingProblem(s: SamplingParamsMsg | null | undefined): string | undefined {
  if (!s) return 'sampling is required';
  if (!Number.isFinite(s.temperature) || s.temperature < 0) return `sampling.temperature must be a finite number >= 0, got ${s.temperature}`;
  // 0 is proto3's "unset": no top-p.
  if (!(s.top_p >= 0 && s.top_p <= 1)) return `sampling.top_p must be in [0, 1] (0 = off), got ${s.top_p}`;
  if (!Number.isInteger(s.top_k) || s.top_k < -1) return `sampling.top_k must be an integer >= -1, got ${s.top_k}`;
  if (!Number.isSafeInteger(s.seed)) return `sampling.seed must be a safe integer (|seed| < 2^53), got ${s.seed}`;
  if (!Number.isInteger(s.max_tokens) || s.max_tokens < 1) return `sampling.max_tokens must be >= 1, got ${s.max_tokens}`;
  // min_tokens above max_tokens is harmless (max_tokens ends the request) and the router passes it on.
  if (!Number.isInteger(s.min_tokens) || s.min_tokens < 0) return `sampling.min_tokens must be an integer >= 0, got ${s.min_tokens}`;
  if (!Number.isInteger(s.logprobs) || s.logprobs < -1 || s.logprobs > MAX_LOGPROBS) {
    return `sampling.logprobs must be an integer in [-1, ${MAX_LOGPROBS}] (-1 = none), got ${s.logprobs}`;
  }
  if (s.stop_token_ids.length > MAX_STOP_TOKEN_IDS) return `sampling.stop_token_ids holds ${s.stop_token_ids.length} ids, at most ${MAX_STOP_TOKEN_IDS} are allowed`;
  return undefined;
}

function requestIdProblem(id: string): string | undefined {
  if (id.length === 0) return 'request_id is required';
  if (id.length > MAX_REQUEST_ID_CHARS) return `request_id is longer than ${MAX_REQUEST_ID_CHARS} characters`;
  return undefined;
}

export function prefillProblem(r: PrefillRequestMsg, m: ModelLimits): string | undefined {
  const idProblem = requestIdProblem(r.request_id);
  if (idProblem) return idProblem;
  if (r.prompt_ids.length === 0) return 'empty prompt';
  if (r.prompt_ids.length > m.maxModelLen) return `prompt of ${r.prompt_ids.length} tokens exceeds the context of ${m.maxModelLen} tokens`;
  const bad = r.prompt_ids.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= m.vocabSize);
  if (bad >= 0) return `token id ${r.prompt_ids[bad]} at position ${bad} is outside the model's vocabulary of ${m.vocabSize} ids`;
  return samplingProblem(r.sampling);
}

export function generateProblem(r: GenerateRequestMsg, m: ModelLimits): string | undefined {
  const idProblem = requestIdProblem(r.request_id);
  if (idProblem) return idProblem;
  if (!Number.isInteger(r.prompt_len) || r.prompt_len < 1) return `prompt_len must be >= 1, got ${r.prompt_len}`;
  if (r.prompt_len + 1 > m.maxModelLen) return `prompt of ${r.prompt_len} tokens leaves no room in the context of ${m.maxModelLen} tokens`;
  const ids = r.prompt_ids ?? [];
  if (ids.length > 0) {
    if (ids.length !== r.prompt_len) return `prompt_ids has ${ids.length} ids for a prompt_len of ${r.prompt_len}`;
    const bad = ids.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= m.vocabSize);
    if (bad >= 0) return `token id ${ids[bad]} at position ${bad} is outside the model's vocabulary of ${m.vocabSize} ids`;
  }
  return samplingProblem(r.sampling);
}

/** The KV wait in ms: kv_timeout_ms, 0 meaning the default, clamped to what setTimeout can hold. */
export function kvTimeoutMs(requested: number, defaultMs = 60_000): number {
  return Math.min(requested > 0 ? requested : defaultMs, MAX_TIMER_MS);
}

/** Where a request's KV transfer stands on the receiving side. */
export interface KvReceiveState {
  promptLen: number;
  blockTokens: number;
  blockBytes: number;
  /** Bytes of one block on the wire, per wire dtype (kv/wire.ts); blockBytes for fp32. */
  wireBlockBytes: Record<KvWireDtype, number>;
  /** The wire dtype of the transfer's first chunk: every later chunk must use it too. */
  wireDtype?: string;
  /** The block the next chunk must start at: chunks come in order, without gaps or repeats. */
  nextBlock: number;
  done: boolean;
}

/**
 * Why a received KV chunk must be refused, or undefined. Enforces the sender's contract (kv-sinks.ts):
 * blocks in order from 0 without gaps or repeats, within the reservation's prompt_len (which caps
 * the bytes a request may send at its reserved blocks), token_count = the positions those blocks
 * complete, nothing after `done`, and `done` carrying a first token inside the vocabulary.
 */
export function kvChunkProblem(st: KvReceiveState, c: KvChunkMsg, vocabSize: number): string | undefined {
  if (st.done) return 'KV chunk after the transfer was done';
  const totalBlocks = Math.ceil(st.promptLen / st.blockTokens);
  if (c.first_block !== st.nextBlock) {
    return `KV chunk starts at block ${c.first_block}, expected block ${st.nextBlock} (blocks must arrive in order, once each)`;
  }
  const end = c.first_block + c.block_count;
  if (end > totalBlocks) return `KV chunk reaches block ${end}, past the ${totalBlocks} blocks reserved for ${st.promptLen} positions`;
  const dtype = c.wire_dtype || 'fp32';
  if (st.wireDtype !== undefined && dtype !== st.wireDtype) return `KV chunk in wire dtype ${dtype} after chunks in ${st.wireDtype} (one dtype per transfer)`;
  const perBlock = st.wireBlockBytes[dtype as KvWireDtype];
  if (perBlock === undefined) return `KV wire dtype ${JSON.stringify(dtype)} is not supported here`;
  if (c.data.byteLength !== c.block_count * perBlock) return `KV chunk of ${c.block_count} ${dtype} blocks carries ${c.data.byteLength} bytes, expected ${c.block_count * perBlock}`;
  const expectTokens = Math.min(st.promptLen, end * st.blockTokens);
  if (c.token_count !== expectTokens) return `KV chunk token_count ${c.token_count}, expected ${expectTokens}`;
  if (c.done) {
    if (end !== totalBlocks) return `KV transfer done after ${end} of ${totalBlocks} blocks`;
    if (!c.first_token) return 'KV chunk with done carries no first_token';
    const id = c.first_token.id;
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) return `first_token.id ${id} is outside the vocabulary of ${vocabSize} ids`;
  }
  return undefined;
}
