import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InvalidSamplingParamsError, Sampler, argmax, selectTop, validateSamplingParams, type SamplingParams } from '../src/sampling/sampler.ts';
import { Rng, createRng, randomSeed } from '../src/sampling/rng.ts';

const GREEDY: SamplingParams = { temperature: 0, topK: 0, topP: 1 };

/** Deterministic pseudo-random logits (a small LCG, independent of the code under test). */
function randomLogits(n: number, seed: number, scale = 4, quantize = 0): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const x = (s / 2 ** 32 - 0.5) * 2 * scale;
    out[i] = quantize > 0 ? Math.round(x * quantize) / quantize : x;
  }
  return out;
}

function logitsOf(probs: number[]): Float32Array {
  return Float32Array.from(probs, (p) => Math.log(p));
}

/** A straightforward reference: full softmax, full sort, top-k, top-p, one draw from `rng`. */
function referenceSample(logits: Float32Array, p: SamplingParams, rng: Rng): number {
  const n = logits.length;
  const max = Math.max(...logits);
  const w = Array.from(logits, (x) => Math.exp((x - max) / p.temperature));
  let ids = [...Array(n).keys()].sort((a, b) => (logits[b] - logits[a]) || a - b);
  if (p.topK > 0 && p.topK < n) ids = ids.slice(0, p.topK);
  let mass = ids.reduce((s, i) => s + w[i], 0);
  if (p.topP < 1) {
    let cum = 0;
    let keep = 0;
    while (keep < ids.length) {
      cum += w[ids[keep++]];
      if (cum >= p.topP * mass) break;
    }
    ids = ids.slice(0, keep);
    mass = cum;
  }
  // With top-k the draw walks the candidates best first; with top-p alone, in id order.
  if (!(p.topK > 0 && p.topK < n)) {
    const kept = new Set(ids);
    ids = [...Array(n).keys()].filter((i) => kept.has(i));
  }
  const u = rng.nextFloat() * mass;
  let cum = 0;
  for (const i of ids) {
    cum += w[i];
    if (u < cum) return i;
  }
  return ids[ids.length - 1];
}

test('greedy: argmax, ties to the lowest id, NaN never wins', () => {
  const s = new Sampler(GREEDY);
  assert.equal(s.sample(Float32Array.of(1, 3, 2)).id, 1);
  assert.equal(s.sample(Float32Array.of(1, 3, 3, 2, 3)).id, 1);
  assert.equal(s.sample(Float32Array.of(NaN, 0, 5, NaN, 5)).id, 2);
  assert.equal(s.sample(Float32Array.of(-Infinity, -Infinity)).id, 0);
  assert.equal(s.seed, undefined);
  assert.equal(argmax(Float32Array.of(-1, -1)), 0);
  // Greedy ignores the seed and top-k/top-p.
  const seeded = new Sampler({ temperature: 0, topK: 5, topP: 0.5, seed: 3 });
  assert.equal(seeded.sample(Float32Array.of(0, 9, 9)).id, 1);
});

test('same seed, same sequence; another seed, another sequence', () => {
  const logits = randomLogits(1000, 7, 2);
  const run = (seed: number): number[] => {
    const s = new Sampler({ temperature: 1, topK: 0, topP: 1, seed });
    return Array.from({ length: 200 }, () => s.sample(logits).id);
  };
  assert.deepEqual(run(42), run(42));
  assert.notDeepEqual(run(42), run(43));
  // No seed: a random one, reported, which reproduces the run.
  const s = new Sampler({ temperature: 1, topK: 0, topP: 1 });
  assert.ok(Number.isSafeInteger(s.seed));
  const first = Array.from({ length: 50 }, () => s.sample(logits).id);
  const again = new Sampler({ temperature: 1, topK: 0, topP: 1, seed: s.seed });
  assert.deepEqual(Array.from({ length: 50 }, () => again.sample(logits).id), first);
});

test('top-k 1 and a tiny top-p both equal greedy', () => {
  for (let trial = 0; trial < 50; trial++) {
    const logits = randomLogits(500, trial, 3, trial % 2 === 0 ? 2 : 0); // quantized: many ties
    const greedy = argmax(logits);
    const k1 = new Sampler({ temperature: 1.5, topK: 1, topP: 1, seed: trial });
    const p0 = new Sampler({ temperature: 0.7, topK: 0, topP: 1e-9, seed: trial });
    const both = new Sampler({ temperature: 2, topK: 10, topP: 1e-9, seed: trial });
    for (let i = 0; i < 5; i++) {
      assert.equal(k1.sample(logits).id, greedy);
      assert.equal(p0.sample(logits).id, greedy);
      assert.equal(both.sample(logits).id, greedy);
    }
  }
});

