// Drives one generation: calls the backend, turns its token events into text deltas (TextStream),
// ends it on a stop string, follows the client's disconnect, measures TTFT / ITL / TPOT and reports
// to the observer. The routes only format what it hands them.
import type { Tokenizer } from '../../../packages/engine/src/tokenizer/types.ts';
import {
  BackendError,
  type Backend,
  type FinishEvent,
  type FinishReason,
  type GenerationEvent,
  type LatencySlo,
  type SamplingRequest,
} from './backend.ts';
import { ApiError } from './errors.ts';
import type { Endpoint, SafeObserver } from './observer.ts';
import { TextStream, type TextDelta } from './text-stream.ts';

export interface GenerationSpec {
  requestId: string;
  endpoint: Endpoint;
  promptIds: number[];
  sampling: SamplingRequest;
  slo?: LatencySlo;
  stop: string[];
  stream: boolean;
  /** performance.now() when the request arrived. */
  arrivedAt: number;
}

export interface GenerationDeps {
  backend: Backend;
  tokenizer: Tokenizer;
  observer: SafeObserver;
  log: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void };
}

export interface GenerationOutcome {
  finishReason: FinishReason;
  /** Counted like vLLM: every token event, plus the sampled stop token id / EOS when there was one. */
  completionTokens: number;
  /** The client went away before the end. */
  clientGone: boolean;
  /** Leading prompt tokens served by a worker's prefix cache (OpenAI's prompt_tokens_details.cached_tokens). */
  cachedTokens: number;
}

/** The abort reason the backend sees when a stop string ended the text (vs a disconnect). */
export const STOP_STRING_REASON = 'stop_string';
export const CLIENT_GONE_REASON = 'client_disconnected';

/** How long to keep reading a backend that was told to stop (for its finish event's timings). */
const DRAIN_TIMEOUT_MS = 2000;

export class Generation {
  /** Set once the backend has been called: errors from now on end a started request. */
  started = false;
  private readonly abort = new AbortController();
  private firstAt: number | undefined;
  private lastAt: number | undefined;
  private tokenEvents = 0;
  private cachedTokens = 0;
  private timings: Promise<Record<string, number>> = Promise.resolve({});
  private outcome: GenerationOutcome | undefined;
  private ended = false;

  constructor(
    private readonly deps: GenerationDeps,
    private readonly spec: GenerationSpec,
    private readonly clientSignal: AbortSignal,
  ) {}

  /**
   * Runs the generation to its end, handing each non-empty delta (or each token, with logprobs) to
   * `onDelta` and the held-back tail last. Throws ApiError / BackendError when the backend fails;
   * a client disconnect is not an error (finishReason 'abort').
   */
  async run(onDelta: (d: TextDelta) => void | Promise<void>, wantLogprobs: boolean): Promise<GenerationOutcome> {
    const { spec, deps } = this;
    const text = new TextStream(deps.tokenizer, spec.promptIds, spec.stop, wantLogprobs);
    const onClientGone = () => this.abort.abort(CLIENT_GONE_REASON);
    if (this.clientSignal.aborted) onClientGone();
    else this.clientSignal.addEventListener('abort', onClientGone, { once: true });

    this.started = true;
    deps.observer.call('onRequestStart', {
      requestId: spec.requestId,
      endpoint: spec.endpoint,
      promptTokens: spec.promptIds.length,
      maxTokens: spec.sampling.maxTokens,
      stream: spec.stream,
    });
    let it: AsyncIterator<GenerationEvent> | undefined;
    let finish: FinishEvent | undefined;
    try {
      const req = { requestId: spec.requestId, promptIds: spec.promptIds, sampling: spec.sampling, signal: this.abort.signal };
      it = deps.backend.generate(spec.slo ? { ...req, slo: spec.slo } : req)[Symbol.asyncIterator]();
      for (;;) {
        const r = await it.next();
        if (r.done) break;
        const ev = r.value;
        if (ev.type === 'finish') {
          finish = ev;
          // Let the backend's generator run its finally blocks (streams, clients, bookkeeping):
          // left suspended at its last yield, it would hold them forever.
          void it.return?.()?.catch(() => {});
          break;
        }
        this.onTokenTiming();
        if (ev.cachedTokens !== undefined) this.cachedTokens = ev.cachedTokens;
        if (this.clientSignal.aborted) continue; // nobody to write to; wait for the backend's finish
        const delta = text.push(ev);
        if (delta.text !== '' || delta.logprob) await onDelta(delta);
        if (text.stopped) {
          this.abort.abort(STOP_STRING_REASON);
          this.timings = drainTimings(it);
          return this.finishWith('stop', this.tokenEvents);
        }
      }
    } catch (err) {
      if (this.clientSignal.aborted) return this.finishWith('abort', this.tokenEvents);
      if (err instanceof BackendError && err.status === 503 && this.tokenEvents === 0) {
        deps.observer.call('onAdmissionRejected', err.code, spec.requestId);
      }
      this.abort.abort('error');
      // A generator suspended at a yield (onDelta threw) runs its finally blocks only on return().
      it?.return?.()?.catch(() => {});
      throw err;
    } finally {
      this.clientSignal.removeEventListener('abort', onClientGone);
    }
    if (this.clientSignal.aborted) {
      this.timings = Promise.resolve(finish?.timings ?? {});
      return this.finishWith('abort', this.tokenEvents);
    }
    if (finish === undefined) {
      throw new ApiError(500, 'The backend ended the generation without finishing it.', { code: 'backend_error' });
    }
    if (finish.reason === 'abort') {
      throw new ApiError(503, 'The generation was aborted by the backend.', { code: 'backend_aborted', headers: { 'retry-after': '1' } });
    }
    this.timings = finish.timingsLater ?? Promise.resolve(finish.timings ?? {});
    const tail = text.finish();
    if (tail !== '') await onDelta({ text: tail });
    const reason: FinishReason = text.stopped ? 'stop' : finish.reason;
    return this.finishWith(reason, this.tokenEvents + (finish.stopTokenId !== undefined ? 1 : 0));
  }

