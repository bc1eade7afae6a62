// Rate sweep: the same seeded workload (same prompt and output lengths, same normalized arrival
// gaps) at each rate in turn, one warmup up front, and the highest rate that still meets the SLO
// attainment target. Each rate gets prompts of its own content (the seed plus the rate's index):
// with the very same prompts a server with a prefix cache (vLLM's, SGLang's, pdserve's all on by
// default) would serve every rate after the first from the cache of the one before, and the sweep
// would measure cache hits, not the load it names.
import { buildResult, prepareBenchmark, rateToJson, runLoad, runWarmup, optionsAsSettings, workloadRequests, type BenchmarkOptions, type BenchmarkResult } from './runner.ts';
import { renderAttainmentSvg, type AttainmentSeries, type SvgOptions } from './svg.ts';

export const ATTAINMENT_TARGET = 0.9;

export interface SweepOptions extends Omit<BenchmarkOptions, 'rate' | 'onProgress'> {
  rates: number[];
  /** Called before each rate with its position, and with per-request progress. */
  onRateStart?: (rate: number, index: number, total: number) => void;
  onProgress?: BenchmarkOptions['onProgress'];
}

export interface SweepPoint {
  rate: number | 'inf';
  slo_attainment: number;
  goodput: number;
  request_throughput: number;
  completed: number;
  failed: number;
  ttft_p99_ms: number | null;
  tpot_p99_ms: number | null;
}

export interface SweepResult {
  type: 'sweep';
  date: string;
  model: string;
  workload: string;
  endpoint: string;
  slo: BenchmarkResult['slo'];
  rates: Array<number | 'inf'>;
  attainment_target: number;
  /** Highest swept rate whose slo_attainment >= 0.9 (null if none). */
  max_rate_at_90pct_attainment: number | 'inf' | null;
  /** Linear interpolation of the 0.9 crossing between that rate and the next swept rate. */
  interpolated_rate_at_90pct: number | null;
  /** True when even the highest finite swept rate met the target (the true crossing is higher). */
  interpolated_is_lower_bound: boolean;
  interrupted: boolean;
  points: SweepPoint[];
  results: BenchmarkResult[];
  settings: Record<string, unknown>;
  /** Path of the chart written beside the JSON (set by the CLI). */
  svg?: string;
}

export interface CrossingEstimate {
  max: number | null;
  interpolated: number | null;
  lowerBound: boolean;
}

/**
 * The highest rate with attainment >= target, and the linear interpolation of the crossing between
 * it and the next higher swept rate. When the highest rate passes, `interpolated` is that rate and
 * `lowerBound` is true; when none passes both are null. Infinite rates count for `max` only.
 */
export function rateAtAttainment(points: ReadonlyArray<{ rate: number; attainment: number }>, target = ATTAINMENT_TARGET): CrossingEstimate {
  const sorted = [...points].sort((a, b) => a.rate - b.rate);
  let best = -1;
  for (let i = 0; i < sorted.length; i++) if (sorted[i].attainment >= target) best = i;
  if (best < 0) return { max: null, interpolated: null, lowerBound: false };
  const max = sorted[best].rate;
  const finite = sorted.filter((p) => Number.isFinite(p.rate));
  let fb = -1;
  for (let i = 0; i < finite.length; i++) if (finite[i].attainment >= target) fb = i;
  if (fb < 0) return { max, interpolated: null, lowerBound: false };
  const a = finite[fb];
  const b = finite[fb + 1];
  if (!b) return { max, interpolated: a.rate, lowerBound: true };
  const interpolated = a.attainment === b.attainment ? a.rate : a.rate + ((a.attainment - target) / (a.attainment - b.attainment)) * (b.rate - a.rate);
  return { max, interpolated, lowerBound: false };
}

