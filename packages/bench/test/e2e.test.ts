// End-to-end runs against a fake streaming server on 127.0.0.1:0 with known token delays.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { formatSummary, runBenchCommand, runBenchmark, type BenchCommandOptions, type BenchmarkResult, type SweepResult } from '../src/index.ts';
import { startFakeServer } from './fake-server.ts';
import { checkXml } from './xml-check.ts';

const dir = mkdtempSync(join(tmpdir(), 'pdserve-bench-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

function cmd(url: string, extra: Partial<BenchCommandOptions>): BenchCommandOptions {
  return {
    url,
    workload: 'chat',
    rate: Infinity,
    requests: 6,
    sloTtftMs: 500,
    sloTpotMs: 100,
    seed: 1,
    warmup: 0,
    inputLen: 8,
    outputLen: 5,
    out: join(dir, 'out.json'),
    quiet: true,
    ...extra,
  };
}
const silent = { write: () => {}, log: () => {}, progress: false };

test('single run: TTFT and ITL match the server delays; JSON has every field', async () => {
  const srv = await startFakeServer({ ttftMs: 60, itlMs: 15, vocabSize: 100 });
  try {
    const out = join(dir, 'single.json');
    let printed = '';
    const res = (await runBenchCommand(cmd(srv.url, { out, warmup: 1, burstiness: 1 }), { ...silent, write: (t) => void (printed += t) })) as BenchmarkResult;
    assert.equal(res.completed, 6);
    assert.equal(res.failed, 0);
    assert.ok(res.ttft_ms.mean! >= 55 && res.ttft_ms.mean! < 250, `ttft ${res.ttft_ms.mean}`);
    assert.ok(res.itl_ms.p50! >= 12 && res.itl_ms.p50! < 60, `itl ${res.itl_ms.p50}`);
    assert.ok(res.tpot_ms.mean! >= 12 && res.tpot_ms.mean! < 60, `tpot ${res.tpot_ms.mean}`);
    assert.equal(res.itl_ms.count, 6 * 4);
    assert.ok(res.e2el_ms.mean! >= res.ttft_ms.mean! + 4 * 12);
    assert.equal(res.total_output_tokens, 30);
    assert.equal(res.total_input_tokens, 48);
    assert.equal(res.output_len_mismatches, 0);
    assert.equal(res.slo_attainment, 1);

    const json = JSON.parse(readFileSync(out, 'utf8')) as Record<string, unknown>;
    for (const k of ['completed', 'failed', 'duration_s', 'request_throughput', 'output_token_throughput', 'total_token_throughput', 'goodput', 'slo_attainment', 'settings', 'date', 'requests']) {
      assert.ok(k in json, `missing ${k}`);
    }
    for (const k of ['ttft_ms', 'tpot_ms', 'itl_ms', 'e2el_ms']) {
      const s = json[k] as Record<string, unknown>;
      for (const f of ['mean', 'p50', 'p90', 'p99', 'std', 'max']) assert.equal(typeof s[f], 'number', `${k}.${f}`);
    }
    const settings = json.settings as Record<string, unknown>;
    assert.equal(settings.rate, 'inf');
    assert.equal(settings.sloTtftMs, 500);
    const reqs = json.requests as Array<Record<string, unknown>>;
    assert.equal(reqs.length, 6);
    assert.equal((reqs[0].itl_ms as number[]).length, 4);
    assert.equal(reqs[0].output_tokens, 5);
    assert.match(printed, /Serving Benchmark Result/);
    assert.match(printed, /Mean TTFT \(ms\):/);

    // 1 warmup + 6 measured requests, all well-formed.
    assert.equal(srv.bodies.length, 7);
    for (const b of srv.bodies) {
      assert.equal(b.model, 'fake-model');
      assert.equal(b.stream, true);
      assert.deepEqual(b.stream_options, { include_usage: true });
      assert.equal(b.ignore_eos, true);
      assert.equal(b.max_tokens, 5);
      assert.equal(b.min_tokens, 5);
      const p = b.prompt as number[];
      assert.equal(p.length, 8);
      assert.ok(p.every((id) => Number.isInteger(id) && id >= 3 && id < 100));
    }
  } finally {
    await srv.close();
  }
});

test('chat endpoint: role-only first delta does not count as the first token', async () => {
  const srv = await startFakeServer({ ttftMs: 50, itlMs: 5 });
  try {
    const res = await runBenchmark({ url: `${srv.url}/v1/`, workload: 'summarize', endpoint: 'chat', rate: Infinity, requests: 2, warmup: 0, inputLen: 4, outputLen: 3 });
    assert.equal(res.completed, 2);
    assert.ok(res.ttft_ms.min! >= 45, `ttft ${res.ttft_ms.min}`);
    const b = srv.bodies[0];
    const msgs = b.messages as Array<{ role: string; content: string }>;
    assert.equal(msgs[0].role, 'user');
    assert.equal(msgs[0].content.split(' ').length, 4);
  } finally {
    await srv.close();
  }
});

test('503 JSON errors are counted as failed with the HTTP status and message', async () => {
  const srv = await startFakeServer({ ttftMs: 5, itlMs: 2, failWith: (n) => (n % 2 === 0 ? 503 : undefined) });
  try {
    const res = await runBenchmark({ url: srv.url, workload: 'chat', rate: Infinity, requests: 6, warmup: 0, inputLen: 4, outputLen: 3, slo: { ttftMs: 1000 } });
    assert.equal(res.completed, 3);
    assert.equal(res.failed, 3);
    assert.equal(res.slo_attainment, 1);
    assert.equal(res.slo_attainment_incl_failed, 0.5);
    const failed = res.requests.filter((r) => !r.ok);
    assert.equal(failed.length, 3);
    for (const r of failed) {
      assert.equal(r.error, 'HTTP 503: server overloaded, retry later');
      assert.equal(r.good, false);
      assert.equal(r.ttft_ms, null);
    }
  } finally {
    await srv.close();
  }
});

test('a stalled stream fails on the request timeout instead of hanging', async () => {
  const srv = await startFakeServer({ ttftMs: 5, itlMs: 2, hangAfterTokens: 2 });
  try {
    const t0 = Date.now();
    const res = await runBenchmark({ url: srv.url, workload: 'chat', rate: Infinity, requests: 2, warmup: 0, inputLen: 4, outputLen: 6, requestTimeoutS: 0.3 });
    assert.ok(Date.now() - t0 < 3000);
    assert.equal(res.failed, 2);
    assert.match(res.requests[0].error!, /^timeout after 0.3 s \(2 text chunks received\)/);
  } finally {
    await srv.close();
  }
});

test('max concurrency caps requests in flight; prompts are clipped to max_model_len', async () => {
  const srv = await startFakeServer({ ttftMs: 20, itlMs: 2, maxModelLen: 64, vocabSize: 50 });
  try {
    const res = await runBenchmark({ url: srv.url, workload: 'summarize', rate: Infinity, requests: 6, warmup: 0, maxConcurrency: 2, outputLenScale: 0.1 });
    assert.equal(res.completed, 6);
    assert.equal(res.peak_in_flight, 2);
    assert.ok(srv.peakInFlight <= 2);
    assert.equal(res.server.max_model_len, 64);
    assert.equal(res.server.vocab_size, 50);
    assert.equal(res.clipped_requests, 6);
    for (const b of srv.bodies) assert.ok((b.prompt as number[]).length + (b.max_tokens as number) <= 64);
  } finally {
    await srv.close();
  }
});

test('an interrupted run still returns and writes what it measured', async () => {
  const srv = await startFakeServer({ ttftMs: 20, itlMs: 10 });
  try {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 250);
    const out = join(dir, 'interrupted.json');
    const res = (await runBenchCommand(cmd(srv.url, { out, rate: 20, requests: 40, outputLen: 10 }), { ...silent, signal: ac.signal })) as BenchmarkResult;
    assert.equal(res.interrupted, true);
    assert.ok(res.not_sent > 0);
    assert.ok(res.completed + res.interrupted_requests + res.not_sent === 40);
    assert.equal(res.failed, 0);
    const json = JSON.parse(readFileSync(out, 'utf8')) as BenchmarkResult;
    assert.equal(json.interrupted, true);
  } finally {
    await srv.close();
  }
});

test('sweep: one JSON with per-rate results and the 90% rate, plus an SVG chart beside it', async () => {
  const srv = await startFakeServer({ ttftMs: 10, itlMs: 3 });
  try {
    const out = join(dir, 'sweep', 'result.json');
    const sweep = (await runBenchCommand(cmd(srv.url, { out, requests: 4, outputLen: 3, sweep: [5, 20, Infinity], seriesName: 'fake system' }), silent)) as SweepResult;
    assert.equal(sweep.results.length, 3);
    assert.deepEqual(sweep.rates, [5, 20, 'inf']);
    const json = JSON.parse(readFileSync(out, 'utf8')) as SweepResult;
    assert.deepEqual(json.results.map((r) => r.rate), [5, 20, 'inf']);
    assert.ok(json.results.every((r) => r.completed === 4 && r.slo_attainment === 1));
    assert.equal(json.max_rate_at_90pct_attainment, 'inf');
    assert.equal(json.interpolated_rate_at_90pct, 20);
    assert.equal(json.interpolated_is_lower_bound, true);
    assert.equal(json.points.length, 3);
    // Same seed at every rate: the same prompt lengths, but prompts of their own (a prefix cache
    // must not serve one rate from the one before).
    const perRate = srv.bodies.length / 3;
    assert.equal(perRate, 4);
    const prompts = (k: number) => srv.bodies.slice(4 * k, 4 * k + 4).map((b) => b.prompt as number[]).sort((a, b) => a.length - b.length);
    assert.deepEqual(prompts(0).map((p) => p.length), prompts(1).map((p) => p.length));
    for (let i = 0; i < 4; i++) assert.notDeepEqual(prompts(0)[i], prompts(1)[i]);
    const svgPath = join(dir, 'sweep', 'result.svg');
    assert.ok(existsSync(svgPath));
    assert.equal(json.svg, svgPath);
    const svg = readFileSync(svgPath, 'utf8');
    assert.deepEqual(checkXml(svg), []);
    assert.ok(svg.includes('fake system'));
    assert.equal((svg.match(/<circle cx/g) ?? []).length, 2 + 1); // finite rates + legend marker
  } finally {
    await srv.close();
  }
});

test('shifting workload: the report gives each phase its own attainment', async () => {
  // One at a time, so the server sees the requests in index order; the middle phase is refused.
  const srv = await startFakeServer({ ttftMs: 5, itlMs: 2, failWith: (n) => (n >= 3 && n < 6 ? 503 : undefined) });
  try {
    const res = await runBenchmark({ url: srv.url, workload: 'shifting', rate: Infinity, requests: 9, warmup: 0, maxConcurrency: 1, inputLenScale: 0.01, outputLenScale: 0.05, slo: { ttftMs: 1000 } });
    assert.deepEqual(res.phases!.map((p) => [p.phase, p.workload, p.requests, p.completed, p.failed]), [
      [0, 'summarize', 3, 3, 0], [1, 'chat', 3, 0, 3], [2, 'summarize', 3, 3, 0],
    ]);
    assert.equal(res.phases![0]!.slo_attainment, 1);
    assert.equal(res.phases![1]!.slo_attainment, 0);
    assert.ok(res.phases![2]!.goodput > 0);
    assert.deepEqual(res.requests.map((r) => r.phase), [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    const text = formatSummary(res);
    assert.match(text, /Phase 2 chat \(3 req\): +0\.0% attained, goodput 0\.00 req\/s, 3 failed/);
    assert.match(text, /Phase 1 summarize \(3 req\): +100\.0% attained/);
  } finally {
    await srv.close();
  }
});

test('multiturn on chat: each turn waits for the previous answer and sends the real conversation back', async () => {
  const srv = await startFakeServer({ ttftMs: 20, itlMs: 2 });
  try {
    // Rate inf starts both conversations at once, but each conversation has one turn in flight at a time.
    const res = await runBenchmark({ url: srv.url, workload: 'multiturn', endpoint: 'chat', turns: 3, rate: Infinity, requests: 6, warmup: 0, inputLen: 3, outputLen: 4, slo: { ttftMs: 1000 } });
    assert.equal(res.completed, 6);
    assert.ok(srv.peakInFlight <= 2, `peak ${srv.peakInFlight} in flight for 2 conversations`);
    const byLength = srv.bodies.map((b) => b.messages as Array<{ role: string; content: string }>);
    assert.deepEqual(byLength.map((m) => m.length).sort(), [1, 1, 3, 3, 5, 5]);
    for (const m of byLength) {
      m.forEach((msg, k) => assert.equal(msg.role, k % 2 === 0 ? 'user' : 'assistant'));
      // The fake server answers " t0 t1 t2 t3" to 4 tokens: that reply comes back verbatim.
      for (const a of m.filter((x) => x.role === 'assistant')) assert.equal(a.content, ' t0 t1 t2 t3');
      assert.equal(m[m.length - 1].content.split(' ').length, 3);
    }
    // Turn 3 of a conversation repeats its turn-1 and turn-2 user messages.
    const third = byLength.filter((m) => m.length === 5);
    const firsts = byLength.filter((m) => m.length === 1).map((m) => m[0].content);
    for (const m of third) assert.ok(firsts.includes(m[0].content));
    assert.deepEqual(res.turns!.map((t) => [t.turn, t.requests, t.completed]), [[0, 2, 2], [1, 2, 2], [2, 2, 2]]);
    assert.deepEqual(res.requests.map((r) => [r.conversation, r.turn]), [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]);
    assert.match(formatSummary(res), /Turn 3 \(2 req/);
  } finally {
    await srv.close();
  }
});

test('multiturn: a failed turn fails the rest of its conversation without sending them', async () => {
  // One conversation at a time (max concurrency 1 and turns in order): the 2nd request is refused.
  const srv = await startFakeServer({ ttftMs: 2, itlMs: 1, failWith: (n) => (n === 1 ? 503 : undefined) });
  try {
    const res = await runBenchmark({ url: srv.url, workload: 'multiturn', turns: 3, rate: 0.001, requests: 3, warmup: 0, inputLen: 2, outputLen: 2, vocabSize: 50 });
    assert.equal(res.completed, 1);
    assert.equal(res.failed, 2);
    assert.equal(srv.bodies.length, 2, 'turn 3 was never sent');
    assert.match(res.requests[2].error!, /turn 1 of its conversation failed/);
    // Completions prompts: turn 2 starts with turn 1's whole prompt.
    const p0 = srv.bodies[0].prompt as number[];
    const p1 = srv.bodies[1].prompt as number[];
    assert.deepEqual(p1.slice(0, p0.length), p0);
    assert.equal(p1.length, p0.length + 2 + 2);
  } finally {
    await srv.close();
  }
});