test('distribution sanity with a fixed seed', () => {
  const logits = logitsOf([0.5, 0.3, 0.2]);
  const freq = (params: Omit<SamplingParams, 'seed'>, n = 20000): number[] => {
    const s = new Sampler({ ...params, seed: 1234 });
    const counts = [0, 0, 0];
    for (let i = 0; i < n; i++) counts[s.sample(logits).id]++;
    return counts.map((c) => c / n);
  };
  const close = (got: number[], want: number[]): void => {
    got.forEach((g, i) => assert.ok(Math.abs(g - want[i]) < 0.015, `got ${got}, want ${want}`));
  };
  close(freq({ temperature: 1, topK: 0, topP: 1 }), [0.5, 0.3, 0.2]);
  // Temperature 0.5 squares the probabilities: .25, .09, .04 over .38.
  close(freq({ temperature: 0.5, topK: 0, topP: 1 }), [0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38]);
  // Top-k 2 renormalizes the two best.
  close(freq({ temperature: 1, topK: 2, topP: 1 }), [0.625, 0.375, 0]);
  close(freq({ temperature: 1, topK: -1, topP: 1 }), [0.5, 0.3, 0.2]);
  // Top-p 0.7: 0.5 is not enough, 0.5 + 0.3 is.
  close(freq({ temperature: 1, topK: 0, topP: 0.7 }), [0.625, 0.375, 0]);
  close(freq({ temperature: 1, topK: 0, topP: 0.45 }), [1, 0, 0]);
  // Top-p applies to what top-k kept, renormalized: 0.625 >= 0.6.
  close(freq({ temperature: 1, topK: 2, topP: 0.6 }), [1, 0, 0]);
  // Masked (-inf) ids are never drawn.
  const masked = new Sampler({ temperature: 1, topK: 3, topP: 1, seed: 5 });
  for (let i = 0; i < 1000; i++) assert.notEqual(masked.sample(Float32Array.of(0, -Infinity, 0, -Infinity)).id % 2, 1);
});

test('top-k and top-p agree with a full-sort reference draw for draw', () => {
  const cases: Array<Omit<SamplingParams, 'seed'>> = [
    { temperature: 1, topK: 0, topP: 0.9 },
    { temperature: 0.6, topK: 0, topP: 0.5 },
    { temperature: 1.3, topK: 0, topP: 0.99 },
    { temperature: 1, topK: 40, topP: 1 },
    { temperature: 1, topK: 200, topP: 0.8 },
    { temperature: 0.9, topK: 5, topP: 0.3 },
  ];
  for (const [c, params] of cases.entries()) {
    for (const [scale, quantize] of [[1, 0], [6, 0], [3, 1]]) {
      const logits = randomLogits(1000, 100 + c, scale, quantize);
      const seed = 77 + c;
      const s = new Sampler({ ...params, seed });
      const rng = new Rng(seed);
      for (let i = 0; i < 40; i++) {
        assert.equal(s.sample(logits).id, referenceSample(logits, { ...params, seed }, rng), `case ${c} scale ${scale} draw ${i}`);
      }
    }
  }
});

test('logprobs: raw log-softmax (temperature 1) of the chosen id and the N best', () => {
  const logits = Float32Array.of(2, 1, 3, 3, 0);
  const lse = Math.log([...logits].reduce((s, x) => s + Math.exp(x), 0));
  const s = new Sampler({ temperature: 0.3, topK: 0, topP: 1, seed: 9, logprobs: 3 });
  const out = s.sample(logits);
  assert.ok(Math.abs((out.logprob ?? NaN) - (logits[out.id] - lse)) < 1e-6);
  assert.deepEqual(out.topLogprobs?.map((t) => t.id), [2, 3, 0]);
  for (const t of out.topLogprobs ?? []) assert.ok(Math.abs(t.logprob - (logits[t.id] - lse)) < 1e-6);
  // All alternatives: probabilities sum to 1, sorted best first.
  const big = randomLogits(5000, 3, 5);
  const all = new Sampler({ ...GREEDY, logprobs: 5000 }).sample(big);
  assert.equal(all.topLogprobs?.length, 5000);
  const total = (all.topLogprobs ?? []).reduce((sum, t) => sum + Math.exp(t.logprob), 0);
  assert.ok(Math.abs(total - 1) < 1e-9, `sum ${total}`);
  const lp = all.topLogprobs?.map((t) => t.logprob) ?? [];
  assert.ok(lp.every((x, i) => i === 0 || lp[i - 1] >= x));
  assert.equal(all.topLogprobs?.[0].id, all.id);
  assert.equal(all.logprob, all.topLogprobs?.[0].logprob);
  // 0: the chosen id's logprob only; undefined: none.
  const zero = new Sampler({ ...GREEDY, logprobs: 0 }).sample(logits);
  assert.equal(zero.topLogprobs, undefined);
  assert.ok(Math.abs((zero.logprob ?? NaN) - (3 - lse)) < 1e-6);
  assert.deepEqual(new Sampler(GREEDY).sample(logits), { id: 2 });
  // More alternatives than the vocabulary: all of them.
  assert.equal(new Sampler({ ...GREEDY, logprobs: 20 }).sample(logits).topLogprobs?.length, 5);
  // The temperature-1 fast path gives the same logprob as the separate computation.
  const t1 = new Sampler({ temperature: 1, topK: 0, topP: 1, seed: 1, logprobs: 0 }).sample(big);
  const ref = new Sampler({ ...GREEDY, logprobs: 0 });
  ref.sample(big);
  const lseBig = Math.log([...big].reduce((s2, x) => s2 + Math.exp(x), 0));
  assert.ok(Math.abs((t1.logprob ?? NaN) - (big[t1.id] - lseBig)) < 1e-9);
});

