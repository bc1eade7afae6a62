// Smoke runs of the benchmark scripts behind BENCHMARKS.md with tiny parameters (a tiny dummy
// model, a handful of requests), so a refactor that breaks a script or the numbers it reports
// fails here rather than at the next benchmark session (issue 14 item 4). No timing is asserted:
// only that each script runs to the end and reports finite, positive measurements.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeDummyModel } from '../packages/engine/src/index.ts';
import { repoRoot } from './support/shared.ts';

const dir = mkdtempSync(join(tmpdir(), 'pdserve-bench-scripts-'));
const model = join(dir, 'tiny');
before(() => { writeDummyModel('tiny', model); });
after(() => rmSync(dir, { recursive: true, force: true }));

function script(name: string, args: string[]): string {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'scripts', name), ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `${name} failed (${r.signal ?? r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

const positive = (x: unknown, what: string) => assert.ok(typeof x === 'number' && Number.isFinite(x) && x > 0, `${what}: ${x}`);

test('bench-sampler: one row per configuration, ratios to greedy', () => {
  const res = JSON.parse(script('bench-sampler.ts', ['--vocab', '512', '--n', '5']));
  assert.equal(res.rows.length, 5);
  assert.equal(res.rows[0].vsGreedy, 1);
  for (const r of res.rows) positive(r.msPerSample, r.config);
});

test('bench-engine: the table and the JSON blob with prefill, decode and roofline numbers', () => {
  const out = script('bench-engine.ts', ['--model', model, '--threads', '1']);
  assert.match(out, /^\| Measurement \| Result \| Roofline \| Actual \/ roofline \|$/m);
  const json = /```json\n([\s\S]*?)\n```/.exec(out);
  assert.ok(json, 'a JSON blob');
  const res = JSON.parse(json[1]);
  positive(res.machine.readBandwidth.gbPerS, 'memory read bandwidth (ORT GEMV)');
  assert.ok(res.prefill.length > 0 && res.decode.length > 0);
  for (const p of res.prefill) for (const ms of p.samplesMs) positive(ms, `prefill ${p.L}`);
  for (const d of res.decode) for (const ms of d.samplesMs) positive(ms, `decode batch ${d.B}`);
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
