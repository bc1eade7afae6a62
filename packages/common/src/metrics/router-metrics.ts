// Router-side Prometheus metrics. Names follow vLLM's (`vllm:time_to_first_token_seconds` becomes
// `pdserve_time_to_first_token_seconds`, and so on) so that readers who know vLLM's dashboards find
// their way; units are in the names and counters end in `_total`. Default process metrics keep
// their standard `process_*` / `nodejs_*` names so stock Node.js dashboards work. docs/metrics.md
// lists every metric.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { LATENCY_BUCKETS_SECONDS, TOKEN_COUNT_BUCKETS } from './buckets.ts';

export const FINISHED_REASONS = ['stop', 'length', 'abort'] as const;
export type FinishedReason = (typeof FINISHED_REASONS)[number];

export const TTFT_PHASES = ['queue', 'prefill', 'kv_transfer', 'first_decode'] as const;
export type TtftPhase = (typeof TTFT_PHASES)[number];

export const WORKER_ROLE_LABELS = ['prefill', 'decode', 'unified'] as const;
export type WorkerRoleLabel = (typeof WORKER_ROLE_LABELS)[number];

export const WORKER_STATE_LABELS = ['healthy', 'draining', 'stale'] as const;
export type WorkerStateLabel = (typeof WORKER_STATE_LABELS)[number];

export const SLO_KINDS = ['ttft', 'tpot', 'all'] as const;
export type SloKind = (typeof SLO_KINDS)[number];

/** Latency targets a request must meet to count as "met" in `pdserve_slo_requests_total`. */
export interface SloTargets {
  /** Time to first token, seconds. */
  ttftSeconds: number;
  /** Mean time per output token after the first, seconds. */
  tpotSeconds: number;
}

export const DEFAULT_SLO_TARGETS: Readonly<SloTargets> = { ttftSeconds: 2, tpotSeconds: 0.2 };

export interface RouterMetricsOptions {
  /** Register the default `process_*` / `nodejs_*` metrics on the registry (default true). */
  collectDefault?: boolean;
  /** SLO targets used by `observeRequest` / `observeError` (default {@link DEFAULT_SLO_TARGETS}). */
  slo?: Partial<SloTargets>;
}

/** Everything the router knows about one request once it is over (successfully or aborted). */
export interface RequestObservation {
  finishedReason: FinishedReason;
  promptTokens: number;
  generationTokens: number;
  /** Arrival to last byte, seconds. */
  e2eSeconds: number;
  /** Arrival to dispatch (time spent waiting for admission / a worker), seconds. */
  queueSeconds?: number;
  /** Arrival to first output token; leave undefined when no token was produced. */
  ttftSeconds?: number;
  /** Per-token gaps the router saw while streaming; each is one ITL observation. */
  interTokenSeconds?: readonly number[];
  /** Where the time to first token went; phases that did not happen (e.g. kv_transfer on a unified worker) are left out. */
  ttftBreakdown?: Partial<Record<TtftPhase, number>>;
}

export interface SloOutcome {
  ttft: boolean;
  /** undefined when not applicable (fewer than two output tokens). */
  tpot: boolean | undefined;
  all: boolean;
}

export interface RouterMetrics {
  registry: Registry;
  slo: Readonly<SloTargets>;

  timeToFirstToken: Histogram<string>;
  interTokenLatency: Histogram<string>;
  timePerOutputToken: Histogram<string>;
  e2eRequestLatency: Histogram<string>;
  requestQueueTime: Histogram<string>;
  ttftBreakdown: Histogram<'phase'>;

  promptTokens: Counter<string>;
  generationTokens: Counter<string>;
  requestSuccess: Counter<'finished_reason'>;
  requestErrors: Counter<'code'>;
  admissionRejected: Counter<'reason'>;
  prefillPlacement: Counter<'where' | 'reason'>;
  ttftEstimateRatio: Histogram<'where'>;
  tpotEstimateRatio: Histogram<'where'>;
  prefixRouting: Counter<'result'>;
  prefixRoutingHitTokens: Histogram<string>;
  promptCachedTokens: Counter<string>;

  requestPromptTokens: Histogram<string>;
  requestGenerationTokens: Histogram<string>;

  numRequestsRunning: Gauge<string>;
  numRequestsWaiting: Gauge<string>;
  workers: Gauge<'role' | 'state'>;

  sloRequests: Counter<'slo' | 'outcome'>;

  /**
   * Records a finished request: success counter, token counters and histograms, e2e / queue /
   * TTFT / TPOT / ITL / TTFT-breakdown histograms and the SLO counters. Returns the SLO outcome.
   */
  observeRequest(obs: RequestObservation): SloOutcome;
  /**
   * Records a failed request under `pdserve_request_errors_total{code}`. Unless `sloMissed` says
   * otherwise, server-side failures (anything but a 4xx other than 408/429) also count as a miss
   * for every SLO, so attainment reflects goodput.
   */
  observeError(code: string | number, opts?: { sloMissed?: boolean }): void;
  /** Sets `pdserve_workers{role,state}` from the current registry view; absent combinations become 0. */
  setWorkerCounts(workers: Iterable<{ role: string; state: WorkerStateLabel }>): void;
}

