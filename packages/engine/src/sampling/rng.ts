// Seeded random numbers for sampling: the same seed gives the same draws, so a request with a
// `seed` reproduces its output. xoroshiro128+ (pure-rand) is fast and small; its 128-bit state is
// filled from the seed with splitmix64, as the xoroshiro authors recommend, so that nearby seeds
// (1, 2, 3) still start far apart and the whole 64-bit seed matters (pure-rand's own seeding
// keeps only 32 bits).
import { randomInt } from 'node:crypto';
import { xoroshiro128plusFromState } from 'pure-rand/generator/xoroshiro128plus';
import type { RandomGenerator } from 'pure-rand/types/RandomGenerator';

const MASK64 = (1n << 64n) - 1n;

/** One splitmix64 step: returns [next state, output]. */
function splitmix64(state: bigint): [bigint, bigint] {
  const next = (state + 0x9e3779b97f4a7c15n) & MASK64;
  let z = next;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return [next, z ^ (z >> 31n)];
}

export class Rng {
  private readonly gen: RandomGenerator;

  /** `seed`: any safe integer (negative ones are taken modulo 2^64, as a uint64 seed). */
  constructor(readonly seed: number) {
    if (!Number.isSafeInteger(seed)) throw new RangeError(`seed must be a safe integer, got ${seed}`);
    let state = BigInt.asUintN(64, BigInt(seed));
    let s0: bigint;
    let s1: bigint;
    [state, s0] = splitmix64(state);
    [state, s1] = splitmix64(state);
    if (s0 === 0n && s1 === 0n) s1 = 1n; // the all-zero state is a fixed point
    const word = (x: bigint, shift: bigint): number => Number((x >> shift) & 0xffffffffn) | 0;
    // pure-rand's state order is [s0 high, s0 low, s1 high, s1 low].
    this.gen = xoroshiro128plusFromState([word(s0, 32n), word(s0, 0n), word(s1, 32n), word(s1, 0n)]);
  }

  /** Uniform in [0, 1), a multiple of 2^-53 (from the high bits of two outputs). */
  nextFloat(): number {
    const a = this.gen.next() >>> 5; // 27 bits
    const b = this.gen.next() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }
}

/** A fresh seed for requests without one (reportable, so the run can be reproduced). */
export function randomSeed(): number {
  return randomInt(2 ** 48 - 1);
}

export function createRng(seed?: number): Rng {
  return new Rng(seed ?? randomSeed());
}
