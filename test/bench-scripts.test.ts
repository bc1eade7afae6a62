// Smoke runs of the benchmark scripts behind BENCHMARKS.md with tiny parameters (a tiny dummy
// model, a handful of requests), so a refactor that breaks a script or the numbers it reports
// fails here rather than at the next benchmark session (issue 14 item 4). No timing is asserted:
// only that each script runs to the end and reports finite, positive measurements.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeDummyModel } from '../packages/engine/src/index.ts';
import { requireShared } from './support/shared.ts';
import { assertPositive, runScript } from './support/bench-script.ts';

const dir = mkdtempSync(join(tmpdir(), 'pdserve-bench-scripts-'));
const model = join(dir, 'tiny');
before(() => { writeDummyModel('tiny', model); });
after(() => rmSync(dir, { recursive: true, force: true }));

const script = runScript;

const positive = assertPositive;

test('bench-sampler: one row per configuration, ratios to greedy', () => {
  const res = JSON.parse(script('bench-sampler.ts', ['--vocab', '512', '--n', '5']));
  assert.equal(res.rows.length, 5);
  assert.equal(res.rows[0].vsGreedy, 1);
  for (const r of res.rows) positive(r.msPerSample, r.config);
});

test('bench-engine: the table and the JSON blob with prefill, decode and roofline numbers', () => {
  const out = script('bench-engine.ts', ['--model', model, '--threads', '1', '--bandwidth-mib', '32']);
  assert.match(out, /^\| Measurement \| Result \| Roofline \| Actual \/ roofline \|$/m);
  const json = /```json\n([\s\S]*?)\n```/.exec(out);
  assert.ok(json, 'a JSON blob');
  const res = JSON.parse(json[1]);
  positive(res.machine.readBandwidth.gbPerS, 'memory read bandwidth (ORT GEMV)');
  assert.ok(res.prefill.length > 0 && res.decode.length > 0);
  for (const p of res.prefill) for (const ms of p.samplesMs) positive(ms, `prefill ${p.L}`);
  for (const d of res.decode) for (const ms of d.samplesMs) positive(ms, `decode batch ${d.B}`);
});

test('bench-ort-spinning: every layout measured, decode and prefill', () => {
  const out = script('bench-ort-spinning.ts', ['--model', model, '--seconds', '0.3', '--batch', '2', '--context', '32', '--json']);
  const res = JSON.parse(out.trim().split('\n').at(-1)!);
  assert.deepEqual(res.rows.map((r: { layout: string }) => r.layout), [
    'alone, 1 thread', 'alone, 2 threads', 'both at once: pinned, 1 thread each',
    'both at once: unpinned, 2 threads each, spinning on', 'both at once: unpinned, 2 threads each, spinning off',
  ]);
  for (const r of res.rows) { positive(r.decodeMs, `${r.layout} decode`); positive(r.prefillMs, `${r.layout} prefill`); }
});

test('bench-router-overhead: a real cluster, both paths measured', () => {
  const out = script('bench-router-overhead.ts', ['--model', model, '--requests', '4']);
  for (const row of ['through the router (HTTP)', 'workers directly (gRPC, same calls)', 'HTTP floor: GET /health round trip']) {
    const line = out.split('\n').find((l) => l.startsWith(`| ${row} |`));
    assert.ok(line, `row ${row}:\n${out}`);
    for (const cell of line.split('|').slice(2, 5)) positive(Number(cell), `${row} ${cell}`);
  }
});

test('bench-reslo: re-scores a sweep file against other SLOs', () => {
  const q = (ttft: number, tpot: number) => ({ ok: true, ttft_ms: ttft, tpot_ms: tpot });
  const sweep = { results: [
    { rate: 1, duration_s: 4, requests: [q(100, 10), q(200, 10), q(300, 10), q(400, 10)] },
    { rate: 2, duration_s: 2, requests: [q(100, 10), q(900, 10), q(900, 10), q(100, 90)] },
  ] };
  const file = join(dir, 'sweep.json');
  writeFileSync(file, JSON.stringify(sweep));
  const out = script('bench-reslo.ts', ['--ttft-ms', '500', '--tpot-ms', '50', file]);
  assert.match(out, /\| sweep\.json \| 1 \| 100% \| 1\.000 \|/);
  assert.match(out, /\| sweep\.json \| 2 \| 25% \| 0\.500 \|/);
  assert.match(out, /rate at 90%/);
});

