// Request arrival schedule. Like `vllm bench serve`: inter-arrival times are Gamma(shape =
// burstiness, scale = 1 / (rate * burstiness)), so the mean gap is always 1/rate; burstiness 1 is a
// Poisson process (exponential gaps), < 1 is burstier, > 1 is more regular. The first request goes
// at t = 0. rate = Infinity sends everything at once.
import { Rng, STREAM } from './rng.ts';

export interface ArrivalOptions {
  /** Requests per second; Infinity = all at t = 0. */
  rate: number;
  /** Gamma shape; 1 (default) = Poisson. */
  burstiness?: number;
  seed: number;
}

/** Send offsets in seconds from the start of the run, non-decreasing, first = 0. */
export function arrivalOffsets(n: number, opts: ArrivalOptions): number[] {
  const { rate } = opts;
  const burstiness = opts.burstiness ?? 1;
  if (!(rate > 0)) throw new RangeError(`rate must be > 0 or Infinity (got ${rate})`);
  if (!(burstiness > 0) || !Number.isFinite(burstiness)) throw new RangeError(`burstiness must be > 0 (got ${burstiness})`);
  const out = new Array<number>(n).fill(0);
  if (!Number.isFinite(rate)) return out;
  const rng = new Rng(opts.seed, STREAM.arrivals);
  const scale = 1 / (rate * burstiness);
  let t = 0;
  for (let i = 1; i < n; i++) {
    t += burstiness === 1 ? rng.exponential(rate) : rng.gamma(burstiness, scale);
    out[i] = t;
  }
  return out;
}
