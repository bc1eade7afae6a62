import { test } from 'node:test';
import assert from 'node:assert/strict';
import { computeMetrics, meetsSlo, percentile, summarize, tpotMs } from '../src/index.ts';
import type { RequestRecord } from '../src/index.ts';

const close = (a: number | null, b: number, eps = 1e-9) => assert.ok(a !== null && Math.abs(a - b) <= eps, `${a} != ${b}`);

function rec(p: Partial<RequestRecord>): RequestRecord {
  return { index: 0, kind: 'chat', ok: true, startMs: 0, endMs: 0, itlMs: [], promptTokens: 0, outputTokens: 0, targetOutputTokens: 0, chunks: 0, ...p };
}

test('percentiles interpolate linearly like numpy', () => {
  close(percentile([4, 1, 3, 2], 50), 2.5);
  close(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90), 9.1);
  close(percentile(Array.from({ length: 100 }, (_, i) => i + 1), 99), 99.01);
  close(percentile([7], 99), 7);
  assert.throws(() => percentile([], 50));
  const s = summarize([]);
  assert.equal(s.mean, null);
  assert.equal(s.count, 0);
});

test('TPOT = (e2el - ttft) / (output - 1), undefined for one token or failures', () => {
  assert.equal(tpotMs({ ok: true, ttftMs: 100, e2elMs: 1000, outputTokens: 10 }), 100);
  assert.equal(tpotMs({ ok: true, ttftMs: 50, e2elMs: 50, outputTokens: 1 }), undefined);
  assert.equal(tpotMs({ ok: false, ttftMs: 50, e2elMs: 500, outputTokens: 5 }), undefined);
});

test('SLO: every given SLO must hold; 1-token requests meet TPOT; failures never good', () => {
  const slo = { ttftMs: 200, tpotMs: 200 };
  assert.equal(meetsSlo({ ok: true, ttftMs: 200, e2elMs: 2000, outputTokens: 10 }, slo), true); // tpot exactly 200
  assert.equal(meetsSlo({ ok: true, ttftMs: 201, e2elMs: 1000, outputTokens: 10 }, slo), false);
  assert.equal(meetsSlo({ ok: true, ttftMs: 100, e2elMs: 2000, outputTokens: 9 }, slo), false); // 237.5
  assert.equal(meetsSlo({ ok: true, ttftMs: 150, e2elMs: 150, outputTokens: 1 }, slo), true);
  assert.equal(meetsSlo({ ok: false, ttftMs: 1, e2elMs: 2, outputTokens: 2 }, slo), false);
  assert.equal(meetsSlo({ ok: true, ttftMs: 100, e2elMs: 901, outputTokens: 2 }, { e2elMs: 900 }), false);
  assert.equal(meetsSlo({ ok: true, ttftMs: 100, e2elMs: 900, outputTokens: 2 }, {}), true);
});

test('goodput, attainment, throughput and stats on a hand-computed run', () => {
  const records = [
    rec({ index: 0, startMs: 0, endMs: 1000, ttftMs: 100, e2elMs: 1000, outputTokens: 10, targetOutputTokens: 10, promptTokens: 10, itlMs: [100, 100, 100, 100, 100, 100, 100, 100, 100] }),
    rec({ index: 1, startMs: 500, endMs: 2500, ttftMs: 300, e2elMs: 2000, outputTokens: 5, targetOutputTokens: 5, promptTokens: 20, itlMs: [400, 450, 400, 450] }),
    rec({ index: 2, startMs: 1000, endMs: 1050, ttftMs: 50, e2elMs: 50, outputTokens: 1, targetOutputTokens: 2, promptTokens: 30 }),
    rec({ index: 3, ok: false, error: 'HTTP 503: busy', startMs: 1500, endMs: 3000 }),
  ];
  const m = computeMetrics(records, { ttftMs: 200, tpotMs: 200 });
  assert.equal(m.completed, 3);
  assert.equal(m.failed, 1);
  assert.equal(m.good, 2); // #0 and the 1-token #2; #1 misses TTFT
  close(m.duration_s, 3);
  close(m.request_throughput, 1);
  close(m.goodput, 2 / 3);
  close(m.slo_attainment, 2 / 3);
  close(m.slo_attainment_incl_failed, 2 / 4);
  assert.equal(m.total_output_tokens, 16);
  assert.equal(m.total_input_tokens, 60);
  close(m.output_token_throughput, 16 / 3);
  close(m.total_token_throughput, 76 / 3);
  assert.equal(m.output_len_mismatches, 1);
  // TTFT [50, 100, 300]
  close(m.ttft_ms.mean, 150);
  close(m.ttft_ms.p50, 100);
  close(m.ttft_ms.p90, 260);
  close(m.ttft_ms.p99, 296);
  close(m.ttft_ms.std, Math.sqrt(35000 / 3));
  close(m.ttft_ms.max, 300);
  // TPOT [100, 425] (the 1-token request has none)
  assert.equal(m.tpot_ms.count, 2);
  close(m.tpot_ms.mean, 262.5);
  // ITL pooled: 13 gaps
  assert.equal(m.itl_ms.count, 13);
  close(m.itl_ms.p50, 100);
  close(m.e2el_ms.mean, (1000 + 2000 + 50) / 3);
  // An E2EL SLO drops request 0.
  assert.equal(computeMetrics(records, { ttftMs: 200, tpotMs: 200, e2elMs: 900 }).good, 1);
});

test('interrupted requests are neither completed nor failed; empty runs give zeros', () => {
  const m = computeMetrics([rec({ ok: false, interrupted: true, error: 'interrupted', startMs: 0, endMs: 10 })], {});
  assert.equal(m.completed, 0);
  assert.equal(m.failed, 0);
  assert.equal(m.interrupted_requests, 1);
  assert.equal(m.duration_s, 0);
  assert.equal(m.goodput, 0);
  assert.equal(m.slo_attainment, 0);
  assert.equal(m.ttft_ms.p99, null);
});