test('bench-prefix-routing: both decisions timed, the prefix-aware one picks the worker holding the shared prefix', () => {
  const res = JSON.parse(script('bench-prefix-routing.ts', ['--workers', '2', '--blocks', '128', '--prompt', '1056', '--iterations', '20']));
  assert.equal(res.iterations, 20);
  assert.ok(res.index_hashes >= 2 * 128, `index holds every worker's blocks: ${res.index_hashes}`);
  positive(res.load_only_us.mean, 'load-only mean');
  positive(res.prefix_aware_us.mean, 'prefix-aware mean');
  assert.equal(res.chose.prefix_aware, 'w0', 'w0 holds the system prompt');
});

test('bench-fp16: the three weight forms, each timed in its own process', () => {
  const out = script('bench-fp16.ts', ['--n', '1024']);
  assert.match(out, /^\| weights \(1 thread\(s\)\) \| ms per \[1x2048\]x\[2048x1024\] GEMV \|/m);
  for (const mode of ['fp32', 'fp16-storage', 'fp16-matmul']) {
    const m = new RegExp(`^\\| ${mode} \\| (\\S+) \\| (\\S+) MiB \\|$`, 'm').exec(out);
    assert.ok(m, `row ${mode}:\n${out}`);
    positive(Number(m[1]), `${mode} ms per run`);
    assert.ok(Number.isFinite(Number(m[2])), `${mode} resident MiB: ${m[2]}`);
  }
});

test('bench-weight-matmuls: every weight format\'s products of a step timed, with the bytes each reads', () => {
  const out = script('bench-weight-matmuls.ts', ['--preset', 'tiny', '--reps', '3']);
  const res = JSON.parse(/```json\n([\s\S]*)\n```/.exec(out)![1]);
  assert.deepEqual(res.rows.map((r: { variant: string }) => r.variant), ['fp32', 'q8', 'q4', 'q4-b64', 'q4-b128'], out);
  for (const r of res.rows) {
    positive(r.medianMs, `${r.variant} median ms`);
    positive(r.bestMs, `${r.variant} fastest ms`);
  }
  const bytes = Object.fromEntries(res.rows.map((r: { variant: string; bytes: number }) => [r.variant, r.bytes]));
  // fp32 reads 4 bytes a weight; q8 a little over 1, q4 a little over half of that.
  assert.ok(bytes.fp32 > 3 * bytes.q8 && bytes.q8 > 1.5 * bytes.q4, JSON.stringify(bytes));
});

test('bench-slot-swap: one trade of slots timed per length, the KV each sequence holds', () => {
  const out = script('bench-slot-swap.ts', ['--lengths', '16,40', '--reps', '3']);
  const rows = out.split('\n').filter((l) => /^\| \d/.test(l)).map((l) => l.split('|').map((c) => c.trim()));
  assert.deepEqual(rows.map((r) => r[1]), ['16', '40'], out);
  for (const r of rows) {
    positive(Number(r[2]), `MiB of ${r[1]} positions`);
    assert.ok(Number(r[3].split(' ')[0]) >= 0, `ms of ${r[1]} positions: ${r[3]}`);
  }
});

