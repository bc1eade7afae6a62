// Benchmark metrics, defined as in `vllm bench serve`:
//   TPOT      = (e2el - ttft) / (output_tokens - 1), per completed request with > 1 output token
//   ITL       = every gap between consecutive text-carrying chunks, pooled over completed requests
//   good      = completed and meets every SLO given: ttft <= T, tpot <= P, e2el <= E
//               (a 1-token request has no TPOT and meets the TPOT SLO)
//   duration  = first request sent -> last request finished (ok or failed)
//   goodput   = good / duration (req/s); slo_attainment = good / completed
// Percentiles interpolate linearly between order statistics (numpy's default), std is the
// population standard deviation (numpy's default). Statistics of an empty set are null.
import type { RequestRecord } from './client.ts';

export interface Stats {
  mean: number | null;
  std: number | null;
  min: number | null;
  p50: number | null;
  p90: number | null;
  p99: number | null;
  max: number | null;
  count: number;
}

export interface Slo {
  ttftMs?: number;
  tpotMs?: number;
  e2elMs?: number;
}

/** p in [0, 100] of already sorted values, linear interpolation (numpy 'linear'). */
export function percentileSorted(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) throw new RangeError('percentile of an empty set');
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

export function percentile(values: readonly number[], p: number): number {
  return percentileSorted([...values].sort((a, b) => a - b), p);
}

export function summarize(values: readonly number[]): Stats {
  const n = values.length;
  if (n === 0) return { mean: null, std: null, min: null, p50: null, p90: null, p99: null, max: null, count: 0 };
  const sorted = [...values].sort((a, b) => a - b);
  let sum = 0;
  for (const v of sorted) sum += v;
  const mean = sum / n;
  let sq = 0;
  for (const v of sorted) sq += (v - mean) * (v - mean);
  return {
    mean,
    std: Math.sqrt(sq / n),
    min: sorted[0],
    p50: percentileSorted(sorted, 50),
    p90: percentileSorted(sorted, 90),
    p99: percentileSorted(sorted, 99),
    max: sorted[n - 1],
    count: n,
  };
}

/** TPOT of one request in ms, undefined when it is not defined (failed or <= 1 output token). */
export function tpotMs(r: Pick<RequestRecord, 'ok' | 'e2elMs' | 'ttftMs' | 'outputTokens'>): number | undefined {
  if (!r.ok || r.e2elMs === undefined || r.ttftMs === undefined || r.outputTokens <= 1) return undefined;
  return (r.e2elMs - r.ttftMs) / (r.outputTokens - 1);
}

/** Whether a completed request meets every SLO given. Failed requests are never good. */
export function meetsSlo(r: Pick<RequestRecord, 'ok' | 'e2elMs' | 'ttftMs' | 'outputTokens'>, slo: Slo): boolean {
  if (!r.ok) return false;
  if (slo.ttftMs !== undefined && !(r.ttftMs !== undefined && r.ttftMs <= slo.ttftMs)) return false;
  if (slo.e2elMs !== undefined && !(r.e2elMs !== undefined && r.e2elMs <= slo.e2elMs)) return false;
  if (slo.tpotMs !== undefined) {
    const t = tpotMs(r);
    if (t !== undefined && t > slo.tpotMs) return false;
  }
  return true;
}

export interface Metrics {
  completed: number;
  failed: number;
  /** In flight when the run was interrupted (neither completed nor failed). */
  interrupted_requests: number;
  good: number;
  duration_s: number;
  total_input_tokens: number;
  total_output_tokens: number;
  request_throughput: number;
  output_token_throughput: number;
  total_token_throughput: number;
  goodput: number;
  slo_attainment: number;
  /** good / (completed + failed): attainment that also charges failures. */
  slo_attainment_incl_failed: number;
  /** Completed requests whose output token count differs from the requested length. */
  output_len_mismatches: number;
  ttft_ms: Stats;
  tpot_ms: Stats;
  itl_ms: Stats;
  e2el_ms: Stats;
}

type MetricRecord = Pick<RequestRecord, 'ok' | 'interrupted' | 'startMs' | 'endMs' | 'ttftMs' | 'e2elMs' | 'itlMs' | 'promptTokens' | 'outputTokens' | 'targetOutputTokens'>;

export function computeMetrics(records: readonly MetricRecord[], slo: Slo): Metrics {
  const finished = records.filter((r) => !r.interrupted);
  const done = finished.filter((r) => r.ok);
  const completed = done.length;
  const failed = finished.length - completed;
  let first = Infinity;
  let last = -Infinity;
  for (const r of records) first = Math.min(first, r.startMs);
  for (const r of finished) last = Math.max(last, r.endMs);
  const duration_s = finished.length > 0 && Number.isFinite(first) ? Math.max(0, (last - first) / 1000) : 0;
  const per = (x: number) => (duration_s > 0 ? x / duration_s : 0);
  let inTok = 0;
  let outTok = 0;
  let good = 0;
  let mismatches = 0;
  const ttft: number[] = [];
  const tpot: number[] = [];
  const itl: number[] = [];
  const e2el: number[] = [];
  for (const r of done) {
    inTok += r.promptTokens;
    outTok += r.outputTokens;
    if (r.outputTokens !== r.targetOutputTokens) mismatches++;
    if (meetsSlo(r, slo)) good++;
    if (r.ttftMs !== undefined) ttft.push(r.ttftMs);
    if (r.e2elMs !== undefined) e2el.push(r.e2elMs);
    const t = tpotMs(r);
    if (t !== undefined) tpot.push(t);
    for (const g of r.itlMs) itl.push(g);
  }
  return {
    completed,
    failed,
    interrupted_requests: records.length - finished.length,
    good,
    duration_s,
    total_input_tokens: inTok,
    total_output_tokens: outTok,
    request_throughput: per(completed),
    output_token_throughput: per(outTok),
    total_token_throughput: per(inTok + outTok),
    goodput: per(good),
    slo_attainment: completed > 0 ? good / completed : 0,
    slo_attainment_incl_failed: finished.length > 0 ? good / finished.length : 0,
    output_len_mismatches: mismatches,
    ttft_ms: summarize(ttft),
    tpot_ms: summarize(tpot),
    itl_ms: summarize(itl),
    e2el_ms: summarize(e2el),
  };
}
