// Hooks the HTTP layer calls as requests progress, so that metrics (Prometheus, logs, tests) can be
// plugged in without the routes knowing about them. Every hook is optional and must not throw
// (a throwing hook is caught and logged, never allowed to break a request).
//
// Pairing: for /v1/completions and /v1/chat/completions, `onRequestStart` is called once the
// request is valid and tokenized, just before it goes to the backend; each such request then ends
// with exactly one `onRequestEnd` (it produced a response: finished, stopped, cut at max tokens, or
// the client went away) or one `onError` with `started: true` (the backend failed or refused it).
// `onError` with `started: false` reports every other error response (schema failures, unknown
// model or route, bad API key, prompt too long, ...): those requests never reached the backend.
import type { FinishReason } from './backend.ts';

export type Endpoint = 'completions' | 'chat';

export interface RequestStartInfo {
  requestId: string;
  endpoint: Endpoint;
  promptTokens: number;
  maxTokens: number;
  stream: boolean;
}

export interface RequestEndInfo {
  requestId: string;
  endpoint: Endpoint;
  promptTokens: number;
  /** Of those, tokens whose KV came from a worker's prefix cache. */
  cachedTokens: number;
  /** Generated tokens, counted like vLLM: a sampled stop token id / EOS counts, although its text is not returned. */
  completionTokens: number;
  /**
   * 'stop': EOS, a stop token id or a stop string; 'length': max_tokens or the context window;
   * 'abort': the client went away before the end.
   */
  finishReason: FinishReason;
  /** Request arrival to the last byte written (or to the disconnect), ms. */
  e2eMs: number;
  /** Request arrival to the first token event from the backend, ms; undefined when none came. */
  ttftMs?: number;
  /** vLLM's definition: (e2e - ttft) / (tokens - 1), over token events; undefined with fewer than 2. */
  tpotMs?: number;
  /** The backend's per-phase milliseconds from its finish event (queue, prefill, kv_transfer, first_decode); {} when none arrived. */
  timings: Record<string, number>;
}

export interface ErrorInfo {
  requestId: string;
  /** True when onRequestStart was called for this request (so this error is its end). */
  started: boolean;
  /** The error's message (what the client got). */
  message: string;
}

export interface RouterObserver {
  onRequestStart?(info: RequestStartInfo): void;
  /** The first token event of a request arrived, `ttftMs` after the request did. */
  onFirstToken?(ttftMs: number, requestId: string): void;
  /** Every later token event, `itlMs` after the previous one. */
  onToken?(itlMs: number, requestId: string): void;
  onRequestEnd?(info: RequestEndInfo): void;
  /** An error response (or an error chunk inside a stream). `code` is the OpenAI error code (e.g. 'invalid_request_error' type's code, 'no_capacity'). */
  onError?(status: number, code: string, info: ErrorInfo): void;
  /** The backend refused a request before its first event with a 503 BackendError; `reason` is its code (e.g. 'no_capacity', 'slo_ttft'). onError(503, reason, ...) follows. */
  onAdmissionRejected?(reason: string, requestId: string): void;
}

type Hook = keyof RouterObserver;

/** Calls observer hooks, swallowing (and logging) whatever they throw. */
export class SafeObserver {
  constructor(
    private readonly observer: RouterObserver | undefined,
    private readonly log: { warn(obj: object, msg: string): void },
  ) {}

  call<K extends Hook>(hook: K, ...args: Parameters<NonNullable<RouterObserver[K]>>): void {
    const fn = this.observer?.[hook] as ((...a: unknown[]) => void) | undefined;
    if (fn === undefined) return;
    try {
      fn.apply(this.observer, args);
    } catch (err) {
      this.log.warn({ err, hook }, 'router observer hook threw');
    }
  }
}
