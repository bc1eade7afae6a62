// Drives one benchmark: read the model's facts from /v1/models, generate the seeded workload, warm
// up, then send the requests on the seeded arrival schedule (capped at maxConcurrency in flight)
// and turn the per-request records into metrics. Aborting `signal` stops sending, interrupts the
// requests in flight and still returns everything measured so far.
import { arrivalOffsets } from './arrivals.ts';
import { sendRequest, type ClientOptions, type Endpoint, type RequestRecord } from './client.ts';
import { computeMetrics, meetsSlo, tpotMs, type Metrics, type Slo } from './metrics.ts';
import { Semaphore, sleepUntil } from './pacing.ts';
import { STREAM } from './rng.ts';
import { fetchServerInfo, type ServerInfo } from './server-info.ts';
import { runConversations, withHistory } from './conversations.ts';
import { DEFAULT_PHASES, generateRequests, turnsOf, type BenchRequest, type PhaseWorkload, type WorkloadName } from './workloads.ts';

export interface BenchmarkOptions {
  /** Server base URL, e.g. http://127.0.0.1:8000. */
  url: string;
  workload: WorkloadName;
  /** Phases of the shifting workload (default summarize, chat, summarize). */
  phases?: PhaseWorkload[];
  /** Requests per second; Infinity sends all at once. */
  rate: number;
  requests: number;
  slo?: Slo;
  /** Gamma shape of the inter-arrival times (1 = Poisson). Default 1. */
  burstiness?: number;
  /** Default 0. */
  seed?: number;
  /** Most requests in flight at once; unlimited when undefined. */
  maxConcurrency?: number;
  /** Model id; default: the first one /v1/models lists. */
  model?: string;
  /** Default 'completions'. */
  endpoint?: Endpoint;
  /** Sequential unmeasured requests sent first (own seeded prompts). Default 1. */
  warmup?: number;
  inputLenScale?: number;
  outputLenScale?: number;
  inputLen?: number;
  outputLen?: number;
  /** The prefix workload's shared system prompt length and number of distinct ones. */
  prefixLen?: number;
  prefixGroups?: number;
  /** The multiturn workload: turns per conversation (default 4) and the pause between an answer and the next turn (default 0). */
  turns?: number;
  thinkTimeMs?: number;
  /** Vocabulary size when /v1/models does not report one. Default 256. */
  vocabSize?: number;
  /** Lowest prompt token id (skips special tokens). Default 3. */
  minTokenId?: number;
  /** Context length to clip to when /v1/models does not report max_model_len. */
  maxModelLen?: number;
  /** Per-request limit. Default 300. */
  requestTimeoutS?: number;
  /** Default 0 (greedy); null leaves it out of the request. */
  temperature?: number | null;
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  /** Warnings and notes (default: none). */
  log?: (message: string) => void;
  /** Recorded verbatim as `settings` (the CLI passes every flag); default: these options. */
  settings?: Record<string, unknown>;
}

export interface Progress {
  total: number;
  sent: number;
  completed: number;
  failed: number;
  inFlight: number;
}

export interface BenchmarkPlan {
  options: BenchmarkOptions;
  model: string;
  endpoint: Endpoint;
  vocabSize: number;
  vocabSizeSource: 'server' | 'option';
  maxModelLen: number | null;
  maxModelLenSource: 'server' | 'option' | null;
  server: ServerInfo;
  requests: BenchRequest[];
}

/** One request in the output JSON (one line each). Times in ms unless named _s. */
export interface CompactRequest {
  i: number;
  kind: string;
  /** The shifting workload's phase. */
  phase?: number;
  /** The multiturn workload's conversation and turn. */
  conversation?: number;
  turn?: number;
  ok: boolean;
  good: boolean;
  error?: string;
  /** Scheduled and actual send time, seconds from the first send. */
  scheduled_s: number;
  start_s: number;
  ttft_ms: number | null;
  tpot_ms: number | null;
  e2el_ms: number | null;
  prompt_tokens: number;
  /** usage.prompt_tokens_details.cached_tokens (0 when the server does not report it). */
  cached_tokens: number;
  output_tokens: number;
  target_output_tokens: number;
  itl_ms: number[];
}