/** Time per output token the way vLLM defines it: decode time over tokens after the first. */
export function timePerOutputToken(e2eSeconds: number, ttftSeconds: number, generationTokens: number): number | undefined {
  if (generationTokens < 2) return undefined;
  return Math.max(0, e2eSeconds - ttftSeconds) / (generationTokens - 1);
}

function isClientError(code: string | number): boolean {
  const n = typeof code === 'number' ? code : Number(code);
  return Number.isInteger(n) && n >= 400 && n < 500 && n !== 408 && n !== 429;
}

export function createRouterMetrics(registry: Registry = new Registry(), options: RouterMetricsOptions = {}): RouterMetrics {
  const registers = [registry];
  const slo: SloTargets = { ...DEFAULT_SLO_TARGETS, ...options.slo };
  if (options.collectDefault ?? true) collectDefaultMetrics({ register: registry });

  const latency = (name: string, help: string) =>
    new Histogram({ name, help, buckets: [...LATENCY_BUCKETS_SECONDS], registers });

  const timeToFirstToken = latency('pdserve_time_to_first_token_seconds', 'Time from request arrival to the first output token, seconds.');
  const interTokenLatency = latency('pdserve_inter_token_latency_seconds', 'Gap between consecutive output tokens as streamed by the router, seconds.');
  const timePerOutputToken_ = latency(
    'pdserve_request_time_per_output_token_seconds',
    'Per request: (e2e latency - TTFT) / (generation tokens - 1), seconds.',
  );
  const e2eRequestLatency = latency('pdserve_e2e_request_latency_seconds', 'Request arrival to completion, seconds.');
  const requestQueueTime = latency('pdserve_request_queue_time_seconds', 'Time a request waited in the router before dispatch, seconds.');
  const ttftBreakdown = new Histogram({
    name: 'pdserve_ttft_breakdown_seconds',
    help: 'Time to first token split by phase (queue|prefill|kv_transfer|first_decode), seconds.',
    labelNames: ['phase'] as const,
    buckets: [...LATENCY_BUCKETS_SECONDS],
    registers,
  });

  const promptTokens = new Counter({ name: 'pdserve_prompt_tokens_total', help: 'Prompt tokens of finished requests.', registers });
  const generationTokens = new Counter({ name: 'pdserve_generation_tokens_total', help: 'Generated tokens of finished requests.', registers });
  const requestSuccess = new Counter({
    name: 'pdserve_request_success_total',
    help: 'Finished requests by finish reason (stop|length|abort).',
    labelNames: ['finished_reason'] as const,
    registers,
  });
  const requestErrors = new Counter({
    name: 'pdserve_request_errors_total',
    help: 'Failed requests by HTTP status or error code.',
    labelNames: ['code'] as const,
    registers,
  });
  const admissionRejected = new Counter({
    name: 'pdserve_admission_rejected_total',
    help: 'Requests refused by admission control, by reason.',
    labelNames: ['reason'] as const,
    registers,
  });

  const prefillPlacement = new Counter({
    name: 'pdserve_prefill_placement_total',
    help: 'Admitted requests by where their prompt was prefilled (where=remote|local) and why (reason).',
    labelNames: ['where', 'reason'] as const,
    registers,
  });

  // Measured over estimated latency of admitted requests (estimate-calibration.ts corrects by it).
  const estimateRatio = (name: string, what: string) => new Histogram({
    name, help: `Measured ${what} over the estimate placement made for it (1 = exact), per admitted request with an estimate, by where its prompt was prefilled.`,
    labelNames: ['where'] as const, buckets: [0.25, 0.5, 0.67, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 4], registers,
  });
  const ttftEstimateRatio = estimateRatio('pdserve_ttft_estimate_ratio', 'time to first token');
  const tpotEstimateRatio = estimateRatio('pdserve_tpot_estimate_ratio', 'time per output token (requests of two or more output tokens)');

  const prefixRouting = new Counter({
    name: 'pdserve_prefix_routing_total',
    help: 'Routing decisions by whether the chosen prefilling worker was expected to hold a prefix of the prompt (result=hit|miss).',
    labelNames: ['result'] as const,
    registers,
  });
  const prefixRoutingHitTokens = new Histogram({
    name: 'pdserve_prefix_routing_hit_tokens',
    help: 'Prompt tokens the chosen prefilling worker was expected to serve from its prefix cache, per routed request.',
    buckets: [0, ...TOKEN_COUNT_BUCKETS],
    registers,
  });
  const promptCachedTokens = new Counter({
    name: 'pdserve_prompt_cached_tokens_total',
    help: "Prompt tokens of finished requests that workers served from their prefix caches (usage.prompt_tokens_details.cached_tokens).",
    registers,
  });
  for (const result of ['hit', 'miss']) prefixRouting.inc({ result }, 0);

  const requestPromptTokens = new Histogram({
    name: 'pdserve_request_prompt_tokens',
    help: 'Prompt length of finished requests, tokens.',
    buckets: [...TOKEN_COUNT_BUCKETS],
    registers,
  });
  const requestGenerationTokens = new Histogram({
    name: 'pdserve_request_generation_tokens',
    help: 'Generated tokens of finished requests.',
    buckets: [...TOKEN_COUNT_BUCKETS],
    registers,
  });

  const numRequestsRunning = new Gauge({ name: 'pdserve_num_requests_running', help: 'Requests dispatched to workers and not yet finished.', registers });
  const numRequestsWaiting = new Gauge({ name: 'pdserve_num_requests_waiting', help: 'Requests admitted but waiting in the router for a worker.', registers });
  const workers = new Gauge({
    name: 'pdserve_workers',
    help: 'Registered workers by role and state (healthy|draining|stale).',
    labelNames: ['role', 'state'] as const,
    registers,
  });

  const sloRequests = new Counter({
    name: 'pdserve_slo_requests_total',
    help: 'Requests judged against the SLO targets (slo=ttft|tpot|all, outcome=met|missed).',
    labelNames: ['slo', 'outcome'] as const,
    registers,
  });

  // Pre-create the known label combinations so every series exists (at 0) from the first scrape;
  // rate() and dashboards then return data before the first occurrence.
  for (const finished_reason of FINISHED_REASONS) requestSuccess.inc({ finished_reason }, 0);
  for (const phase of TTFT_PHASES) ttftBreakdown.zero({ phase });
  for (const s of SLO_KINDS) for (const outcome of ['met', 'missed']) sloRequests.inc({ slo: s, outcome }, 0);
  for (const role of WORKER_ROLE_LABELS) for (const state of WORKER_STATE_LABELS) workers.set({ role, state }, 0);

  const workerKeys = new Set<string>();
  for (const role of WORKER_ROLE_LABELS) for (const state of WORKER_STATE_LABELS) workerKeys.add(`${role}\u0000${state}`);

  const recordSlo = (s: SloKind, met: boolean) => sloRequests.inc({ slo: s, outcome: met ? 'met' : 'missed' });

  return {
    registry,
    slo,
    timeToFirstToken,
    interTokenLatency,
    timePerOutputToken: timePerOutputToken_,
    e2eRequestLatency,
    requestQueueTime,
    ttftBreakdown,
    promptTokens,
    generationTokens,
    requestSuccess,
    requestErrors,
    admissionRejected,
    prefillPlacement,
    ttftEstimateRatio,
    tpotEstimateRatio,
    prefixRouting,
    prefixRoutingHitTokens,
    promptCachedTokens,
    requestPromptTokens,
    requestGenerationTokens,
    numRequestsRunning,
    numRequestsWaiting,
    workers,
    sloRequests,

    observeRequest(obs) {
      requestSuccess.inc({ finished_reason: obs.finishedReason });
      promptTokens.inc(obs.promptTokens);
      generationTokens.inc(obs.generationTokens);
      requestPromptTokens.observe(obs.promptTokens);
      requestGenerationTokens.observe(obs.generationTokens);
      e2eRequestLatency.observe(obs.e2eSeconds);
      if (obs.queueSeconds !== undefined) requestQueueTime.observe(obs.queueSeconds);
      let tpot: number | undefined;
      if (obs.ttftSeconds !== undefined) {
        timeToFirstToken.observe(obs.ttftSeconds);
        tpot = timePerOutputToken(obs.e2eSeconds, obs.ttftSeconds, obs.generationTokens);
        if (tpot !== undefined) timePerOutputToken_.observe(tpot);
      }
      for (const gap of obs.interTokenSeconds ?? []) interTokenLatency.observe(gap);
      if (obs.ttftBreakdown) {
        for (const phase of TTFT_PHASES) {
          const v = obs.ttftBreakdown[phase];
          if (v !== undefined) ttftBreakdown.observe({ phase }, v);
        }
      }
      const ttftMet = obs.ttftSeconds !== undefined && obs.ttftSeconds <= slo.ttftSeconds;
      const tpotMet = tpot === undefined ? undefined : tpot <= slo.tpotSeconds;
      const all = ttftMet && tpotMet !== false;
      recordSlo('ttft', ttftMet);
      if (tpotMet !== undefined) recordSlo('tpot', tpotMet);
      recordSlo('all', all);
      return { ttft: ttftMet, tpot: tpotMet, all };
    },

    observeError(code, opts = {}) {
      requestErrors.inc({ code: String(code) });
      if (opts.sloMissed ?? !isClientError(code)) {
        for (const s of SLO_KINDS) recordSlo(s, false);
      }
    },

    setWorkerCounts(list) {
      const counts = new Map<string, number>();
      const key = (role: string, state: string) => `${role}\u0000${state}`;
      // Every combination ever reported goes back to 0 unless seen again, so a role that
      // disappears does not keep its last count.
      for (const k of workerKeys) counts.set(k, 0);
      for (const w of list) counts.set(key(w.role, w.state), (counts.get(key(w.role, w.state)) ?? 0) + 1);
      for (const [k, n] of counts) {
        const [role, state] = k.split('\u0000') as [string, string];
        workers.set({ role, state }, n);
        workerKeys.add(k);
      }
    },
  };
}
