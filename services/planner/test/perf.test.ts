// Speed estimates from load reports, and the routers' statistics combined.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { emptyLoad, type RouterStats, type WorkerLoad } from '@pdserve/common';
import { PerfEstimator } from '../src/perf.ts';
import { aggregateStats } from '../src/planner.ts';

const load = (o: Partial<WorkerLoad>): WorkerLoad => ({ ...emptyLoad(), ...o });

test('decode step model: a least-squares line over several batch sizes, through the origin without spread', () => {
  const e = new PerfEstimator();
  assert.equal(e.decodeStep, undefined);
  e.observe([load({ decode_step_ms: 10, decode_batch: 2 }), load({ decode_step_ms: 10, decode_batch: 2 })]);
  assert.deepEqual(e.decodeStep, { baseMs: 0, perSeqMs: 5 });
  for (const b of [1, 4, 8]) e.observe([load({ decode_step_ms: 6 + 2 * b, decode_batch: b })]);
  const fit = new PerfEstimator();
  for (const b of [1, 2, 4, 8]) fit.observe([load({ decode_step_ms: 6 + 2 * b, decode_batch: b })]);
  const s = fit.decodeStep!;
  assert.ok(Math.abs(s.baseMs - 6) < 1e-9 && Math.abs(s.perSeqMs - 2) < 1e-9, JSON.stringify(s));
});

test('prefill rate: the median report, smoothed; idle workers (no report) do not count', () => {
  const e = new PerfEstimator({ alpha: 0.5 });
  e.observe([load({ prefill_tokens_per_s: 1000 }), load({})]);
  assert.equal(e.prefillTokensPerS, 1000);
  e.observe([load({ prefill_tokens_per_s: 2000 })]);
  assert.equal(e.prefillTokensPerS, 1500);
});

test('router statistics: rates add up, means are weighted by finished requests', () => {
  const r = (id: string, rate: number, finished: number, prompt: number): RouterStats => ({
    router_id: id, window_s: 30, arrivals: rate * 30, arrival_rate: rate, finished, prompt_tokens_mean: prompt, output_tokens_mean: 10,
    slo_attainment: 1, rejected: 0, updated_ms: 1,
  });
  assert.equal(aggregateStats([]), undefined);
  const s = aggregateStats([r('a', 1, 10, 100), r('b', 3, 30, 200)])!;
  assert.equal(s.arrivalRate, 4);
  assert.equal(s.promptTokens, 175);
  assert.equal(s.requests, 40);
  // Each router counts with the larger of its long and short window's rate (a burst shows at once).
  const burst = aggregateStats([{ ...r('a', 1, 10, 100), arrival_rate_recent: 2.5 }, { ...r('b', 3, 30, 200), arrival_rate_recent: 0.5 }])!;
  assert.equal(burst.arrivalRate, 5.5);
});

test('a per-batch-size step table in a load report gives several points at once', () => {
  const e = new PerfEstimator();
  e.observe([{ ...load({}), decode_step_ms_by_batch: { 1: 8, 2: 10, 4: 14, 8: 22 } } as WorkerLoad]);
  const s = e.decodeStep!;
  assert.ok(Math.abs(s.baseMs - 6) < 1e-9 && Math.abs(s.perSeqMs - 2) < 1e-9, JSON.stringify(s));
});
