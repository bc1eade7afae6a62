import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng, arrivalOffsets } from '../src/index.ts';

function gaps(offsets: number[]): number[] {
  return offsets.slice(1).map((t, i) => t - offsets[i]);
}

function meanVar(xs: number[]): [number, number] {
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  const v = xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length;
  return [m, v];
}

test('Poisson arrivals: first at 0, non-decreasing, mean gap 1/rate, exponential (CV 1)', () => {
  const off = arrivalOffsets(20_001, { rate: 4, seed: 42 });
  assert.equal(off[0], 0);
  for (let i = 1; i < off.length; i++) assert.ok(off[i] >= off[i - 1]);
  const [m, v] = meanVar(gaps(off));
  assert.ok(Math.abs(m - 0.25) < 0.25 * 0.03, `mean gap ${m}`);
  const cv2 = v / (m * m);
  assert.ok(Math.abs(cv2 - 1) < 0.06, `cv^2 ${cv2}`);
});

test('gamma arrivals: mean gap 1/rate for any burstiness, CV^2 = 1/burstiness', () => {
  for (const b of [0.5, 2, 4]) {
    const [m, v] = meanVar(gaps(arrivalOffsets(20_001, { rate: 10, burstiness: b, seed: 7 })));
    assert.ok(Math.abs(m - 0.1) < 0.1 * 0.04, `burstiness ${b}: mean gap ${m}`);
    const cv2 = v / (m * m);
    assert.ok(Math.abs(cv2 - 1 / b) < 0.1 / b, `burstiness ${b}: cv^2 ${cv2}`);
  }
});

test('arrivals are deterministic in the seed, scale with the rate, and inf sends all at once', () => {
  const a = arrivalOffsets(50, { rate: 2, seed: 1 });
  assert.deepEqual(a, arrivalOffsets(50, { rate: 2, seed: 1 }));
  assert.notDeepEqual(a, arrivalOffsets(50, { rate: 2, seed: 2 }));
  const b = arrivalOffsets(50, { rate: 4, seed: 1 });
  for (let i = 0; i < 50; i++) assert.ok(Math.abs(a[i] - 2 * b[i]) < 1e-9);
  assert.deepEqual(arrivalOffsets(5, { rate: Infinity, seed: 1 }), [0, 0, 0, 0, 0]);
  assert.throws(() => arrivalOffsets(5, { rate: 0, seed: 1 }));
  assert.throws(() => arrivalOffsets(5, { rate: 1, burstiness: 0, seed: 1 }));
});

test('Rng.gamma has mean shape*scale and variance shape*scale^2', () => {
  const rng = new Rng(3);
  for (const [k, s] of [[0.3, 2], [1, 1], [5, 0.5]] as const) {
    const xs = Array.from({ length: 20_000 }, () => rng.gamma(k, s));
    const [m, v] = meanVar(xs);
    assert.ok(Math.abs(m - k * s) < 0.05 * k * s, `gamma(${k},${s}) mean ${m}`);
    assert.ok(Math.abs(v - k * s * s) < 0.12 * k * s * s, `gamma(${k},${s}) var ${v}`);
  }
});
