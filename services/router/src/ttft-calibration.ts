// How far placement's TTFT estimates have been off, measured on the requests admitted with them
// (mechanism, no policy): admission scales a new estimate by the recent ratio of measured to
// estimated TTFT before it judges it against the SLO.
//
// Why: the estimate (placement.ts) models the queue ahead and the prefill rate, not what sits
// around them (HTTP and tokenization, the gRPC calls, a worker's engine thread finishing the pass
// it is in, the other worker's passes on shared cores). Measured on chat at 1.5-8 req/s, the
// refused requests' estimates were 1.8-2.7 s while the admitted ones' TTFTs stayed under 1.6 s at
// p99 (BENCHMARKS.md, issue 8, 2026-12-07): a model error of a constant sign is what a correction
// learned from the model's own misses removes, in both directions.
import type { PlacementWhere } from './placement.ts';

/** Recent admitted requests the ratio is taken over, per placement kind. */
export const CALIBRATION_SAMPLES = 32;
/** Fewer samples than this: no correction (factor 1). */
export const MIN_CALIBRATION_SAMPLES = 8;
/** The correction never scales an estimate beyond these factors. */
export const CALIBRATION_BOUNDS = [0.5, 2] as const;
/** One sample's measured TTFT counts as at most this many times its estimate (and at least its inverse). */
const SAMPLE_RATIO_BOUND = 4;

export class TtftCalibration {
  private readonly samples = new Map<PlacementWhere, Array<{ estimate: number; actual: number }>>();

  /** A request placed `where` with an estimated TTFT of `estimateMs` got its first token after `actualMs`. */
  observe(where: PlacementWhere, estimateMs: number, actualMs: number): void {
    if (!(estimateMs > 0) || !(actualMs >= 0) || !Number.isFinite(estimateMs) || !Number.isFinite(actualMs)) return;
    const list = this.samples.get(where) ?? [];
    const actual = Math.min(estimateMs * SAMPLE_RATIO_BOUND, Math.max(estimateMs / SAMPLE_RATIO_BOUND, actualMs));
    list.push({ estimate: estimateMs, actual });
    if (list.length > CALIBRATION_SAMPLES) list.shift();
    this.samples.set(where, list);
  }

  /**
   * What a new estimate placed `where` is multiplied by: measured over estimated TTFT, summed over
   * the recent samples (so the long waits, the ones admission decides on, weigh the most); 1 until
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
