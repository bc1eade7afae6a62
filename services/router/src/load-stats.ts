// The rolling request statistics a router publishes for the planner (`{prefix}:router_stats:{id}`,
// a small hash with a TTL, once a second): arrivals per second, mean prompt and output tokens,
// p90 TTFT and TPOT, SLO attainment and refusals over the last windowMs. It is a RouterObserver,
// so it sees each request at the same hooks as the Prometheus metrics; its memory is bounded (a
// ring of the last maxSamples requests) and publishing is one MULTI per second.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import {
  closeRedisClient, clusterKeys, createRedisClient, errorMessage, publishRouterStats, type LogLike, type RedisClient, type RouterStats,
} from '@pdserve/common';
import type { RouterObserver } from './observer.ts';

interface Sample {
  at: number;
  promptTokens: number;
  outputTokens: number;
  ttftMs?: number;
  tpotMs?: number;
}

export interface LoadStatsOptions {
  windowMs?: number;
  /** The short window of arrival_rate_recent (default 10 s). */
  recentWindowMs?: number;
  maxSamples?: number;
  slo?: { ttftMs?: number; tpotMs?: number };
  now?: () => number;
}

const p90 = (xs: number[]): number | undefined => {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.9))];
};

export class LoadStats {
  readonly windowMs: number;
  readonly recentWindowMs: number;
  readonly #max: number;
  readonly #now: () => number;
  readonly #slo: { ttftMs?: number; tpotMs?: number };
  #arrivals: number[] = [];
  #finished: Sample[] = [];
  #rejected: number[] = [];
  readonly #startedAt: number;

  constructor(o: LoadStatsOptions = {}) {
    this.windowMs = o.windowMs ?? 30_000;
    this.recentWindowMs = Math.min(this.windowMs, o.recentWindowMs ?? 10_000);
    this.#max = o.maxSamples ?? 4096;
    this.#now = o.now ?? Date.now;
    this.#slo = o.slo ?? {};
    this.#startedAt = this.#now();
  }

  arrived(): void {
    this.#push(this.#arrivals, this.#now());
  }

  rejected(): void {
    this.#push(this.#rejected, this.#now());
  }

  finished(s: Omit<Sample, 'at'>): void {
    this.#push(this.#finished, { ...s, at: this.#now() });
  }

  #push<T>(ring: T[], v: T): void {
    ring.push(v);
    if (ring.length > this.#max) ring.splice(0, ring.length - this.#max);
  }

  /** The window's numbers; the window is shorter while the router is younger than windowMs. */
  snapshot(routerId: string): RouterStats {
    const now = this.#now();
    const since = now - this.windowMs;
    this.#arrivals = this.#arrivals.filter((t) => t >= since);
    this.#rejected = this.#rejected.filter((t) => t >= since);
    this.#finished = this.#finished.filter((s) => s.at >= since);
    const windowS = Math.max(1, Math.min(this.windowMs, now - this.#startedAt)) / 1000;
    const recentS = Math.max(1, Math.min(this.recentWindowMs, now - this.#startedAt)) / 1000;
    const recentSince = now - recentS * 1000;
    let recent = 0;
    for (let i = this.#arrivals.length - 1; i >= 0 && this.#arrivals[i]! >= recentSince; i--) recent++;
    const f = this.#finished;
    const mean = (g: (s: Sample) => number) => (f.length ? f.reduce((n, s) => n + g(s), 0) / f.length : 0);
    const { ttftMs, tpotMs } = this.#slo;
    const met = f.filter((s) => (ttftMs === undefined || (s.ttftMs !== undefined && s.ttftMs <= ttftMs)) && (tpotMs === undefined || s.tpotMs === undefined || s.tpotMs <= tpotMs)).length;
    const stats: RouterStats = {
      router_id: routerId,
      window_s: windowS,
      arrivals: this.#arrivals.length,
      arrival_rate: this.#arrivals.length / windowS,
      arrival_rate_recent: recent / recentS,
      finished: f.length,
      prompt_tokens_mean: mean((s) => s.promptTokens),
      output_tokens_mean: mean((s) => s.outputTokens),
      slo_attainment: f.length ? met / f.length : 1,
      rejected: this.#rejected.length,
      updated_ms: now,
    };
    const ttft = p90(f.flatMap((s) => (s.ttftMs === undefined ? [] : [s.ttftMs])));
    const tpot = p90(f.flatMap((s) => (s.tpotMs === undefined ? [] : [s.tpotMs])));
    if (ttft !== undefined) stats.ttft_p90_ms = ttft;
    if (tpot !== undefined) stats.tpot_p90_ms = tpot;
    if (ttftMs !== undefined) stats.slo_ttft_ms = ttftMs;
    if (tpotMs !== undefined) stats.slo_tpot_ms = tpotMs;
    return stats;
  }

  observer(): RouterObserver {
    return {
      onRequestStart: () => this.arrived(),
      onRequestEnd: (info) => {
        if (info.finishReason === 'abort') return;
        this.finished({ promptTokens: info.promptTokens, outputTokens: info.completionTokens, ttftMs: info.ttftMs, tpotMs: info.tpotMs });
      },
      onAdmissionRejected: () => this.rejected(),
    };
  }
}

/** Publishes a LoadStats window to Redis every periodMs; Redis errors are logged and skipped. */
export class LoadStatsPublisher {
  readonly routerId = `router-${hostname()}-${process.pid}-${randomBytes(2).toString('hex')}`;
  #redis: RedisClient;
  #timer: NodeJS.Timeout;
  #failing = false;

  constructor(stats: LoadStats, o: { redisUrl: string; prefix?: string; periodMs?: number; logger: LogLike }) {
    const keys = clusterKeys(o.prefix);
    const period = o.periodMs ?? 1000;
    this.#redis = createRedisClient({ url: o.redisUrl, name: `pdserve-${this.routerId}-stats`, logger: o.logger });
    this.#timer = setInterval(() => {
      if (this.#redis.status !== 'ready') return;
      publishRouterStats(this.#redis, keys, stats.snapshot(this.routerId), period * 5).then(
        () => { this.#failing = false; },
        (err: unknown) => {
          if (!this.#failing) o.logger.warn({ err: errorMessage(err) }, 'publishing router statistics failed');
          this.#failing = true;
        },
      );
    }, period);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await closeRedisClient(this.#redis);
  }
}

/** Calls every observer's hook in turn (each is already guarded by the app's SafeObserver). */
export function combineObservers(...observers: RouterObserver[]): RouterObserver {
  const hooks = ['onRequestStart', 'onFirstToken', 'onToken', 'onRequestEnd', 'onError', 'onAdmissionRejected'] as const;
  const out: RouterObserver = {};
  for (const h of hooks) {
    const fns = observers.map((o) => o[h]).filter((f) => f !== undefined) as Array<(...a: unknown[]) => void>;
    if (fns.length === 0) continue;
    (out as Record<string, unknown>)[h] = (...args: unknown[]) => {
      let failure: unknown;
      for (const f of fns) {
        try { f(...args); } catch (err) { failure = err; }
      }
      if (failure !== undefined) throw failure;
    };
  }
  return out;
}
