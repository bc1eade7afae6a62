// One streaming request against an OpenAI-compatible server, timed chunk by chunk.
//
// Timing (all from performance.now(), so immune to wall-clock jumps):
//   start  = just before fetch() is called
//   TTFT   = arrival of the first SSE chunk that carries output text (`choices[0].text` for
//            completions, `choices[0].delta.content` for chat; empty strings, role-only deltas and
//            the usage chunk do not count)
//   ITL    = gaps between consecutive text-carrying chunks (one per chunk, whatever its token count)
//   E2EL   = arrival of `data: [DONE]` (the end of the response) - start
// Output tokens come from the final `usage.completion_tokens` (stream_options.include_usage), or
// the number of text chunks when the server sends no usage. A request fails on a non-2xx status
// (the error is "HTTP <status>: <OpenAI error.message>"), an error event in the stream, a stream
// that closes before [DONE], no output at all, a network error, or its timeout.
import type { BenchRequest } from './workloads.ts';
import { sseEvents } from './sse.ts';

export type Endpoint = 'completions' | 'chat';

export interface ClientOptions {
  /** Server base URL, e.g. http://127.0.0.1:8000 (a trailing /v1 is accepted). */
  baseUrl: string;
  endpoint: Endpoint;
  model: string;
  /** Whole-request limit (connect + stream) in milliseconds. */
  timeoutMs: number;
  /** Aborting it interrupts the request (recorded as interrupted, not failed). */
  signal?: AbortSignal;
  /** Sampling temperature; omitted from the body when undefined. */
  temperature?: number;
  /** Extra fields merged into every request body. */
  extraBody?: Record<string, unknown>;
  /** Keep the streamed text in the record (a multiturn conversation sends it back as the reply). */
  collectText?: boolean;
}

export interface RequestRecord {
  index: number;
  kind: string;
  ok: boolean;
  /** Set when the run was interrupted (Ctrl-C) while this request was in flight. */
  interrupted?: boolean;
  error?: string;
  httpStatus?: number;
  /** performance.now() when sent / when finished (ok or not). */
  startMs: number;
  endMs: number;
  ttftMs?: number;
  e2elMs?: number;
  itlMs: number[];
  promptTokens: number;
  outputTokens: number;
  targetOutputTokens: number;
  /** Text-carrying chunks received. */
  chunks: number;
  /** Prompt tokens the server served from a prefix cache (usage.prompt_tokens_details.cached_tokens). */
  cachedTokens?: number;
  /** The streamed output text, when ClientOptions.collectText. */
  text?: string;
}

/** Strips trailing slashes and a trailing /v1 so that paths can be appended uniformly. */
export function normalizeBaseUrl(url: string): string {
  let u = url.trim().replace(/\/+$/, '');
  if (u.endsWith('/v1')) u = u.slice(0, -3);
  return u;
}

export function endpointPath(endpoint: Endpoint): string {
  return endpoint === 'chat' ? '/v1/chat/completions' : '/v1/completions';
}

/** The JSON body for one request (fixed output length through vLLM's min_tokens/ignore_eos). */
export function buildBody(req: BenchRequest, opts: Pick<ClientOptions, 'endpoint' | 'model' | 'temperature' | 'extraBody'>): Record<string, unknown> {
  const body: Record<string, unknown> = { model: opts.model };
  if (opts.endpoint === 'chat') body.messages = req.messages ?? [{ role: 'user', content: req.promptText ?? '' }];
  else body.prompt = req.promptTokenIds ?? [];
  body.max_tokens = req.outputLen;
  body.min_tokens = req.outputLen;
  body.ignore_eos = true;
  if (opts.temperature !== undefined) body.temperature = opts.temperature;
  body.stream = true;
  body.stream_options = { include_usage: true };
  return { ...body, ...opts.extraBody };
}

/** "HTTP 503: <message>" from an error response, using the OpenAI `{error: {message}}` shape. */
export function describeHttpError(status: number, statusText: string, bodyText: string): string {
  let message = bodyText.trim();
  try {
    const j = JSON.parse(bodyText) as unknown;
    if (j && typeof j === 'object') {
      const o = j as Record<string, unknown>;
      const e = o.error;
      if (e && typeof e === 'object' && typeof (e as Record<string, unknown>).message === 'string') message = (e as Record<string, string>).message;
      else if (typeof e === 'string') message = e;
      else if (typeof o.message === 'string') message = o.message;
      else if (typeof o.detail === 'string') message = o.detail;
    }
  } catch {
    /* not JSON: keep the text */
  }
  if (message.length > 500) message = `${message.slice(0, 500)}...`;
  return `HTTP ${status}${message ? `: ${message}` : statusText ? `: ${statusText}` : ''}`;
}

