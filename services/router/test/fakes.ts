// Test doubles for the router's unit tests: a tiny piece tokenizer and a scripted Backend.
import { TokenizeError, type StreamDecoder, type Tokenizer } from '../../../packages/engine/src/tokenizer/types.ts';
import {
  BackendError,
  type Backend,
  type FinishReason,
  type GenerateRequest,
  type GenerationEvent,
  type WorkerSummary,
} from '../src/backend.ts';
import { buildRouterApp, type RouterAppOptions } from '../src/app.ts';
import type { RouterObserver } from '../src/observer.ts';

export const BOS = 0;
export const EOS = 1;

/** Id 0 = <s>, 1 = </s>, then multi-character pieces, then single characters (greedy longest match). */
const PIECES = ['<s>', '</s>', 'Hello', ' world', 'Once', ' upon', ' a', ' time', 'STOP', ...' abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?:\n#'];

export class FakeTokenizer implements Tokenizer {
  readonly vocabSize = PIECES.length;
  readonly bosId = BOS;
  readonly eosIds = [EOS];

  id(piece: string): number {
    const i = PIECES.indexOf(piece);
    if (i < 0) throw new Error(`no piece ${JSON.stringify(piece)}`);
    return i;
  }

  /** Ids of `text` without BOS. */
  ids(text: string): number[] {
    return this.encode(text, { addBos: false });
  }

  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const out = opts.addBos ?? true ? [BOS] : [];
    let i = 0;
    while (i < text.length) {
      let best = -1;
      for (let p = 2; p < PIECES.length; p++) {
        const piece = PIECES[p] as string;
        if (text.startsWith(piece, i) && (best < 0 || piece.length > (PIECES[best] as string).length)) best = p;
      }
      if (best < 0) throw new TokenizeError(`cannot encode character ${JSON.stringify(text[i])}`);
      out.push(best);
      i += (PIECES[best] as string).length;
    }
    return out;
  }

  decode(ids: readonly number[]): string {
    return ids.map((id) => (id <= EOS ? '' : (PIECES[id] ?? ''))).join('');
  }

  createStreamDecoder(): StreamDecoder {
    return { push: (id) => this.decode([id]), flush: () => '' };
  }
}

export interface Script {
  /** Token ids to yield (after the prompt). */
  ids: number[];
  finish?: FinishReason;
  stopTokenId?: number;
  delayMs?: number;
  /** Thrown before the first event. */
  errorBefore?: Error;
  /** Thrown after this many tokens. */
  errorAfter?: { tokens: number; error: Error };
  /** With logprobs asked: each token's logprob is -0.5, alternatives the next ids. */
  timings?: Record<string, number>;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (ms <= 0 || signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });

export class FakeBackend implements Backend {
  readonly requests: GenerateRequest[] = [];
  /** Per request: the abort reason when its signal was aborted. */
  readonly aborts: unknown[] = [];
  isReady = true;
  finished = 0;

  constructor(public script: (req: GenerateRequest) => Script) {}

  async *generate(req: GenerateRequest): AsyncGenerator<GenerationEvent> {
    this.requests.push(req);
    req.signal.addEventListener('abort', () => this.aborts.push(req.signal.reason), { once: true });
    const s = this.script(req);
    const timings = s.timings ?? { queue: 1, prefill: 2 };
    try {
      if (s.errorBefore) throw s.errorBefore;
      const n = Math.min(s.ids.length, req.sampling.maxTokens);
      for (let i = 0; i < n; i++) {
        await sleep(s.delayMs ?? 0, req.signal);
        if (req.signal.aborted) {
          yield { type: 'finish', reason: 'abort', timings };
          return;
        }
        if (s.errorAfter && i === s.errorAfter.tokens) throw s.errorAfter.error;
        const id = s.ids[i] as number;
        if (req.sampling.stopTokenIds.includes(id) || (!req.sampling.ignoreEos && id === EOS)) {
          yield { type: 'finish', reason: 'stop', stopTokenId: id, timings };
          return;
        }
        const ev: GenerationEvent = { type: 'token', id };
        if (req.sampling.logprobs !== undefined) {
          ev.logprob = -0.5;
          ev.topLogprobs = Array.from({ length: req.sampling.logprobs }, (_, k) => ({ id: 2 + ((id + k + 1) % 40), logprob: -1 - k }));
        }
        yield ev;
      }
      yield { type: 'finish', reason: n < s.ids.length || s.finish === undefined ? 'length' : s.finish, timings };
    } finally {
      this.finished++;
    }
  }

  ready(): boolean {
    return this.isReady;
  }

  workers(): WorkerSummary[] {
    return [
      { id: 'w1', role: 'prefill', grpc_address: '127.0.0.1:1', metrics_url: '', load: {}, last_heartbeat_ms: 0, healthy: true, state: 'healthy' },
    ];
  }
}

export const noCapacity = () => new BackendError('no capacity', 503, 'no_capacity', 3);

export interface Recorded {
  events: Array<[string, ...unknown[]]>;
  observer: RouterObserver;
}

export function recordingObserver(): Recorded {
  const events: Array<[string, ...unknown[]]> = [];
  const rec =
    (name: string) =>
    (...args: unknown[]) =>
      events.push([name, ...args]);
  return {
    events,
    observer: {
      onRequestStart: rec('start'),
      onFirstToken: rec('first'),
      onToken: rec('token'),
      onRequestEnd: rec('end'),
      onError: rec('error'),
      onAdmissionRejected: rec('rejected'),
    },
  };
}

export const MODEL = 'fake-model';

export function makeApp(backend: Backend, extra: Partial<RouterAppOptions> = {}) {
  const tokenizer = new FakeTokenizer();
  return buildRouterApp({ backend, tokenizer, modelName: MODEL, maxModelLen: 64, vocabSize: tokenizer.vocabSize, ...extra });
}

/** Parses an SSE body into its data payloads ('[DONE]' kept as the string). */
export function parseSse(body: string): unknown[] {
  const out: unknown[] = [];
  for (const block of body.split('\n\n')) {
    if (block.trim() === '') continue;
    const data = block
      .split('\n')
      .filter((l) => l.startsWith('data: '))
      .map((l) => l.slice(6))
      .join('\n');
    out.push(data === '[DONE]' ? data : JSON.parse(data));
  }
  return out;
}

/** Waits until `cond` holds (polling), or fails after `ms`. */
export async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}
