// How far placement's latency estimates have been off, measured on the requests admitted with them
// (mechanism, no policy): admission scales a new TTFT estimate by the recent ratio of measured to
// estimated before it judges it against the SLO.
//
// Why: the estimates (placement.ts) model the queue ahead, the prefill rate, the decode step time
// and the share of it local prefills take, not what lies around them (HTTP and tokenization, the
// gRPC calls, a worker's engine thread finishing the pass it is in, the other worker's passes on
// shared cores, how a stall spreads over a request's life). An error of one sign is what a
// correction learned from the estimates' own misses removes, in both directions. Measured on chat
// (BENCHMARKS.md, issue 8, 2026-12-07): TTFT estimates 11-15% high. Dynamo's SLA planner corrects
// its TTFT and ITL predictions the same way.
//
// TPOT is not corrected: a request's TPOT is measured over its whole life and includes the stalls
// of prompts admitted after it, which no estimate at admission can know, so measured over
// estimated ran 1.15x on chat and correcting by it refused requests that would have met the SLO
// (pdserve_tpot_estimate_ratio still reports it).
import type { PlacementWhere } from './placement.ts';

/** Recent admitted requests the ratio is taken over, per placement kind. */
export const CALIBRATION_SAMPLES = 32;
/** Fewer samples than this: no correction (factor 1). */
export const MIN_CALIBRATION_SAMPLES = 8;
/** The correction never scales an estimate beyond these factors. */
export const CALIBRATION_BOUNDS = [0.5, 2] as const;
/** One sample's measured value counts as at most this many times its estimate (and at least its inverse). */
const SAMPLE_RATIO_BOUND = 4;

/** Measured over estimated values of one quantity (TTFT or TPOT), per placement kind. */
export class EstimateCalibration {
  private readonly samples = new Map<PlacementWhere, Array<{ estimate: number; actual: number }>>();

  /** A request placed `where` was estimated at `estimate` and measured at `actual` (same unit). */
  observe(where: PlacementWhere, estimate: number, actual: number): void {
    if (!(estimate > 0) || !(actual >= 0) || !Number.isFinite(estimate) || !Number.isFinite(actual)) return;
    const list = this.samples.get(where) ?? [];
    list.push({ estimate, actual: Math.min(estimate * SAMPLE_RATIO_BOUND, Math.max(estimate / SAMPLE_RATIO_BOUND, actual)) });
    if (list.length > CALIBRATION_SAMPLES) list.shift();
    this.samples.set(where, list);
  }

  /**
   * What a new estimate placed `where` is multiplied by: measured over estimated, summed over the
   * recent samples (so the large values, the ones admission decides on, weigh the most); 1 until
   * MIN_CALIBRATION_SAMPLES have been seen.
   */
  factor(where: PlacementWhere): number {
    const list = this.samples.get(where);
    if (!list || list.length < MIN_CALIBRATION_SAMPLES) return 1;
    let estimate = 0;
    let actual = 0;
    for (const s of list) { estimate += s.estimate; actual += s.actual; }
    return Math.min(CALIBRATION_BOUNDS[1], Math.max(CALIBRATION_BOUNDS[0], actual / estimate));
  }
}
