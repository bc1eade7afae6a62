// The placement and admission policies on made-up worker views (no processes: the policies are pure
// functions of measured numbers; test/slo.test.ts runs them through a real cluster).
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { decidePlacement, decodeStepMs, LOCAL_SHARE_WINDOW_MS, localShareWindowMs, MAX_LOCAL_SHARE_WINDOW_MS, minStepSlopeMs, stepMsAt, type PlacementInput, type WorkerView } from '../src/placement.ts';
import { BATCH_LIMIT_FROM_SLO_SHARE, batchLimit, judgeAdmission, MIN_BATCH_GROWTH, type AdmissionInput } from '../src/admission.ts';
import { CALIBRATION_BOUNDS, CALIBRATION_SAMPLES, MIN_CALIBRATION_SAMPLES, EstimateCalibration } from '../src/estimate-calibration.ts';
import { LoadLedger } from '../src/load-ledger.ts';
import type { WorkerInfo } from '@pdserve/common';

function worker(over: Partial<WorkerView> = {}): WorkerView {
  return {
    id: 'w', role: 'prefill', queuedPrefillTokens: 0, prefillTokensPerS: 400, batch: 0,
    decodeStepMsByBatch: new Map(), prefillChunkTokens: 256, localPrefillShare: 0, ...over,
  };
}

const decodeWorker = (over: Partial<WorkerView> = {}) =>
  worker({ id: 'd', role: 'decode', prefillTokensPerS: 400, decodeStepMsByBatch: new Map([[1, 40], [8, 70], [16, 100]]), ...over });

function input(over: Partial<PlacementInput> = {}): PlacementInput {
  return { promptTokens: 100, decode: decodeWorker(), prefillers: [worker({ id: 'p' })], transfer: { fixedMs: 2, msPerToken: 0.01 }, tpotSloMs: 150, ...over };
}