export function sweepPoint(r: BenchmarkResult): SweepPoint {
  return {
    rate: r.rate,
    slo_attainment: r.slo_attainment,
    goodput: r.goodput,
    request_throughput: r.request_throughput,
    completed: r.completed,
    failed: r.failed,
    ttft_p99_ms: r.ttft_ms.p99,
    tpot_p99_ms: r.tpot_ms.p99,
  };
}

/** Runs every rate in turn; an abort stops the sweep after the current (partial) rate. */
export async function runSweep(options: SweepOptions): Promise<SweepResult> {
  if (options.rates.length === 0) throw new RangeError('sweep needs at least one rate');
  const { rates, onRateStart, ...rest } = options;
  const base: BenchmarkOptions = { ...rest, rate: rates[0] };
  const plan = await prepareBenchmark(base);
  await runWarmup(plan);
  const results: BenchmarkResult[] = [];
  for (let k = 0; k < rates.length; k++) {
    if (options.signal?.aborted) break;
    onRateStart?.(rates[k], k, rates.length);
    const requests = k === 0 ? plan.requests : workloadRequests(plan.options, plan, { contentSeed: (base.seed ?? 0) + k });
    const p = { ...plan, requests, options: { ...plan.options, rate: rates[k] } };
    results.push(buildResult(p, rates[k], await runLoad(p, rates[k])));
  }
  return assembleSweep(results, rates, base.settings ?? optionsAsSettings({ ...rest, rates }), options.signal?.aborted ?? false, {
    model: plan.model,
    workload: options.workload,
    endpoint: plan.endpoint,
  });
}

export function assembleSweep(
  results: BenchmarkResult[],
  rates: number[],
  settings: Record<string, unknown>,
  interrupted: boolean,
  meta: { model: string; workload: string; endpoint: string },
): SweepResult {
  const toNum = (r: number | 'inf') => (r === 'inf' ? Infinity : r);
  // An interrupted (partial) rate is not used for the crossing estimate.
  const usable = results.filter((r) => !r.interrupted);
  const est = rateAtAttainment(usable.map((r) => ({ rate: toNum(r.rate), attainment: r.slo_attainment })));
  return {
    type: 'sweep',
    date: new Date().toISOString(),
    model: meta.model,
    workload: meta.workload,
    endpoint: meta.endpoint,
    slo: results[0]?.slo ?? { ttft_ms: null, tpot_ms: null, e2el_ms: null },
    rates: rates.map(rateToJson),
    attainment_target: ATTAINMENT_TARGET,
    max_rate_at_90pct_attainment: est.max === null ? null : rateToJson(est.max),
    interpolated_rate_at_90pct: est.interpolated,
    interpolated_is_lower_bound: est.lowerBound,
    interrupted,
    points: results.map(sweepPoint),
    results,
    settings,
  };
}

/** The attainment series of a sweep (finite rates only), e.g. to overlay several systems. */
export function sweepSeries(sweep: SweepResult, name?: string): AttainmentSeries {
  return {
    name: name ?? `${sweep.model} (${sweep.workload})`,
    points: sweep.results
      .filter((r) => r.rate !== 'inf' && !r.interrupted)
      .map((r) => ({ rate: r.rate as number, attainment: r.slo_attainment })),
  };
}

export function sloDescription(slo: BenchmarkResult['slo']): string {
  const parts: string[] = [];
  if (slo.ttft_ms !== null) parts.push(`TTFT <= ${slo.ttft_ms} ms`);
  if (slo.tpot_ms !== null) parts.push(`TPOT <= ${slo.tpot_ms} ms`);
  if (slo.e2el_ms !== null) parts.push(`E2EL <= ${slo.e2el_ms} ms`);
  return parts.length > 0 ? parts.join(', ') : 'no SLO';
}

export function renderSweepSvg(sweep: SweepResult, opts: SvgOptions & { seriesName?: string } = {}): string {
  return renderAttainmentSvg([sweepSeries(sweep, opts.seriesName)], {
    title: `SLO attainment vs rate (${sloDescription(sweep.slo)})`,
    ...opts,
  });
}
