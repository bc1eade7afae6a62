// Request body (already schema-valid) → what the backend needs: SamplingRequest, stop strings, SLO,
// and the checks that need the served model (context length, token id ranges).
import type { LatencySlo, SamplingRequest } from './backend.ts';
import { ApiError, invalidRequest } from './errors.ts';
import type { CommonBody, SloBody } from './schemas.ts';

/** Completions default max_tokens (OpenAI's). Chat defaults to the rest of the context window. */
export const DEFAULT_COMPLETION_MAX_TOKENS = 16;

/** Rejects parameters the schema accepts but the server cannot honor. */
export function checkUnsupported(body: CommonBody & { best_of?: number | null; suffix?: string | null }): void {
  if ((body.n ?? 1) !== 1) throw invalidRequest('Only n=1 is supported.', 'n', 'unsupported_parameter');
  if ((body.best_of ?? 1) !== 1) throw invalidRequest('Only best_of=1 is supported.', 'best_of', 'unsupported_parameter');
  for (const p of ['presence_penalty', 'frequency_penalty'] as const) {
    if ((body[p] ?? 0) !== 0) throw invalidRequest(`${p} is not supported (only 0).`, p, 'unsupported_parameter');
  }
  if (body.logit_bias != null && Object.keys(body.logit_bias).length > 0) {
    throw invalidRequest('logit_bias is not supported.', 'logit_bias', 'unsupported_parameter');
  }
  if (body.suffix != null && body.suffix !== '') {
    throw invalidRequest('suffix is not supported.', 'suffix', 'unsupported_parameter');
  }
  if (body.seed != null && !Number.isSafeInteger(body.seed)) {
    throw invalidRequest('seed must be a safe integer.', 'seed');
  }
}

export function stopStrings(stop: string | string[] | null | undefined): string[] {
  if (stop == null) return [];
  return (typeof stop === 'string' ? [stop] : stop).filter((s) => s.length > 0);
}

export function checkTokenIds(ids: readonly number[], vocabSize: number, param: string): void {
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw invalidRequest(`Token id ${id} is out of range [0, ${vocabSize}).`, param, 'invalid_token_id');
    }
  }
}

/**
 * 413 when the prompt alone exceeds the context window; 400 context_length_exceeded when the prompt
 * fits but prompt + max tokens does not (OpenAI's status for that case). Both use the code
 * `context_length_exceeded`.
 */
export function checkContextLength(
  promptTokens: number,
  maxTokens: number,
  maxModelLen: number,
  what: 'prompt' | 'messages',
): void {
  if (promptTokens > maxModelLen) {
    throw new ApiError(
      413,
      `This model's maximum context length is ${maxModelLen} tokens. However, your ${what} is ${promptTokens} tokens long. Please reduce the length of the ${what}.`,
      { param: what, code: 'context_length_exceeded' },
    );
  }
  // At least one token must fit (the chat default max_tokens is whatever is left, maybe 0).
  if (promptTokens + Math.max(1, maxTokens) > maxModelLen) {
    throw invalidRequest(
      `This model's maximum context length is ${maxModelLen} tokens. However, you requested ${promptTokens + maxTokens} tokens (${promptTokens} in the ${what}, ${maxTokens} in the completion). Please reduce the length of the ${what} or completion.`,
      'max_tokens',
      'context_length_exceeded',
    );
  }
}

export function resolveSlo(body: SloBody | null | undefined, defaults: LatencySlo | undefined): LatencySlo | undefined {
  const ttftMs = body?.ttft_ms ?? defaults?.ttftMs;
  const tpotMs = body?.tpot_ms ?? defaults?.tpotMs;
  if (ttftMs === undefined && tpotMs === undefined) return undefined;
  const slo: LatencySlo = {};
  if (ttftMs !== undefined) slo.ttftMs = ttftMs;
  if (tpotMs !== undefined) slo.tpotMs = tpotMs;
  return slo;
}

/**
 * Below this a temperature is greedy and a top_p keeps the best token only (vLLM's epsilon). It
 * also keeps both away from values a float32 (their wire type) turns into 0 or a subnormal, which
 * would make a worker divide by zero or refuse top_p = 0.
 */
export const SAMPLING_EPS = 1e-5;

export function buildSampling(
  body: CommonBody,
  opts: { maxTokens: number; logprobs: number | undefined; vocabSize: number },
): SamplingRequest {
  const stopTokenIds = body.stop_token_ids ?? [];
  checkTokenIds(stopTokenIds, opts.vocabSize, 'stop_token_ids');
  const topK = body.top_k ?? 0;
  const temperature = body.temperature ?? 1;
  const sampling: SamplingRequest = {
    temperature: temperature < SAMPLING_EPS ? 0 : temperature,
    topP: Math.max(body.top_p ?? 1, SAMPLING_EPS),
    // top_k at or above the vocabulary keeps every token: the same as off.
    topK: topK <= 0 || topK >= opts.vocabSize ? 0 : topK,
    maxTokens: opts.maxTokens,
    minTokens: Math.min(body.min_tokens ?? 0, opts.maxTokens),
    stopTokenIds: [...new Set(stopTokenIds)],
    ignoreEos: body.ignore_eos ?? false,
  };
  if (body.seed != null) sampling.seed = body.seed;
  if (opts.logprobs !== undefined) sampling.logprobs = opts.logprobs;
  return sampling;
}