describe('placement policy', () => {
  test('an idle cluster prefills locally: no transfer, nothing to stall', () => {
    const p = decidePlacement(input(), { mode: 'auto' });
    assert.equal(p.where, 'local');
    assert.equal(p.reason, 'faster');
    assert.equal(p.prefillWorker, 'd');
    // 100 tokens at 400 tok/s plus one decode step at batch 1.
    assert.equal(Math.round(p.ttftMs!), 250 + 40);
  });

  test('a prompt above the local threshold goes remote', () => {
    const p = decidePlacement(input({ promptTokens: 600 }), { mode: 'auto', localMaxTokens: 512 });
    assert.deepEqual([p.where, p.reason, p.prefillWorker], ['remote', 'over_threshold', 'p']);
    assert.equal(decidePlacement(input({ promptTokens: 512 }), { mode: 'auto', localMaxTokens: 512 }).where, 'local');
  });

  test('a long prompt on a busy decode worker goes remote: its chunks would push the batch past the TPOT SLO', () => {
    const busy = decodeWorker({ batch: 12 });
    const short = decidePlacement(input({ decode: busy, promptTokens: 64 }), { mode: 'auto' });
    assert.equal(short.where, 'local', 'a short prompt fits the headroom');
    const long = decidePlacement(input({ decode: busy, promptTokens: 1024 }), { mode: 'auto' });
    assert.deepEqual([long.where, long.reason], ['remote', 'tpot_headroom']);
    // With a looser TPOT SLO it fits the headroom, and goes remote only because that is faster:
    // four chunks locally wait for four decode steps of the batch.
    const loose = decidePlacement(input({ decode: busy, promptTokens: 1024, tpotSloMs: 1000 }), { mode: 'auto' });
    assert.deepEqual([loose.where, loose.reason], ['remote', 'faster']);
  });

  test("the running requests' TPOT slack, where known, decides the headroom", () => {
    // 100 tokens at 400 tok/s: 250 ms of stall.
    const roomy = decidePlacement(input({ decode: decodeWorker({ batch: 8, localPrefillShare: 0.45, tpotSlackMs: 300 }) }), { mode: 'auto' });
    assert.equal(roomy.where, 'local', 'slack for the stall: the share alone would have sent it remote');
    const tight = decidePlacement(input({ decode: decodeWorker({ batch: 2, tpotSlackMs: 200 }) }), { mode: 'auto' });
    assert.deepEqual([tight.where, tight.reason], ['remote', 'tpot_headroom']);
  });

  test('recent local prefills use up the headroom', () => {
    const tired = decodeWorker({ batch: 8, localPrefillShare: 0.45 });
    const p = decidePlacement(input({ decode: tired, promptTokens: 64 }), { mode: 'auto' });
    assert.deepEqual([p.where, p.reason], ['remote', 'tpot_headroom']);
  });

  test("a local prefill's stall is weighed over a request's decode lifetime, not 4 s", () => {
    assert.equal(localShareWindowMs(96, 100), 9600, '96 output tokens at 100 ms a step');
    assert.equal(localShareWindowMs(8, 100), LOCAL_SHARE_WINDOW_MS, 'never shorter than the floor');
    assert.equal(localShareWindowMs(4096, 100), MAX_LOCAL_SHARE_WINDOW_MS, 'nor longer than the ledger keeps work');
    assert.equal(localShareWindowMs(undefined, 100), LOCAL_SHARE_WINDOW_MS);
    assert.equal(localShareWindowMs(96, undefined), LOCAL_SHARE_WINDOW_MS);
    // A batch of 8 (~72 ms a step at 9; SLO 150, so local prefills may stretch it to 120 ms) that
    // took 1.4 s of local prefills in the last few seconds, and a 160-token prompt (0.4 s at 400
    // tok/s) on top. Over 4 s that is 45% of the time (134 ms per token: remote); over the 96-token
    // lifetime of the requests it stalls (~6.9 s), 26% (97 ms: local).
    const d = decodeWorker({ batch: 8, prefillTokensPerS: 400, decodeStepMsByBatch: new Map([[1, 40], [8, 70], [16, 100]]) });
    const over4s = decidePlacement(input({ decode: { ...d, localPrefillShare: 1400 / LOCAL_SHARE_WINDOW_MS }, promptTokens: 160 }), { mode: 'auto' });
    assert.deepEqual([over4s.where, over4s.reason], ['remote', 'tpot_headroom']);
    const window = localShareWindowMs(96, decodeStepMs(d, 9));
    assert.ok(window > 6800 && window < 7000, `window ${window}`);
    const overLifetime = decidePlacement(input({ decode: { ...d, localPrefillShare: 1400 / window, localShareWindowMs: window }, promptTokens: 160 }), { mode: 'auto' });
    assert.deepEqual([overLifetime.where, overLifetime.reason], ['local', 'faster']);
  });

  test('tokens queued on the decode worker make the prefill worker faster, and the other way round', () => {
    const queuedHere = decidePlacement(input({ decode: decodeWorker({ queuedPrefillTokens: 2000 }) }), { mode: 'auto' });
    assert.deepEqual([queuedHere.where, queuedHere.reason], ['remote', 'faster']);
    const queuedThere = decidePlacement(input({ prefillers: [worker({ id: 'p', queuedPrefillTokens: 2000 })] }), { mode: 'auto' });
    assert.equal(queuedThere.where, 'local');
  });

  test('the prefill worker with the fewest queued tokens (per its rate) is chosen', () => {
    const p = decidePlacement(input({
      promptTokens: 2000,
      prefillers: [worker({ id: 'p1', queuedPrefillTokens: 3000 }), worker({ id: 'p2', queuedPrefillTokens: 1000 }), worker({ id: 'p3', queuedPrefillTokens: 1500, prefillTokensPerS: 2000 })],
    }), { mode: 'remote' });
    assert.deepEqual([p.where, p.prefillWorker, p.reason], ['remote', 'p3', 'forced']);
  });

  test('forced modes, and no prefill worker at all', () => {
    assert.deepEqual(Object.values(pick(decidePlacement(input(), { mode: 'remote' }))), ['remote', 'forced']);
    assert.deepEqual(Object.values(pick(decidePlacement(input({ promptTokens: 4000, decode: decodeWorker({ batch: 15 }) }), { mode: 'local' }))), ['local', 'forced']);
    assert.deepEqual(Object.values(pick(decidePlacement(input({ prefillers: [] }), { mode: 'remote' }))), ['local', 'no_prefill_worker']);
    assert.deepEqual(Object.values(pick(decidePlacement(input({ prefillers: [], decode: decodeWorker({ role: 'unified' }) }), { mode: 'auto' }))), ['local', 'unified']);
  });

  test('before anything is measured the comparison still works, but gives no estimate to refuse on', () => {
    const cold = input({ decode: worker({ id: 'd', role: 'decode', prefillTokensPerS: undefined }), prefillers: [worker({ id: 'p', prefillTokensPerS: undefined })] });
    const p = decidePlacement(cold, { mode: 'auto' });
    assert.equal(p.where, 'local');
    assert.equal(p.ttftMs, undefined);
    assert.equal(p.tpotMs, undefined);
  });

  test('step time by batch: a robust line through the sizes measured, not one slow reading', () => {
    const t = new Map([[1, 40], [8, 70], [16, 100]]);
    const at8 = stepMsAt(t, 8)!;
    assert.ok(at8 > 65 && at8 < 72, `batch 8: ${at8}`);
    const at12 = stepMsAt(t, 12)!;
    assert.ok(at12 > 80 && at12 < 90, `batch 12: ${at12}`);
    const at24 = stepMsAt(t, 24)!;
    assert.ok(at24 > 125 && at24 < 135, `batch 24: ${at24}`);
    assert.equal(stepMsAt(new Map([[4, 50]]), 9), 50);
    assert.equal(stepMsAt(new Map([[1, 60], [2, 50]]), 3), 55, 'noise making bigger batches look faster is not extrapolated');
    // A decode worker's table from a chat run here: batch 8's average kept one slow reading, and
    // admission (refusing at a predicted 139 ms against a 150 ms SLO) kept the batch from 8 after.
    const measured = new Map([[1, 47.41], [2, 51.9], [3, 56.09], [4, 60.36], [5, 69.14], [6, 71.6], [7, 82.88], [8, 138.5], [9, 102.01], [10, 89.35]]);
    const at8m = stepMsAt(measured, 8)!;
    assert.ok(at8m > 75 && at8m < 90, `batch 8 from the chat run: ${at8m}`);
    assert.equal(stepMsAt(new Map(), 3), undefined);
  });

  test('a table that cannot give a slope takes the prefill rate\'s cost per token as the least a sequence adds', () => {
    // A fresh worker: the warmup measured batch 1 only. Flat, a burst's batch of 8 looked as cheap
    // as batch 1 (40 ms) where its steps took 85-105 ms.
    const fresh = new Map([[1, 40]]);
    assert.equal(stepMsAt(fresh, 8), 40);
    assert.equal(minStepSlopeMs(400), 2.5);
    assert.equal(minStepSlopeMs(undefined), 0);
    assert.equal(stepMsAt(fresh, 8, 2.5), 57.5);
    assert.equal(decodeStepMs({ decodeStepMsByBatch: fresh, prefillTokensPerS: 400 }, 8), 57.5);
    // The recent level, growing by the floor: recent steps at batch 2 running at 60 ms.
    assert.equal(decodeStepMs({ decodeStepMsByBatch: fresh, prefillTokensPerS: 400, recentDecodeStep: { batch: 2, ms: 60 } }, 8), 60 + 6 * 2.5);
    // A measured slope steeper than the floor is kept; no prefill measured: no floor.
    const t = new Map([[1, 40], [8, 70], [16, 100]]);
    assert.equal(stepMsAt(t, 12, 2.5), stepMsAt(t, 12));
    assert.equal(decodeStepMs({ decodeStepMsByBatch: fresh }, 8), 40);
    // An older worker with no table: its recent level, growing by the floor past its batch.
    assert.equal(decodeStepMs({ decodeStepMsByBatch: new Map(), prefillTokensPerS: 400, recentDecodeStep: { batch: 3, ms: 50 } }, 6), 57.5);
  });

  test('step time at the level of the latest steps: a stale table ages out within a few steps', () => {
    // A decode worker's table from a chat run here (12 of 16 requests refused at 4 req/s): its
    // entries were measured while another process held the cores, then admission, refusing at a
    // predicted 144 ms for batch 6, kept the batch at 5, whose recent steps ran at ~65 ms.
    const stale = new Map([[1, 98], [2, 104], [3, 112], [4, 121], [5, 130]]);
    assert.ok(stepMsAt(stale, 6)! > 135, 'the table alone refuses at a 150 ms SLO with its 10% margin');
    const now = decodeStepMs({ decodeStepMsByBatch: stale, recentDecodeStep: { batch: 5, ms: 65 } }, 6)!;
    assert.ok(now > 65 && now < 75, `batch 6 at the recent level: ${now}`);
    // The other way too: recent steps slower than the table (the machine got busy) raise it.
    const busy = decodeStepMs({ decodeStepMsByBatch: new Map([[1, 40], [8, 70], [16, 100]]), recentDecodeStep: { batch: 8, ms: 140 } }, 9)!;
    assert.ok(busy > 140 && busy < 150, `busy: ${busy}`);
    // No recent steps, or a worker with no table yet: the table alone, or the recent level flat.
    assert.equal(decodeStepMs({ decodeStepMsByBatch: stale }, 6), stepMsAt(stale, 6));
    assert.equal(decodeStepMs({ decodeStepMsByBatch: new Map(), recentDecodeStep: { batch: 3, ms: 50 } }, 6), 50);
    // One odd report cannot move the level by more than 4x from the table's line either way.
    assert.equal(decodeStepMs({ decodeStepMsByBatch: new Map([[4, 50]]), recentDecodeStep: { batch: 4, ms: 1 } }, 4), 12.5);
  });

  test('when a burst starts, the last 16 steps lift the level the 10 s window still holds down', () => {
    // Measured at a 9 req/s burst on a fresh worker: its 10 s window said batch 1.25 at 38 ms while
    // the batch stood at 10 and its last steps took ~115 ms.
    const w = { decodeStepMsByBatch: new Map([[1, 33]]), prefillTokensPerS: 300, recentDecodeStep: { batch: 1.25, ms: 38 } };
    const windowOnly = decodeStepMs(w, 11)!;
    assert.ok(windowOnly < 80, `the window alone: ${windowOnly}`);
    const both = decodeStepMs({ ...w, latestDecodeStep: { batch: 10, ms: 115 } }, 11)!;
    assert.ok(both > 115 && both < 130, `with the last 16 steps: ${both}`);
    // The slower anchor wins both ways: a quiet last 16 steps do not lower a busy window's level.
    const quietLatest = decodeStepMs({ ...w, recentDecodeStep: { batch: 10, ms: 115 }, latestDecodeStep: { batch: 2, ms: 36 } }, 11)!;
    assert.ok(Math.abs(quietLatest - both) < 1e-9, `${quietLatest} vs ${both}`);
  });

  test('placement and admission price the batch at the recent level', () => {
    const stale = new Map([[1, 98], [2, 104], [3, 112], [4, 121], [5, 130]]);
    const inp = input({ decode: decodeWorker({ batch: 5, decodeStepMsByBatch: stale, recentDecodeStep: { batch: 5, ms: 65 } }), tpotSloMs: 150 });
    const p = decidePlacement(inp, { mode: 'remote' });
    assert.ok(p.tpotMs! < 75, `tpot estimate ${p.tpotMs}`);
    assert.equal(judgeAdmission({ slo: { ttftMs: 2000, tpotMs: 150 }, placement: p, queuedPrefillTokens: 0, decodeBatch: 5, decodeSeats: 16 }, { sloAdmission: true }), undefined);
    const old = decidePlacement({ ...inp, decode: { ...inp.decode, recentDecodeStep: undefined } }, { mode: 'remote' });
    assert.equal(judgeAdmission({ slo: { ttftMs: 2000, tpotMs: 150 }, placement: old, queuedPrefillTokens: 0, decodeBatch: 5, decodeSeats: 16 }, { sloAdmission: true })?.code, 'slo_tpot', 'without the recent steps the stale table refuses');
  });
});