export interface BenchmarkResult extends Metrics {
  date: string;
  /** Requests per second, or "inf". */
  rate: number | 'inf';
  burstiness: number;
  max_concurrency: number | null;
  model: string;
  endpoint: Endpoint;
  workload: WorkloadName;
  slo: { ttft_ms: number | null; tpot_ms: number | null; e2el_ms: number | null };
  /** True when Ctrl-C (the abort signal) cut the run short. */
  interrupted: boolean;
  /** Requests never sent because of the interruption. */
  not_sent: number;
  peak_in_flight: number;
  server: { vocab_size: number; vocab_size_source: string; max_model_len: number | null; max_model_len_source: string | null; models_error?: string };
  clipped_requests: number;
  /** Cached prompt tokens / prompt tokens of the completed requests (usage.prompt_tokens_details). */
  prefix_cache_hit_rate: number;
  settings: Record<string, unknown>;
  /** The shifting workload: each phase's own metrics (requests by index, as scheduled). */
  phases?: PhaseResult[];
  /** The multiturn workload: each turn number's own metrics (how TTFT and cache hits change as a conversation grows). */
  turns?: TurnResult[];
  requests: CompactRequest[];
}

export interface PhaseResult {
  phase: number;
  workload: PhaseWorkload;
  requests: number;
  completed: number;
  failed: number;
  good: number;
  slo_attainment: number;
  goodput: number;
  duration_s: number;
  ttft_ms_p99: number | null;
  tpot_ms_p99: number | null;
}

export interface TurnResult {
  turn: number;
  requests: number;
  completed: number;
  good: number;
  slo_attainment: number;
  prompt_tokens_mean: number | null;
  ttft_ms_p50: number | null;
  ttft_ms_p99: number | null;
  /** Cached prompt tokens / prompt tokens of this turn's completed requests. */
  prefix_cache_hit_rate: number;
}

export function rateToJson(rate: number): number | 'inf' {
  return Number.isFinite(rate) ? rate : 'inf';
}

const r3 = (x: number) => Math.round(x * 1000) / 1000;
const r3n = (x: number | undefined) => (x === undefined ? null : r3(x));

/** The options as plain JSON (functions and the signal dropped, Infinity as "inf"). */
export function optionsAsSettings(opts: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(opts)) {
    if (typeof v === 'function' || v instanceof AbortSignal || v === undefined) continue;
    const fix = (x: unknown) => (typeof x === 'number' && !Number.isFinite(x) ? 'inf' : x);
    out[k] = Array.isArray(v) ? v.map(fix) : fix(v);
  }
  return out;
}

