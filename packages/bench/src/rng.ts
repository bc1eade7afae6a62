// Seeded random numbers for the benchmark: a thin wrapper over pure-rand's xoroshiro128+ with the
// few continuous distributions the workload and arrival generators need. Everything a benchmark
// draws comes from one of these, so a run is reproducible from its seed alone.
import { xoroshiro128plus } from 'pure-rand/generator/xoroshiro128plus';
import { uniformFloat64 } from 'pure-rand/distribution/uniformFloat64';
import { uniformInt } from 'pure-rand/distribution/uniformInt';
import type { JumpableRandomGenerator } from 'pure-rand/types/JumpableRandomGenerator';

/**
 * Independent random streams derived from one user seed (so arrivals never perturb prompts). A
 * workload uses three consecutive streams (lengths, mixture choice, prompt tokens).
 */
export const STREAM = { arrivals: 1, workload: 2, warmup: 5 } as const;

export class Rng {
  private readonly gen: JumpableRandomGenerator;

  /** `stream` selects an independent sequence for the same seed (it jumps 2^64 steps per stream). */
  constructor(seed: number, stream = 0) {
    this.gen = xoroshiro128plus(seed | 0);
    for (let i = 0; i < stream; i++) this.gen.jump();
  }

  /** Uniform float in [0, 1). */
  float(): number {
    return uniformFloat64(this.gen);
  }

  /** Uniform integer in [lo, hi], both included. */
  int(lo: number, hi: number): number {
    return uniformInt(this.gen, lo, hi);
  }

  /** Standard normal (Box-Muller; one value per call, the twin is discarded for simplicity). */
  normal(): number {
    let u = 0;
    while (u === 0) u = this.float();
    const v = this.float();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }

  /** Exponential with the given rate (mean 1/rate). */
  exponential(rate: number): number {
    return -Math.log(1 - this.float()) / rate;
  }

  /** Gamma(shape, scale), mean shape*scale (Marsaglia & Tsang 2000; boost trick for shape < 1). */
  gamma(shape: number, scale: number): number {
    if (!(shape > 0) || !(scale > 0)) throw new RangeError(`gamma needs shape > 0 and scale > 0 (got ${shape}, ${scale})`);
    if (shape < 1) {
      let u = 0;
      while (u === 0) u = this.float();
      return this.gamma(shape + 1, scale) * Math.pow(u, 1 / shape);
    }
    const d = shape - 1 / 3;
    const c = 1 / Math.sqrt(9 * d);
    for (;;) {
      let x: number;
      let v: number;
      do {
        x = this.normal();
        v = 1 + c * x;
      } while (v <= 0);
      v = v * v * v;
      const u = this.float();
      if (u < 1 - 0.0331 * x * x * x * x) return d * v * scale;
      if (Math.log(u) < 0.5 * x * x + d * (1 - v + Math.log(v))) return d * v * scale;
    }
  }
}