function pick(p: { where: string; reason: string }) {
  return { where: p.where, reason: p.reason };
}

describe('admission policy', () => {
  const base = (over: Partial<AdmissionInput> = {}): AdmissionInput => ({
    slo: { ttftMs: 1000, tpotMs: 100 },
    placement: { where: 'remote', prefillWorker: 'p', reason: 'faster', ttftMs: 500, tpotMs: 60 },
    queuedPrefillTokens: 200, decodeBatch: 3, decodeSeats: 16, ...over,
  });
  const on = { sloAdmission: true };

  test('admits what the estimates say meets the SLO', () => {
    assert.equal(judgeAdmission(base(), on), undefined);
  });

  test('refuses a predicted TTFT miss with slo_ttft and a Retry-After from the excess', () => {
    const r = judgeAdmission(base({ placement: { where: 'remote', prefillWorker: 'p', reason: 'faster', ttftMs: 3400, tpotMs: 60 } }), on)!;
    assert.equal(r.code, 'slo_ttft');
    assert.equal(r.retryAfterS, 3);
    assert.match(r.message, /3400 ms.*SLO of 1000 ms/);
    // The message says what the estimate assumed, so an operator can check a refusal.
    const withBasis = judgeAdmission(base({ placement: { where: 'remote', prefillWorker: 'p', reason: 'faster', ttftMs: 3400, tpotMs: 60, ttftBasis: { prefillTokensPerS: 412.4, transferMs: 12.2 } } }), on)!;
    assert.match(withBasis.message, /200 prompt tokens ahead on the remote prefill, prefilling at 412 tokens\/s, KV transfer 12 ms\)/);
    const p = decidePlacement(input({ promptTokens: 100, prefillers: [worker({ id: 'p', prefillTokensPerS: 500 })] }), { mode: 'remote' });
    assert.deepEqual(p.ttftBasis, { prefillTokensPerS: 500, transferMs: 2 + 0.01 * 100 });
    // Within the SLO but without the margin for the estimate's error.
    assert.equal(judgeAdmission(base({ placement: { where: 'remote', prefillWorker: 'p', reason: 'faster', ttftMs: 950, tpotMs: 60 } }), on)!.code, 'slo_ttft');
  });

  test("the TTFT estimate is judged times its measured error", () => {
    const at = (ttftMs: number, ttftCorrection: number) => judgeAdmission(base({ placement: { where: 'remote', prefillWorker: 'p', reason: 'faster', ttftMs, tpotMs: 60 }, ttftCorrection }), on);
    assert.equal(at(1000, 0.8), undefined, 'estimates running 20% high: 1000 ms is 800 ms');
    assert.equal(at(1000, 1)?.code, 'slo_ttft');
    const r = at(800, 1.5)!;
    assert.equal(r.code, 'slo_ttft', 'estimates running 50% low: 800 ms is 1200 ms');
    assert.match(r.message, /predicted time to first token 1200 ms \(.*the estimate times 1\.50, its measured error\)/);
  });

  test('refuses a predicted TPOT miss with slo_tpot', () => {
    const r = judgeAdmission(base({ placement: { where: 'local', prefillWorker: 'd', reason: 'faster', ttftMs: 100, tpotMs: 95 } }), on)!;
    assert.equal(r.code, 'slo_tpot');
    assert.equal(r.retryAfterS, 1);
  });

  test("refuses a local prefill that would stall a running request past its TPOT SLO (slo_tpot), not a remote one", () => {
    const local = { where: 'local' as const, prefillWorker: 'd', reason: 'faster' as const, ttftMs: 300, tpotMs: 60, localPrefillMs: 400 };
    assert.equal(judgeAdmission(base({ placement: local, decodeSlack: { slackMs: 900, requests: 3 } }), on), undefined, '400 ms of stall fits 900 ms of slack');
    const r = judgeAdmission(base({ placement: local, decodeSlack: { slackMs: 250, requests: 3 } }), on)!;
    assert.equal(r.code, 'slo_tpot');
    assert.match(r.message, /prefilling this prompt \(400 ms\).*its 3 running requests.*250 ms left within its TPOT SLO/);
    assert.equal(r.retryAfterS, 1);
    const remote = { ...local, where: 'remote' as const, prefillWorker: 'p', localPrefillMs: undefined };
    assert.equal(judgeAdmission(base({ placement: remote, decodeSlack: { slackMs: -50, requests: 3 } }), on), undefined, 'a remote prefill stalls nobody');
    assert.equal(judgeAdmission(base({ placement: local, decodeSlack: { slackMs: 0, requests: 3 }, queuedPrefillTokens: 0, decodeBatch: 0 }), on), undefined, 'never onto an idle worker');
  });

  test('refuses a batch past twice the largest the worker has measured, or 2 past it after a refusal (slo_tpot)', () => {
    // A fresh worker measured batch 1 (its warmup); it may grow to 1 + 2 = 3, then only as it measures
    // (the estimated step, 60 ms, is over a quarter of the 100 ms SLO).
    assert.equal(MIN_BATCH_GROWTH, 2);
    assert.deepEqual([0, 1, 2, 3, 4, 8].map((m) => batchLimit(m, false)), [2, 3, 4, 6, 8, 16]);
    assert.deepEqual([0, 1, 2, 3, 4, 8].map((m) => batchLimit(m, true)), [2, 3, 4, 5, 6, 10]);
    assert.equal(judgeAdmission(base({ decodeBatch: 2, largestMeasuredBatch: 1 }), on), undefined, 'batch 3: admitted');
    const r = judgeAdmission(base({ decodeBatch: 3, largestMeasuredBatch: 1 }), on)!;
    assert.equal(r.code, 'slo_tpot');
    assert.match(r.message, /a batch of 4 .* past 3, .* the largest it has measured a step at \(1\)/);
    assert.equal(r.retryAfterS, 1);
    // Without a recent refusal a worker may double what it measured: a Poisson bunch at a sustainable
    // rate took batch 4 -> 7 and 8 -> 11 (refused with a fixed step of 2, BENCHMARKS.md, issue 8).
    assert.equal(judgeAdmission(base({ decodeBatch: 6, largestMeasuredBatch: 4 }), on), undefined, 'batch 7 after 4');
    assert.equal(judgeAdmission(base({ decodeBatch: 15, largestMeasuredBatch: 8 }), on), undefined, 'batch 16 after 8');
    assert.equal(judgeAdmission(base({ decodeBatch: 10, largestMeasuredBatch: 5 }), on)?.code, 'slo_tpot', 'batch 11 after 5');
    // After a refusal (the cluster is at its limit), 2 at a time.
    const after = judgeAdmission(base({ decodeBatch: 6, largestMeasuredBatch: 4, refusedRecently: true }), on)!;
    assert.equal(after.code, 'slo_tpot');
    assert.match(after.message, /past 6, .*\(4, after a refusal\)/);
    assert.equal(judgeAdmission(base({ decodeBatch: 5, largestMeasuredBatch: 4, refusedRecently: true }), on), undefined, 'batch 6 after 4');
    assert.equal(judgeAdmission(base({ decodeBatch: 3, largestMeasuredBatch: 1, slo: { ttftMs: 1000 } }), on), undefined, 'no TPOT target: nothing to protect');
    assert.equal(judgeAdmission(base({ decodeBatch: 0, queuedPrefillTokens: 0, largestMeasuredBatch: 0 }), on), undefined, 'never onto an idle worker');
    assert.equal(judgeAdmission(base({ decodeBatch: 5 }), on), undefined, 'a worker that reports no table: no limit');
    assert.equal(BATCH_LIMIT_FROM_SLO_SHARE, 0.25);
    const fast = { where: 'remote' as const, prefillWorker: 'p', reason: 'faster' as const, ttftMs: 100, tpotMs: 20 };
    assert.equal(judgeAdmission(base({ placement: fast, decodeBatch: 9, largestMeasuredBatch: 1 }), on), undefined, 'a 20 ms step against 100 ms: even 4x off it fits');
    const unmeasured = { ...fast, tpotMs: undefined };
    assert.equal(judgeAdmission(base({ placement: unmeasured, decodeBatch: 5, largestMeasuredBatch: 0 }), on), undefined, 'nothing measured: no estimate, no refusal');
  });

  test('refuses with overloaded when every decode slot is taken and the request has an SLO', () => {
    assert.equal(judgeAdmission(base({ decodeBatch: 16 }), on)!.code, 'overloaded');
    assert.equal(judgeAdmission(base({ decodeBatch: 16, slo: { tpotMs: 500 } }), on)!.code, 'overloaded');
    assert.equal(judgeAdmission(base({ decodeBatch: 16, slo: undefined }), on), undefined, 'without a latency target it may wait for a slot');
  });

  test('never refuses onto an idle cluster, nor without an estimate, nor with admission off', () => {
    const hopeless = { where: 'remote' as const, prefillWorker: 'p', reason: 'faster' as const, ttftMs: 99_000, tpotMs: 9_000 };
    assert.equal(judgeAdmission(base({ placement: hopeless, queuedPrefillTokens: 0, decodeBatch: 0 }), on), undefined);
    assert.equal(judgeAdmission(base({ placement: { ...hopeless, ttftMs: undefined, tpotMs: undefined } }), on), undefined);
    assert.equal(judgeAdmission(base({ placement: hopeless }), { sloAdmission: false }), undefined);
    assert.equal(judgeAdmission(base({ placement: hopeless, slo: undefined }), on), undefined);
  });

  test('the cluster state in Redis: closed refuses everything, throttled only onto a busy prefill worker, even with admission off', () => {
    const off = { sloAdmission: false };
    assert.equal(judgeAdmission(base({ cluster: { state: 'closed', reason: 'maintenance', updated_ms: 0 } }), off)!.code, 'admission_closed');
    assert.equal(judgeAdmission(base({ cluster: { state: 'throttled', reason: '', updated_ms: 0 } }), off)!.code, 'admission_throttled');
    assert.equal(judgeAdmission(base({ cluster: { state: 'throttled', reason: '', updated_ms: 0 }, queuedPrefillTokens: 0 }), off), undefined);
  });
});

