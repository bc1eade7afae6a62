// The planner's decision function alone: measured numbers in, split and reason out.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { assignRoles, decide, splitCapacity, type PlannerInput, type PlannerWorker } from '../src/decision.ts';

const pd: PlannerWorker[] = [
  { id: 'a', role: 'prefill', pinned: false },
  { id: 'b', role: 'decode', pinned: false },
];
const uu: PlannerWorker[] = [
  { id: 'a', role: 'unified', pinned: false },
  { id: 'b', role: 'unified', pinned: false },
];

// A 2-core machine's kind of numbers: 2000 prompt tok/s per worker, decode step 20 ms + 2 ms/seq.
const perf = { prefillTokensPerS: 2000, decodeStep: { baseMs: 20, perSeqMs: 2 }, prefillChunk: 256 };
const slo = { ttftMs: 1000, tpotMs: 100 };
const input = (o: Partial<PlannerInput>): PlannerInput => ({
  now: 1_000_000, workers: pd, perf, slo,
  stats: { arrivalRate: 1, promptTokens: 200, outputTokens: 100, requests: 100 }, ...o,
});

test('a prefill-bound load on 1 prefill + 1 decode moves both workers to unified (2x the prefill capacity)', () => {
  const d = decide(input({ stats: { arrivalRate: 50, promptTokens: 800, outputTokens: 20, requests: 100 } }));
  assert.equal(d.action, 'change');
  assert.deepEqual(d.counts, { prefill: 0, decode: 0, unified: 2 });
  assert.deepEqual(d.changes, [{ id: 'a', from: 'prefill', to: 'unified' }, { id: 'b', from: 'decode', to: 'unified' }]);
  assert.ok(d.best!.capacity > d.current!.capacity * 1.5, JSON.stringify(d));
  assert.match(d.reason, /1P\+1D -> 2U: the current split is overloaded/);
  assert.match(d.reason, /50 req\/s x 800 prompt/);
});

test('a light load keeps the split (every split serves it; hysteresis)', () => {
  const d = decide(input({ stats: { arrivalRate: 0.2, promptTokens: 100, outputTokens: 50, requests: 40 } }));
  assert.equal(d.action, 'keep');
  assert.deepEqual(d.changes, []);
  assert.match(d.reason, /within 15% of the best/);
});

test('long prompts under a tight TTFT make unified workers miss it: the planner disaggregates', () => {
  // Each prompt is 16 chunks of 64 tokens; on a unified worker every chunk waits for a decode step.
  const d = decide(input({
    workers: uu, perf: { ...perf, prefillTokensPerS: 4000, prefillChunk: 64 }, slo: { ttftMs: 600, tpotMs: 100 },
    stats: { arrivalRate: 2, promptTokens: 1024, outputTokens: 200, requests: 100 },
  }));
  assert.equal(d.action, 'change', d.reason);
  // One dedicated prefill worker takes every prompt; the other keeps decoding (as unified: one
  // move instead of two for the same capacity).
  assert.deepEqual(d.counts, { prefill: 1, decode: 0, unified: 1 });
  assert.equal(d.changes.length, 1);
  assert.equal(d.current!.capacity, 0);
  assert.ok(d.best!.capacity > 0);
});

test('no change inside the dwell time, even when a better split exists', () => {
  const stats = { arrivalRate: 50, promptTokens: 800, outputTokens: 20, requests: 100 };
  const d = decide(input({ stats, lastChangeMs: 1_000_000 - 5_000, config: { minDwellMs: 30_000 } }));
  assert.equal(d.action, 'keep');
  assert.match(d.reason, /^dwell: last change 5 s ago/);
  assert.equal(decide(input({ stats, lastChangeMs: 1_000_000 - 31_000, config: { minDwellMs: 30_000 } })).action, 'change');
});

test('hysteresis: a gain below the threshold does not move anything', () => {
  const stats = { arrivalRate: 50, promptTokens: 800, outputTokens: 20, requests: 100 };
  // 2U doubles the capacity here: a 150% threshold holds, a 50% one does not.
  assert.equal(decide(input({ stats, config: { hysteresis: 1.5 } })).action, 'keep');
  assert.equal(decide(input({ stats, config: { hysteresis: 0.5 } })).action, 'change');
});