/** Resolves the model facts and generates the workload. Throws when no model can be determined. */
export async function prepareBenchmark(options: BenchmarkOptions): Promise<BenchmarkPlan> {
  const log = options.log ?? (() => {});
  if (!(Number.isInteger(options.requests) && options.requests >= 1)) throw new RangeError(`requests must be an integer >= 1 (got ${options.requests})`);
  if (options.maxConcurrency !== undefined && !(Number.isInteger(options.maxConcurrency) && options.maxConcurrency >= 1)) {
    throw new RangeError(`max concurrency must be an integer >= 1 (got ${options.maxConcurrency})`);
  }
  let parsed: URL;
  try {
    parsed = new URL(options.url);
  } catch {
    throw new Error(`invalid url '${options.url}'`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error(`url must be http(s): '${options.url}'`);
  const server = await fetchServerInfo(options.url, { model: options.model, signal: options.signal });
  if (server.error) log(`note: ${server.error}; using --model/--vocab-size/--max-model-len`);
  const model = options.model ?? server.model;
  if (model === undefined) throw new Error(`no model: pass --model (${server.error ?? '/v1/models gave no id'})`);
  if (options.model !== undefined && server.model !== undefined && server.model !== options.model) {
    log(`note: /v1/models does not list '${options.model}'; using data[0] (${server.model}) for vocab size and context length`);
  }
  const vocabSize = server.vocabSize ?? options.vocabSize ?? 256;
  const maxModelLen = server.maxModelLen ?? options.maxModelLen ?? null;
  const endpoint = options.endpoint ?? 'completions';
  const requests = workloadRequests(options, { vocabSize, maxModelLen, endpoint });

  const clipped = requests.filter((r) => r.clipped).length;
  if (clipped > 0) log(`note: ${clipped}/${requests.length} requests clipped to max_model_len ${maxModelLen}`);
  return {
    options,
    model,
    endpoint,
    vocabSize,
    vocabSizeSource: server.vocabSize !== undefined ? 'server' : 'option',
    maxModelLen,
    maxModelLenSource: server.maxModelLen !== undefined ? 'server' : options.maxModelLen !== undefined ? 'option' : null,
    server,
    requests,
  };
}

/**
 * The seeded requests of a run. `draw` picks others from the same options: contentSeed (the
 * prompts' token content, default the seed), or n requests from another stream (the warmup's).
 */
export function workloadRequests(
  options: BenchmarkOptions, ctx: { vocabSize: number; maxModelLen: number | null; endpoint: 'completions' | 'chat' },
  draw: { contentSeed?: number; n?: number; stream?: number } = {},
): BenchRequest[] {
  return generateRequests({
    workload: options.workload,
    // The warmup's few requests come from one mix (its own stream), not the run's phases.
    phases: draw.stream === undefined ? options.phases : undefined,
    n: draw.n ?? options.requests,
    seed: options.seed ?? 0,
    stream: draw.stream,
    contentSeed: draw.contentSeed,
    inputLenScale: options.inputLenScale,
    outputLenScale: options.outputLenScale,
    inputLen: options.inputLen,
    outputLen: options.outputLen,
    prefixLen: options.prefixLen,
    prefixGroups: options.prefixGroups,
    turns: options.turns,
    maxModelLen: ctx.maxModelLen ?? undefined,
    endpoint: ctx.endpoint,
    vocabSize: ctx.vocabSize,
    minTokenId: options.minTokenId ?? 3,
  });
}

function clientOptions(plan: BenchmarkPlan, signal: AbortSignal | undefined): ClientOptions {
  const o = plan.options;
  return {
    baseUrl: o.url,
    endpoint: plan.endpoint,
    model: plan.model,
    timeoutMs: (o.requestTimeoutS ?? 300) * 1000,
    signal,
    temperature: o.temperature === null ? undefined : (o.temperature ?? 0),
  };
}

/** Sends `warmup` requests one after another (not measured). Throws only if the server is unreachable. */
export async function runWarmup(plan: BenchmarkPlan): Promise<void> {
  const o = plan.options;
  const n = o.warmup ?? 1;
  if (n <= 0) return;
  const log = o.log ?? (() => {});
  const reqs = workloadRequests(o, plan, { n, stream: STREAM.warmup });

  const copts = clientOptions(plan, o.signal);
  let unreachable = 0;
  let lastError = '';
  for (const r of reqs) {
    if (o.signal?.aborted) return;
    // A multiturn chat turn is sent on its own here (no history): the warmup only warms the server.
    const rec = await sendRequest(withHistory(r, [], plan.endpoint), copts);
    if (!rec.ok && !rec.interrupted) {
      lastError = rec.error ?? 'unknown error';
      log(`warning: warmup request ${r.index} failed: ${lastError}`);
      if (rec.httpStatus === undefined) unreachable++;
    }
  }
  if (unreachable === reqs.length) throw new Error(`warmup: server unreachable at ${o.url}: ${lastError}`);
}

export interface LoadOutcome {
  records: RequestRecord[];
  /** Scheduled send offsets (s) of the requests in `records`, by index. */
  offsets: number[];
  notSent: number;
  peakInFlight: number;
}

/** Sends the plan's requests at `rate` and waits for all of them (or the abort). */
export async function runLoad(plan: BenchmarkPlan, rate: number): Promise<LoadOutcome> {
  const o = plan.options;
  const signal = o.signal;
  const n = plan.requests.length;
  const sem = o.maxConcurrency !== undefined ? new Semaphore(o.maxConcurrency) : undefined;
  const multiturn = o.workload === 'multiturn';
  const copts = { ...clientOptions(plan, signal), collectText: multiturn && plan.endpoint === 'chat' };
  const progress: Progress = { total: n, sent: 0, completed: 0, failed: 0, inFlight: 0 };
  let peak = 0;
  const report = () => o.onProgress?.({ ...progress });
  report();
  // Paces one request through --max-concurrency (unless the caller already holds its place) and
  // counts it; undefined when aborted before sending.
  const send = async (req: BenchRequest, placeHeld = false): Promise<RequestRecord | undefined> => {
    if (sem && !placeHeld && !(await sem.acquire(signal))) return undefined;
    if (signal?.aborted) {
      sem?.release();
      return undefined;
    }
    progress.sent++;
    progress.inFlight++;
    peak = Math.max(peak, progress.inFlight);
    const rec = await sendRequest(req, copts);
    progress.inFlight--;
    if (rec.ok) progress.completed++;
    else if (!rec.interrupted) progress.failed++;
    sem?.release();
    report();
    return rec;
  };
  const t0 = performance.now();
  if (multiturn) {
    // Conversations start at rate / turns, so that a server answering at once sees `rate` requests/s.
    const turns = turnsOf(o);
    const conversations = new Set(plan.requests.map((r) => r.conversation)).size;
    const starts = arrivalOffsets(conversations, { rate: rate / turns, burstiness: o.burstiness ?? 1, seed: o.seed ?? 0 });
    const out = await runConversations(plan.requests, { t0, starts, thinkTimeMs: o.thinkTimeMs, endpoint: plan.endpoint, signal }, (req) => send(req));
    // Cut-off turns were never sent but count as failed, as the records say.
    progress.failed += out.cutOff;
    report();
    return { records: out.records, offsets: out.offsets, notSent: out.notSent, peakInFlight: peak };
  }
  const offsets = arrivalOffsets(n, { rate, burstiness: o.burstiness ?? 1, seed: o.seed ?? 0 });
  const records: RequestRecord[] = [];
  const pending: Promise<void>[] = [];
  for (let i = 0; i < n; i++) {
    if (signal?.aborted) break;
    await sleepUntil(t0 + offsets[i] * 1000, signal);
    if (signal?.aborted) break;
    // Wait for a place before the next arrival is due, so --max-concurrency holds back the schedule.
    if (sem && !(await sem.acquire(signal))) break;
    pending.push(send(plan.requests[i], true).then((rec) => void (rec && records.push(rec))));
  }
  await Promise.all(pending);
  records.sort((a, b) => a.index - b.index);
  return { records, offsets, notSent: n - records.length, peakInFlight: peak };
}

/** The result object (as written to JSON) of one load run. */
export function buildResult(plan: BenchmarkPlan, rate: number, outcome: LoadOutcome): BenchmarkResult {
  const o = plan.options;
  const slo = o.slo ?? {};
  const metrics = computeMetrics(outcome.records, slo);
  const t0 = outcome.records.reduce((m, r) => Math.min(m, r.startMs), Infinity);
  const requests: CompactRequest[] = outcome.records.map((r) => {
    const c: CompactRequest = {
      i: r.index,
      kind: r.kind,
      ok: r.ok,
      good: meetsSlo(r, slo),
      scheduled_s: r3(outcome.offsets[r.index] ?? 0),
      start_s: r3((r.startMs - t0) / 1000),
      ttft_ms: r3n(r.ttftMs),
      tpot_ms: r3n(tpotMs(r)),
      e2el_ms: r3n(r.e2elMs),
      prompt_tokens: r.promptTokens,
      cached_tokens: r.cachedTokens ?? 0,
      output_tokens: r.outputTokens,
      target_output_tokens: r.targetOutputTokens,
      itl_ms: r.itlMs.map(r3),
    };
    const req = plan.requests[r.index];
    if (req?.phase !== undefined) c.phase = req.phase;
    if (req?.conversation !== undefined) { c.conversation = req.conversation; c.turn = req.turn; }
    if (r.error !== undefined) c.error = r.error;
    return c;
  });
  let phases: PhaseResult[] | undefined;
  if (o.workload === 'shifting') {
    const names = o.phases ?? DEFAULT_PHASES;
    phases = names.map((workload, phase) => {
      const recs = outcome.records.filter((r) => plan.requests[r.index]?.phase === phase);
      const m = computeMetrics(recs, slo);
      return {
        phase, workload, requests: recs.length, completed: m.completed, failed: m.failed, good: m.good,
        slo_attainment: m.slo_attainment, goodput: m.goodput, duration_s: m.duration_s,
        ttft_ms_p99: m.ttft_ms.p99, tpot_ms_p99: m.tpot_ms.p99,
      };
    });
  }
  let turns: TurnResult[] | undefined;
  if (o.workload === 'multiturn') {
    const count = Math.max(0, ...plan.requests.map((r) => (r.turn ?? 0) + 1));
    turns = Array.from({ length: count }, (_, turn) => {
      const recs = outcome.records.filter((r) => plan.requests[r.index]?.turn === turn);
      const m = computeMetrics(recs, slo);
      const ok = recs.filter((r) => r.ok);
      return {
        turn, requests: recs.length, completed: m.completed, good: m.good, slo_attainment: m.slo_attainment,
        prompt_tokens_mean: ok.length ? r3(ok.reduce((s, r) => s + r.promptTokens, 0) / ok.length) : null,
        ttft_ms_p50: m.ttft_ms.p50, ttft_ms_p99: m.ttft_ms.p99,
        prefix_cache_hit_rate: promptCacheHitRate(recs),
      };
    });
  }
  return {
    date: new Date().toISOString(),
    rate: rateToJson(rate),
    burstiness: o.burstiness ?? 1,
    max_concurrency: o.maxConcurrency ?? null,
    model: plan.model,
    endpoint: plan.endpoint,
    workload: o.workload,
    slo: { ttft_ms: slo.ttftMs ?? null, tpot_ms: slo.tpotMs ?? null, e2el_ms: slo.e2elMs ?? null },
    interrupted: o.signal?.aborted ?? false,
    not_sent: outcome.notSent,
    peak_in_flight: outcome.peakInFlight,
    ...metrics,
    server: {
      vocab_size: plan.vocabSize,
      vocab_size_source: plan.vocabSizeSource,
      max_model_len: plan.maxModelLen,
      max_model_len_source: plan.maxModelLenSource,
      ...(plan.server.error ? { models_error: plan.server.error } : {}),
    },
    clipped_requests: plan.requests.filter((r) => r.clipped).length,
    prefix_cache_hit_rate: promptCacheHitRate(outcome.records),
    settings: o.settings ?? optionsAsSettings(o),
    ...(phases ? { phases } : {}),
    ...(turns ? { turns } : {}),
    requests,
  };
}

/** Cached prompt tokens / prompt tokens over the completed requests (0 when none). */
export function promptCacheHitRate(records: readonly RequestRecord[]): number {
  let prompt = 0;
  let cached = 0;
  for (const r of records) if (r.ok) { prompt += r.promptTokens; cached += r.cachedTokens ?? 0; }
  return prompt > 0 ? Math.round((cached / prompt) * 10000) / 10000 : 0;
}

/** prepare + warmup + one load run at options.rate. */
export async function runBenchmark(options: BenchmarkOptions): Promise<BenchmarkResult> {
  const plan = await prepareBenchmark(options);
  await runWarmup(plan);
  return buildResult(plan, options.rate, await runLoad(plan, options.rate));
}