describe('load ledger', () => {
  const info = (load: Partial<WorkerInfo['load']>, heartbeat: number): WorkerInfo => ({
    id: 'd', role: 'decode', grpc_address: 'x:1', metrics_url: '', model: 'm', started_at: 0, last_heartbeat_ms: heartbeat, ttl_ms: 3000, heartbeat_ms: 1000,
    state: 'ready', healthy: true,
    load: { queue_len: 0, running: 0, waiting: 0, free_kv_blocks: 10, total_kv_blocks: 10, kv_block_tokens: 16, ...load },
  } as WorkerInfo);

  test('counts what it sent until the reports catch up, and discounts what finished after a report', () => {
    let now = 10_000;
    const ledger = new LoadLedger(() => now);
    const a = ledger.begin('d', 'p', 300);
    const b = ledger.begin('d', 'd', 50, 125);
    assert.equal(ledger.view(info({}, now)).batch, 2, 'a stale empty report: the router knows of two');
    assert.equal(ledger.view(info({}, now)).queuedPrefillTokens, 50);
    assert.equal(ledger.localShare('d'), 125 / 4000);
    // A report taken while both ran, then both finish: the report still says 2, the router knows better.
    const report = info({ running: 2, queued_prefill_tokens: 50 }, now);
    now += 100;
    a.ended(); b.ended(); b.ended();
    assert.equal(ledger.view(report).batch, 0);
    assert.equal(ledger.view(report).queuedPrefillTokens, 0);
    // Another router's load (in a fresh report) still counts.
    assert.equal(ledger.view(info({ running: 3, queued_prefill_tokens: 700 }, now + 1000)).batch, 3);
    now += 5000;
    assert.equal(ledger.localShare('d'), 0, 'the local share window moved on');
    assert.equal(ledger.localShare('d', 10_000), 125 / 10_000, 'a longer window still counts it');
    now += 30_000;
    assert.equal(ledger.localShare('d', 60_000), 0, 'nothing is kept past the longest window');
    ledger.retain(new Set());
    assert.equal(ledger.size, 0, 'nothing kept for workers that left');
  });

  test("passes on the worker's latest decode steps (median time, mean batch) for decodeStepMs", () => {
    const ledger = new LoadLedger(() => 0);
    assert.deepEqual(ledger.view(info({ decode_step_ms: 65, decode_batch: 5 }, 0)).recentDecodeStep, { batch: 5, ms: 65 });
    assert.equal(ledger.view(info({}, 0)).recentDecodeStep, undefined);
    // The ~10 s mean, when the worker reports it, over the median of its last 16 steps.
    assert.deepEqual(ledger.view(info({ decode_step_ms: 130, decode_batch: 5, decode_step_ms_window: 90, decode_batch_window: 4.5 }, 0)).recentDecodeStep, { batch: 4.5, ms: 90 });
  });

  test('keeps a moving mean of the output tokens of finished requests', () => {
    const ledger = new LoadLedger(() => 0);
    assert.equal(ledger.meanOutputTokens(), undefined);
    ledger.begin('d', 'p', 100).ended(100);
    assert.equal(ledger.meanOutputTokens(), 100);
    ledger.begin('d', 'p', 100).ended(200);
    assert.equal(ledger.meanOutputTokens(), 110);
    const r = ledger.begin('d', 'p', 100);
    r.ended(); r.ended(900);
    assert.equal(ledger.meanOutputTokens(), 110, 'an end without a count (a failure), and a second end, change nothing');
  });

  test('fits the transfer cost as fixed + per token from the replies', () => {
    const ledger = new LoadLedger(() => 0);
    assert.deepEqual(ledger.transferCost(), { fixedMs: 0, msPerToken: 0 });
    for (const [n, ms] of [[16, 1.2], [256, 6], [64, 2.16], [128, 3.44]]) ledger.observeTransfer(n, ms);
    const c = ledger.transferCost();
    assert.ok(Math.abs(c.fixedMs - 0.88) < 1e-6, `fixed ${c.fixedMs}`);
    assert.ok(Math.abs(c.msPerToken - 0.02) < 1e-9, `per token ${c.msPerToken}`);
  });

  test('the transfer fit is robust: a few waits unrelated to the bytes do not set its slope', () => {
    // Replies seen at the start of a chat run on shared cores: most transfers take 30-60 ms, a few
    // waited for the decode worker's local prefill chunk (300-1200 ms). A least-squares line through
    // these priced a 150-token transfer at 250-1450 ms.
    const ledger = new LoadLedger(() => 0);
    for (const [n, ms] of [[64, 31], [200, 1200], [128, 40], [230, 52], [96, 35], [180, 900], [160, 45], [256, 58], [40, 300]]) ledger.observeTransfer(n, ms);
    const c = ledger.transferCost();
    const at150 = c.fixedMs + c.msPerToken * 150;
    assert.ok(at150 > 30 && at150 < 120, `150 tokens: ${at150} ms (${JSON.stringify(c)})`);
    // Only the last 32 replies count: the waits age out.
    for (let i = 0; i < 32; i++) ledger.observeTransfer(100 + i, 30 + i * 0.1);
    const later = ledger.transferCost();
    assert.ok(later.fixedMs + later.msPerToken * 150 < 40);
  });
});