test('bench-memory: resident memory of generate and of both workers of a cluster, against the bound', (t) => {
  if (!existsSync('/usr/bin/time')) {
    if (process.env.CI === 'true') throw new Error('/usr/bin/time is missing (apt-get install time; scripts/setup.sh does)');
    return t.skip('/usr/bin/time is missing (apt-get install time)');
  }
  const out = script('bench-memory.ts', ['--preset', 'tiny', '--dtype', 'fp32', '--kv-budget-mb', '8']);
  const json = /```json\n([\s\S]*?)\n```/.exec(out);
  assert.ok(json, `a JSON blob:\n${out}`);
  const res = JSON.parse(json[1]);
  positive(res.weightBytes, 'weight bytes');
  positive(res.genPeakMiB, 'generate peak RSS');
  assert.equal(res.workersSeen, 2);
  assert.deepEqual(res.workers.map((w: { role: string }) => w.role).sort(), ['decode', 'prefill']);
  for (const w of res.workers) positive(w.rssMiB, `${w.role} RSS`);
  assert.match(out, /^\| cluster prefill worker \(KV budget 8 MiB\) \| \d+ MiB/m);
});

test('quality: every weight format of both shared models against fp32 (fp32 agrees with itself)', (t) => {
  if (!requireShared(t, 'models', 'babyllama105')) return;
  const out = script('quality.ts', []);
  const json = /```json\n([\s\S]*?)\n```/.exec(out);
  assert.ok(json, `a JSON blob:\n${out}`);
  const { rows } = JSON.parse(json[1]);
  assert.equal(rows.length, 10, '2 models x 5 formats');
  for (const r of rows) {
    positive(r.perplexity, `${r.model} ${r.dtype} perplexity`);
    positive(r.positions, `${r.model} positions`);
    assert.ok(r.top1Agreement >= 0 && r.top1Agreement <= 1 && r.greedyAgreement >= 0 && r.greedyAgreement <= 1, JSON.stringify(r));
    if (r.dtype === 'fp32') {
      assert.equal(r.top1Agreement, 1);
      assert.equal(r.greedyFirstDivergence, r.greedyTokens);
      assert.equal(r.greedyEqualsGolden, true, `${r.model} fp32 greedy = run.c's golden`);
    }
  }
});

test('kv-wire-quality: each wire dtype against fp32 on the shared models and on random prompts of a given model', (t) => {
  if (!requireShared(t, 'models', 'babyllama105')) return;
  const out = script('kv-wire-quality.ts', ['--model', model, '--prompts', '2', '--prompt-len', '8', '--tokens', '4']);
  const sections = out.split('\n\n').filter((s) => s.includes('| wire dtype |'));
  assert.equal(sections.length, 3, `stories260K, babyllama105 and the given model:\n${out}`);
  assert.match(sections[2]!, /^.*tiny \(random prompts\): 2 prompt\(s\), 8 tokens each, 4 generated tokens each$/m);
  for (const s of sections) {
    const rows = s.split('\n').filter((l) => /^\| (fp32|fp16|bf16|int8) \|/.test(l));
    assert.equal(rows.length, 4, s);
    // fp32 is the reference: identical, never diverging, no logit error.
    assert.match(rows[0]!, /^\| fp32 \| (\d+)\/\1 \| none \| 100\.0% \| 0\.00e\+0 \|$/);
    for (const r of rows) {
      const cells = r.split('|').map((c) => c.trim());
      assert.ok(Number(cells[4]!.replace('%', '')) >= 0, r);
      assert.ok(Number.isFinite(Number(cells[5])), r);
    }
  }
});

test('soak: a few seconds of streaming load (no faults) on a supervised cluster, every request accounted for, no KV leaked', () => {
  const out = script('soak.ts', ['--model', model, '--minutes', '0.03', '--rate', '6', '--fault-every-s', '1000', '--seed', '3']);
  const line = out.split('\n').find((l) => l.startsWith('{"summary"'));
  assert.ok(line, `a summary line:\n${out}`);
  const s = JSON.parse(line).summary;
  positive(s.sent, 'requests sent');
  assert.equal(s.completed + s.aborted + s.failed, s.sent, JSON.stringify(s));
  assert.equal(s.failed, 0, JSON.stringify(s.errors));
  assert.ok(s.completed > 0, JSON.stringify(s));
  assert.equal(s.faults, 0);
  assert.equal(s.kv_blocks_leaked, 0);
  assert.equal(s.healthy_workers_at_end, 3);
  assert.equal(s.worker_restarts, 0);
});