function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as Error & { cause?: unknown }).cause;
  if (cause instanceof Error) {
    const code = (cause as Error & { code?: string }).code;
    return `${err.message}: ${code ? `${code} ` : ''}${cause.message}`.trim();
  }
  return err.message;
}

function textOf(chunk: Record<string, unknown>): string | undefined {
  const choices = chunk.choices;
  if (!Array.isArray(choices) || choices.length === 0) return undefined;
  const c = choices[0] as Record<string, unknown> | null;
  if (!c || typeof c !== 'object') return undefined;
  if (typeof c.text === 'string') return c.text;
  const delta = c.delta as Record<string, unknown> | undefined;
  if (delta && typeof delta === 'object' && typeof delta.content === 'string') return delta.content;
  return undefined;
}

/** Sends one streaming request and measures it. Never throws; never outlives opts.timeoutMs. */
export async function sendRequest(req: BenchRequest, opts: ClientOptions): Promise<RequestRecord> {
  const rec: RequestRecord = {
    index: req.index,
    kind: req.kind,
    ok: false,
    startMs: 0,
    endMs: 0,
    itlMs: [],
    promptTokens: req.promptLen,
    outputTokens: 0,
    targetOutputTokens: req.outputLen,
    chunks: 0,
  };
  const timeout = AbortSignal.timeout(opts.timeoutMs);
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
  const url = normalizeBaseUrl(opts.baseUrl) + endpointPath(opts.endpoint);
  const payload = JSON.stringify(buildBody(req, opts));
  let usageOut: number | undefined;
  let usagePrompt: number | undefined;
  let done = false;
  let last = 0;
  rec.startMs = performance.now();
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      body: payload,
      signal,
    });
    rec.httpStatus = res.status;
    if (!res.ok) {
      const text = await res.text().catch(() => '');
      throw new RequestFailure(describeHttpError(res.status, res.statusText, text));
    }
    if (!res.body) throw new RequestFailure('response has no body');
    for await (const data of sseEvents(res.body)) {
      const now = performance.now();
      if (data.trim() === '[DONE]') {
        done = true;
        rec.endMs = now;
        break;
      }
      let chunk: Record<string, unknown>;
      try {
        chunk = JSON.parse(data) as Record<string, unknown>;
      } catch {
        throw new RequestFailure(`malformed SSE data: ${data.slice(0, 200)}`);
      }
      if (chunk && typeof chunk === 'object' && chunk.error) {
        const e = chunk.error as Record<string, unknown> | string;
        throw new RequestFailure(`stream error: ${typeof e === 'string' ? e : String(e.message ?? JSON.stringify(e))}`);
      }
      const text = textOf(chunk);
      if (text !== undefined && text.length > 0) {
        if (rec.chunks === 0) rec.ttftMs = now - rec.startMs;
        else rec.itlMs.push(now - last);
        last = now;
        rec.chunks++;
        if (opts.collectText) rec.text = (rec.text ?? '') + text;
      }
      const usage = chunk.usage as Record<string, unknown> | null | undefined;
      if (usage && typeof usage === 'object') {
        if (typeof usage.completion_tokens === 'number') usageOut = usage.completion_tokens;
        if (typeof usage.prompt_tokens === 'number') usagePrompt = usage.prompt_tokens;
        const details = usage.prompt_tokens_details as { cached_tokens?: unknown } | null | undefined;
        if (details && typeof details.cached_tokens === 'number') rec.cachedTokens = details.cached_tokens;
      }
    }
    if (!done) throw new RequestFailure(`stream closed before [DONE] (${rec.chunks} text chunks received)`);
    rec.outputTokens = usageOut ?? rec.chunks;
    if (usagePrompt !== undefined) rec.promptTokens = usagePrompt;
    if (rec.chunks === 0) throw new RequestFailure('no output text received');
    rec.e2elMs = rec.endMs - rec.startMs;
    rec.ok = true;
  } catch (err) {
    rec.ok = false;
    rec.endMs = performance.now();
    rec.ttftMs = rec.chunks > 0 ? rec.ttftMs : undefined;
    if (err instanceof RequestFailure) rec.error = err.message;
    else if (timeout.aborted) rec.error = `timeout after ${opts.timeoutMs / 1000} s (${rec.chunks} text chunks received)`;
    else if (opts.signal?.aborted) {
      rec.error = 'interrupted';
      rec.interrupted = true;
    } else rec.error = describeError(err);
  }
  return rec;
}

class RequestFailure extends Error {}
