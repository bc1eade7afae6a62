// The router's rolling statistics window, on a fake clock.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { combineObservers, LoadStats } from '../src/load-stats.ts';

test('the window counts arrivals, finished requests and refusals, and forgets what is older', () => {
  let now = 0;
  const s = new LoadStats({ windowMs: 10_000, slo: { ttftMs: 100, tpotMs: 20 }, now: () => now });
  now = 10_000;
  for (let i = 0; i < 4; i++) s.arrived();
  s.finished({ promptTokens: 10, outputTokens: 5, ttftMs: 50, tpotMs: 10 });
  s.finished({ promptTokens: 30, outputTokens: 15, ttftMs: 150, tpotMs: 10 });
  s.rejected();
  const a = s.snapshot('r');
  assert.equal(a.arrival_rate, 0.4);
  assert.equal(a.finished, 2);
  assert.equal(a.prompt_tokens_mean, 20);
  assert.equal(a.output_tokens_mean, 10);
  assert.equal(a.slo_attainment, 0.5);
  assert.equal(a.rejected, 1);
  assert.equal(a.slo_ttft_ms, 100);
  now = 25_000;
  const b = s.snapshot('r');
  assert.deepEqual([b.arrivals, b.finished, b.rejected, b.slo_attainment], [0, 0, 0, 1]);
});

test('combined observers all run, even when one throws', () => {
  const seen: string[] = [];
  const o = combineObservers({ onRequestStart: () => { throw new Error('boom'); } }, { onRequestStart: () => seen.push('b') });
  assert.throws(() => o.onRequestStart!({ requestId: 'x', endpoint: 'completions', promptTokens: 1, maxTokens: 1, stream: false }), /boom/);
  assert.deepEqual(seen, ['b']);
});

test('a burst shows in the recent arrival rate at once, and in the long window only gradually', () => {
  let now = 0;
  const s = new LoadStats({ windowMs: 30_000, recentWindowMs: 10_000, now: () => now });
  now = 60_000;
  // Quiet for a minute, then 15 requests in 5 s.
  for (let i = 0; i < 15; i++) { now = 55_000 + (i * 5000) / 15; s.arrived(); }
  now = 60_000;
  const a = s.snapshot('r');
  assert.equal(a.arrival_rate, 0.5);
  assert.equal(a.arrival_rate_recent, 1.5);
  // 20 s later the burst has left the short window but not the long one.
  now = 80_000;
  const b = s.snapshot('r');
  assert.equal(b.arrival_rate_recent, 0);
  assert.equal(b.arrival_rate, 0.5);
});