  /** The request ended in an error response: complete() must not report it as finished too. */
  fail(): void {
    this.ended = true;
  }

  /**
   * Call once the response is fully written (or the client is gone): reports onRequestEnd with
   * e2e measured now. Safe to call more than once.
   */
  complete(): void {
    if (this.ended || this.outcome === undefined) return;
    this.ended = true;
    const { spec, deps } = this;
    const outcome = this.outcome;
    const now = performance.now();
    const e2eMs = now - spec.arrivedAt;
    const ttftMs = this.firstAt === undefined ? undefined : this.firstAt - spec.arrivedAt;
    const tpotMs =
      ttftMs !== undefined && this.tokenEvents >= 2 ? Math.max(0, e2eMs - ttftMs) / (this.tokenEvents - 1) : undefined;
    void this.timings.then((timings) => {
      deps.observer.call('onRequestEnd', {
        requestId: spec.requestId,
        endpoint: spec.endpoint,
        promptTokens: spec.promptIds.length,
        cachedTokens: outcome.cachedTokens,
        completionTokens: outcome.completionTokens,
        finishReason: outcome.finishReason,
        e2eMs,
        ttftMs,
        tpotMs,
        timings,
      });
      deps.log.info(
        { promptTokens: spec.promptIds.length, completionTokens: outcome.completionTokens, finishReason: outcome.finishReason, e2eMs: Math.round(e2eMs), ttftMs: ttftMs === undefined ? undefined : Math.round(ttftMs) },
        'generation finished',
      );
    });
  }

  private onTokenTiming(): void {
    const now = performance.now();
    this.tokenEvents++;
    if (this.firstAt === undefined) {
      this.firstAt = now;
      this.deps.observer.call('onFirstToken', now - this.spec.arrivedAt, this.spec.requestId);
    } else {
      this.deps.observer.call('onToken', now - (this.lastAt ?? now), this.spec.requestId);
    }
    this.lastAt = now;
  }

  private finishWith(finishReason: FinishReason, completionTokens: number): GenerationOutcome {
    this.outcome = { finishReason, completionTokens, clientGone: this.clientSignal.aborted, cachedTokens: this.cachedTokens };
    return this.outcome;
  }
}

/** Reads a backend that was told to stop until its finish event; gives up after DRAIN_TIMEOUT_MS. */
async function drainTimings(it: AsyncIterator<GenerationEvent>): Promise<Record<string, number>> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Record<string, number>>((resolve) => {
    timer = setTimeout(() => {
      void it.return?.()?.catch(() => {});
      resolve({});
    }, DRAIN_TIMEOUT_MS);
    timer.unref();
  });
  const drain = (async () => {
    try {
      for (;;) {
        const r = await it.next();
        if (r.done) return {};
        if (r.value.type === 'finish') {
          void it.return?.()?.catch(() => {}); // as in generate(): release what the backend holds
          return r.value.timings ?? {};
        }
      }
    } catch {
      return {};
    }
  })();
  try {
    return await Promise.race([drain, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