describe('estimate calibration', () => {
  test('no correction until enough admitted requests were measured, then measured over estimated, bounded', () => {
    const c = new EstimateCalibration();
    for (let i = 0; i < MIN_CALIBRATION_SAMPLES - 1; i++) c.observe('local', 1000, 800);
    assert.equal(c.factor('local'), 1, 'too few samples');
    c.observe('local', 1000, 800);
    assert.ok(Math.abs(c.factor('local') - 0.8) < 1e-9);
    assert.equal(c.factor('remote'), 1, 'each placement kind on its own');
    // The long waits weigh the most: a 100 ms estimate that took 300 ms barely moves it.
    const d = new EstimateCalibration();
    for (let i = 0; i < 7; i++) d.observe('local', 2000, 1800);
    d.observe('local', 100, 300);
    assert.ok(d.factor('local') > 0.9 && d.factor('local') < 0.92, String(d.factor('local')));
    // Bounded both ways, and one wild sample counts as at most 4x its estimate.
    const e = new EstimateCalibration();
    for (let i = 0; i < 8; i++) e.observe('remote', 100, 10_000);
    assert.equal(e.factor('remote'), CALIBRATION_BOUNDS[1]);
    for (let i = 0; i < CALIBRATION_SAMPLES; i++) e.observe('remote', 1000, 1);
    assert.equal(e.factor('remote'), CALIBRATION_BOUNDS[0], 'only the recent samples count');
    e.observe('remote', 0, 100);
    e.observe('remote', Number.NaN, 100);
    assert.equal(e.factor('remote'), CALIBRATION_BOUNDS[0], 'unusable samples are ignored');
  });
});
