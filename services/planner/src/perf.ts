// Speed estimates the planner feeds its decision (decision.ts): prefill tokens/s of one worker and
// a decode step-time model step(b) = base + perSeq·b, from what the workers report with every
// heartbeat (`prefill_tokens_per_s`, `decode_step_ms`, `decode_batch`). Bounded state, no I/O.
import type { WorkerLoad } from '@pdserve/common';
import type { PerfModel } from './decision.ts';

export class PerfEstimator {
  #prefill: number | undefined;
  readonly #points: Array<{ batch: number; ms: number }> = [];
  readonly #maxPoints: number;
  readonly #alpha: number;

  constructor(opts: { maxPoints?: number; alpha?: number } = {}) {
    this.#maxPoints = opts.maxPoints ?? 128;
    this.#alpha = opts.alpha ?? 0.3;
  }

  /** Folds in one round of load reports (one per worker). */
  observe(loads: WorkerLoad[]): void {
    const rates = loads.map((l) => l.prefill_tokens_per_s).filter((x): x is number => typeof x === 'number' && x > 0).sort((a, b) => a - b);
    if (rates.length) {
      const median = rates[Math.floor(rates.length / 2)]!;
      this.#prefill = this.#prefill === undefined ? median : this.#prefill + this.#alpha * (median - this.#prefill);
    }
    for (const l of loads) {
      // A per-batch-size table, where the worker reports one, gives several points at once.
      const table = (l as { decode_step_ms_by_batch?: Record<string, number> }).decode_step_ms_by_batch;
      const points = table && typeof table === 'object'
        ? Object.entries(table).map(([b, ms]) => ({ batch: Number(b), ms }))
        : [{ batch: l.decode_batch ?? 0, ms: l.decode_step_ms ?? 0 }];
      for (const p of points) {
        if (!(p.ms > 0) || !(p.batch >= 1)) continue;
        this.#points.push(p);
        if (this.#points.length > this.#maxPoints) this.#points.shift();
      }
    }
  }

  get prefillTokensPerS(): number | undefined {
    return this.#prefill;
  }

  /**
   * Least squares over the observed (batch, step ms) points. With too little spread in batch sizes
   * to fit a slope, the line goes through the origin (every ms is per sequence): conservative, it
   * underestimates what batching gains rather than promising capacity that is not there.
   */
  get decodeStep(): PerfModel['decodeStep'] {
    const pts = this.#points;
    if (pts.length === 0) return undefined;
    const n = pts.length;
    const mb = pts.reduce((s, p) => s + p.batch, 0) / n;
    const mm = pts.reduce((s, p) => s + p.ms, 0) / n;
    const sbb = pts.reduce((s, p) => s + (p.batch - mb) ** 2, 0);
    if (sbb / n >= 0.25) {
      const slope = pts.reduce((s, p) => s + (p.batch - mb) * (p.ms - mm), 0) / sbb;
      const base = mm - slope * mb;
      if (slope >= 0 && base >= 0) return { baseMs: base, perSeqMs: slope };
    }
    return { baseMs: 0, perSeqMs: mm / mb };
  }
}