test('a row of a larger batch buffer (offset, vocab)', () => {
  const vocab = 300;
  const batch = new Float32Array(vocab * 3);
  batch.set(randomLogits(vocab, 1), 0);
  batch.set(randomLogits(vocab, 2), vocab);
  batch.set(randomLogits(vocab, 3), 2 * vocab);
  for (let row = 0; row < 3; row++) {
    const params: SamplingParams = { temperature: 0.8, topK: 20, topP: 0.9, seed: row, logprobs: 2 };
    const fromBatch = new Sampler(params).sample(batch, row * vocab, vocab);
    const fromCopy = new Sampler(params).sample(batch.slice(row * vocab, (row + 1) * vocab));
    assert.deepEqual(fromBatch, fromCopy);
    assert.ok(fromBatch.id < vocab);
  }
  assert.equal(new Sampler(GREEDY).sample(batch, vocab, vocab).id, argmax(batch.subarray(vocab, 2 * vocab)));
  assert.throws(() => new Sampler(GREEDY).sample(batch, 2 * vocab, vocab + 1), RangeError);
  assert.throws(() => new Sampler(GREEDY).sample(batch, -1, 10), RangeError);
});

test('selectTop matches a full sort, with and without ties', () => {
  const out = new Int32Array(2000);
  for (const quantize of [0, 1, 4]) {
    const row = randomLogits(2000, 11 + quantize, 3, quantize);
    const sorted = [...row.keys()].sort((a, b) => (row[b] - row[a]) || a - b);
    for (const k of [1, 5, 32, 33, 100, 1999, 2000, 5000]) {
      const n = selectTop(row, k, out);
      assert.equal(n, Math.min(k, 2000));
      assert.deepEqual([...out.subarray(0, n)], sorted.slice(0, n), `k ${k} quantize ${quantize}`);
    }
  }
});

test('invalid parameters are rejected with the parameter named', () => {
  const bad = (p: Partial<SamplingParams>, pattern: RegExp): void => {
    assert.throws(() => new Sampler({ ...GREEDY, ...p }), (err: unknown) => err instanceof InvalidSamplingParamsError && err instanceof RangeError && pattern.test(err.message));
  };
  bad({ temperature: -1 }, /temperature/);
  bad({ temperature: Infinity }, /temperature/);
  bad({ topK: -2147483648 }, /top_k/); // an int32 overflow from the wire (issue 12)
  bad({ topP: NaN }, /top_p/);
  bad({ seed: 2 ** 60 }, /seed/);
  bad({ logprobs: 1.5 }, /logprobs/);
  bad({ temperature: NaN }, /temperature/);
  bad({ topK: 1.5 }, /top_k/);
  bad({ topK: -2 }, /top_k/);
  bad({ topP: 0 }, /top_p/);
  bad({ topP: 1.1 }, /top_p/);
  bad({ seed: 0.5 }, /seed/);
  bad({ logprobs: -1 }, /logprobs/);
  assert.doesNotThrow(() => validateSamplingParams({ temperature: 2, topK: -1, topP: 1, seed: -5, logprobs: 0 }));
});

test('Rng: deterministic per seed, uniform in [0, 1), any safe integer seed', () => {
  const draw = (seed: number): number[] => {
    const r = new Rng(seed);
    return Array.from({ length: 1000 }, () => r.nextFloat());
  };
  assert.deepEqual(draw(1), draw(1));
  assert.notDeepEqual(draw(1), draw(2));
  assert.notDeepEqual(draw(2 ** 40), draw(2 ** 40 + 2 ** 32)); // high bits matter
  const xs = draw(-123456789);
  assert.ok(xs.every((x) => x >= 0 && x < 1));
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
  assert.equal(new Rng(0).seed, 0);
  assert.equal(createRng(5).seed, 5);
  assert.ok(Number.isSafeInteger(randomSeed()));
  assert.throws(() => new Rng(1.5), RangeError);
  assert.throws(() => new Rng(2 ** 60), RangeError);
});
