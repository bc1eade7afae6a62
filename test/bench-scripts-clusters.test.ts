// Smoke runs of the cluster benchmark scripts behind BENCHMARKS.md (disaggregated vs colocated,
// the SLO comparison, the planner on a shifting workload) with tiny parameters: stories260K from
// ../shared, one workload, one rate, a handful of requests (issue 14 item 4). stories260K rather
// than the tiny dummy because the dummy's random ids can decode to no text at all, which bench
// counts as a failed request. No timing is asserted: only that each script runs to the end and
// reports finite, positive measurements in the shape BENCHMARKS.md quotes.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { stories260K } from './support/cluster.ts';
import { requireShared } from './support/shared.ts';
import { assertPositive, runScript } from './support/bench-script.ts';

const dir = mkdtempSync(join(tmpdir(), 'pdserve-bench-clusters-'));
let model: { dir: string; cleanup(): void } | undefined;
after(() => { model?.cleanup(); rmSync(dir, { recursive: true, force: true }); });

function modelDir(t: TestContext): string | undefined {
  if (!requireShared(t, 'models', 'stories260K')) return undefined;
  model ??= stories260K();
  return model.dir;
}

const script = runScript;

const positive = assertPositive;
const cells = (line: string) => line.split('|').slice(1, -1).map((c) => c.trim());
/** "15 / 24" -> both numbers, each positive. */
function pair(cell: string, what: string): void {
  const m = /^(\S+) \/ (\S+)$/.exec(cell);
  assert.ok(m, `${what}: ${cell}`);
  positive(Number(m[1]), `${what} p50`);
  positive(Number(m[2]), `${what} p99`);
}

test('bench-disagg: both systems swept on chat, table rows, sweep files and the attainment chart', (t) => {
  const m = modelDir(t);
  if (!m) return;
  const out = join(dir, 'disagg');
  const stdout = script('bench-disagg.ts', ['--model', m, '--workload', 'chat', '--rates', '4', '--requests', '3', '--out', out]);
  assert.match(stdout, /^\| workload \| system \| rate \(req\/s\) \| completed \| goodput \(req\/s\) \| attainment \| TTFT p50\/p99 ms \| TPOT p50\/p99 ms \|$/m);
  for (const [sys, file] of [['disaggregated 1P+1D (1 core each)', 'disaggregated'], ['colocated unified (2 cores)', 'colocated']] as const) {
    const line = stdout.split('\n').find((l) => l.startsWith(`| chat | ${sys} | 4 |`));
    assert.ok(line, `row for ${sys}:\n${stdout}`);
    const c = cells(line);
    assert.equal(c[3], '3/3', `every request completed: ${line}`);
    positive(Number(c[4]), `${sys} goodput`);
    assert.match(c[5]!, /^\d+%$/);
    pair(c[6]!, `${sys} TTFT`);
    pair(c[7]!, `${sys} TPOT`);
    assert.match(stdout, new RegExp(`^\\| chat \\| ${sys.replace(/[()+]/g, '\\$&')} \\| \\*\\*rate at 90% attainment\\*\\* \\|`, 'm'));
    const sweep = JSON.parse(readFileSync(join(out, `disagg-chat-${file}.json`), 'utf8'));
    assert.equal(sweep.results.length, 1);
    assert.equal(sweep.results[0].rate, 4);
  }
  assert.match(readFileSync(join(out, 'disagg-chat.svg'), 'utf8'), /<svg[\s\S]*<\/svg>\s*$/);
});

test('bench-slo: the default mode swept on chat, the summary, and the overload run at 3x the top rate', (t) => {
  const m = modelDir(t);
  if (!m) return;
  const out = join(dir, 'slo');
  const stdout = script('bench-slo.ts', ['--model', m, '--workload', 'chat', '--systems', 'default', '--rates', '4', '--requests', '3', '--out', out]);
  const sys = 'default: starts 2U pinned, planner + placement auto + SLO admission';
  const line = stdout.split('\n').find((l) => l.startsWith(`| chat | ${sys} | 4 |`));
  assert.ok(line, `sweep row:\n${stdout}`);
  const c = cells(line);
  assert.match(c[3]!, /^\d+\/3 good, \d+ refused$/);
  assert.match(c[4]!, /^\d+%$/);
  assert.match(c[5]!, /^\d+%$/);
  positive(Number(c[6]), 'goodput');
  pair(c[7]!, 'TTFT');
  pair(c[8]!, 'TPOT');
  const summary = stdout.split('\n').find((l) => l.startsWith(`| chat | ${sys} |`) && cells(l).length === 4);
  assert.ok(summary, `summary row:\n${stdout}`);
  assert.match(cells(summary)[2]!, /^(>= |< )?\d+(\.\d+)?$|^none$/);
  positive(Number(cells(summary)[3]), 'peak goodput');
  // No rate failed, so the overload rate is 3x the top one; twice --requests are sent.
  assert.match(stdout, new RegExp(`^overload \\(chat, ${sys.replace(/[()+]/g, '\\$&')}\\) at 12 req/s .*, 6 requests:$`, 'm'));
  const sent = /^ {2}sent (\d+), completed (\d+), refused (\d+), good (\d+)$/m.exec(stdout);
  assert.ok(sent, stdout);
  assert.equal(Number(sent[1]), 6);
  assert.equal(Number(sent[2]) + Number(sent[3]), 6, `every overload request completed or refused: ${sent[0]}`);
  const goodput = /^ {2}goodput (\S+) req\/s; peak of the sweep (\S+) -> (\d+)%/m.exec(stdout);
  assert.ok(goodput, stdout);
  assert.ok(Number.isFinite(Number(goodput[1])) && Number(goodput[1]) >= 0, goodput[0]);
  positive(Number(goodput[2]), 'peak goodput in the overload line');
  for (const f of ['slo-warmup.json', 'slo-chat-default.json', 'slo-overload.json']) assert.ok(existsSync(join(out, f)), f);
});

test('bench-planner-shifting: fixed roles and the planner, overall and per-phase numbers', (t) => {
  const m = modelDir(t);
  if (!m) return;
  const out = join(dir, 'planner');
  const stdout = script('bench-planner-shifting.ts', ['--model', m, '--requests', '6', '--rate', '4', '--out', out]);
  assert.match(stdout, /^shifting \(summarize, chat, summarize\), 6 requests at 4 req\/s, TTFT <= 4000 ms, TPOT <= 150 ms$/m);
  for (const name of ['1P+1D fixed', '1P+1D + planner']) {
    const line = stdout.split('\n').find((l) => l.startsWith(`| ${name} |`));
    assert.ok(line, `row ${name}:\n${stdout}`);
    const c = cells(line);
    assert.equal(c.length, 7, line);
    assert.match(c[1]!, /^\d+(\.\d)?%$/);
    positive(Number(c[2]), `${name} goodput`);
    assert.equal(c[3], '0', `${name}: no failed requests`);
    for (const ph of c.slice(4)) {
      const p = /^(\d+)%, (\S+) req\/s$/.exec(ph);
      assert.ok(p, `${name} phase: ${ph}`);
      positive(Number(p[2]), `${name} phase goodput`);
    }
  }
  const ratio = /^goodput planner \/ fixed: (\S+)x$/m.exec(stdout);
  assert.ok(ratio, stdout);
  positive(Number(ratio[1]), 'goodput ratio');
  for (const f of ['planner-shifting-fixed.json', 'planner-shifting-planner.json']) {
    const r = JSON.parse(readFileSync(join(out, f), 'utf8'));
    assert.equal(r.phases.length, 3, f);
    assert.equal(r.completed + r.failed, 6, f);
  }
});