test('pinned workers keep their role; all pinned means nothing moves', () => {
  const stats = { arrivalRate: 50, promptTokens: 800, outputTokens: 20, requests: 100 };
  const d = decide(input({ stats, workers: [{ id: 'a', role: 'prefill', pinned: true }, { id: 'b', role: 'decode', pinned: false }] }));
  assert.equal(d.roles.a, 'prefill');
  assert.ok(d.changes.every((c) => c.id !== 'a'));
  const all = decide(input({ stats, workers: pd.map((w) => ({ ...w, pinned: true })) }));
  assert.equal(all.action, 'keep');
  assert.equal(all.reason, 'every worker is pinned');
});

test('without enough observations or speeds the split stays', () => {
  assert.match(decide(input({ stats: undefined })).reason, /too few requests observed \(0 < 8\)/);
  assert.match(decide(input({ stats: { arrivalRate: 9, promptTokens: 9, outputTokens: 9, requests: 3 } })).reason, /too few requests/);
  assert.match(decide(input({ perf: { prefillChunk: 256 } })).reason, /no prefill or decode speed/);
  assert.match(decide(input({ perf: { ...perf, prefillTokensPerS: Number.NaN } })).reason, /no prefill or decode speed/);
  assert.match(decide(input({ stats: { arrivalRate: 0, promptTokens: 9, outputTokens: 9, requests: 30 } })).reason, /no load/);
  assert.equal(decide(input({ workers: [] })).reason, 'no workers');
});

test('capacity model: dedicated decode is bounded by the TPOT SLO and the sequence limit', () => {
  const m = { lp: 100, lo: 100, rp: 1000, step: { baseMs: 20, perSeqMs: 10 }, chunk: 256, slo: { ttftMs: 1000, tpotMs: 100 }, rho: 0.8 };
  // Decode: B = floor((100-20)/10) = 8 -> 8 seq per 100 ms = 80 tok/s -> 0.8 req/s. Prefill: 0.8*1000/100 = 8 req/s.
  assert.equal(Math.round(splitCapacity({ prefill: 1, decode: 1, unified: 0 }, m, 16) * 1000) / 1000, 0.8);
  // Sequence limit 4: 4 seq per 60 ms = 66.7 tok/s.
  assert.equal(Math.round(splitCapacity({ prefill: 1, decode: 1, unified: 0 }, m, 4) * 1000) / 1000, 0.667);
  // No decode-capable worker: nothing is served.
  assert.equal(splitCapacity({ prefill: 2, decode: 0, unified: 0 }, m, 16), 0);
  // A prompt that alone takes longer than the TTFT SLO cannot be served by any split.
  assert.equal(splitCapacity({ prefill: 1, decode: 1, unified: 0 }, { ...m, lp: 2000 }, 16), 0);
});

test('assignRoles keeps workers in their role where the target allows', () => {
  const ws: PlannerWorker[] = [
    { id: 'c', role: 'decode', pinned: false }, { id: 'a', role: 'prefill', pinned: false }, { id: 'b', role: 'decode', pinned: false },
  ];
  assert.deepEqual(assignRoles(ws, { prefill: 1, decode: 1, unified: 1 }), { a: 'prefill', b: 'decode', c: 'unified' });
  assert.deepEqual(assignRoles(ws, { prefill: 2, decode: 1, unified: 0 }), { a: 'prefill', b: 'decode', c: 'prefill' });
});

test('a prompt backlog on the workers counts as demand: an idle-looking arrival rate with a deep queue moves the split', () => {
  const stats = { arrivalRate: 0.5, promptTokens: 800, outputTokens: 20, requests: 100 };
  assert.equal(decide(input({ stats })).action, 'keep');
  // 40 prompts' worth of tokens queued: clearing them within one TTFT needs 40 req/s more.
  const d = decide(input({ stats: { ...stats, queuedPrefillTokens: 32_000 } }));
  assert.equal(d.action, 'change');
  assert.match(d.reason, /backlog 32000 tokens \(40 req\/s\)/);
});
