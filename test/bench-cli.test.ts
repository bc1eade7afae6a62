// `pdserve bench` (the CLI, a child process) against a real cluster: a small run whose JSON has
// every field, completed == requested, and whose summary statistics agree with its own
// per-request records (issue 14 item 4). packages/bench/test covers the statistics against a fake
// server with known delays; this covers the real router's stream as the benchmark parses it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCluster, stories260K, type TestCluster } from './support/cluster.ts';
import { repoRoot, sharedPath } from './support/shared.ts';

const REQUESTS = 6;
const OUTPUT = 8;
let cluster: TestCluster | undefined;
let model: { dir: string; cleanup(): void } | undefined;
const dir = mkdtempSync(join(tmpdir(), 'pdserve-bench-cli-'));

function haveShared(): boolean {
  try { return readFileSync(sharedPath('models', 'stories260K', 'stories260K.bin')).length > 0; } catch { return false; }
}

before(async () => {
  if (process.env.CI !== 'true' && !haveShared()) return;
  model = stories260K();
  cluster = await startCluster(model.dir, ['--prefill', '1', '--decode', '1', '--max-sequences', '8', '--planner', 'off']);
});
after(async () => {
  await cluster?.stop();
  model?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

test('pdserve bench against a real cluster: every request completes, the summary matches the per-request records', async (t) => {
  if (!cluster) return t.skip('no ../shared models');
  const out = join(dir, 'bench.json');
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'packages/cli/src/main.ts'), 'bench',
    '--url', cluster.url, '--workload', 'chat', '--requests', String(REQUESTS), '--rate', 'inf', '--input-len', '32',
    '--output-len', String(OUTPUT), '--slo-ttft-ms', '60000', '--slo-tpot-ms', '60000', '--warmup', '1', '--seed', '3',
    '--out', out, '--quiet'], { cwd: repoRoot, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `pdserve bench failed:\n${r.stdout}\n${r.stderr}`);
  const res = JSON.parse(readFileSync(out, 'utf8'));
  for (const k of ['completed', 'failed', 'duration_s', 'request_throughput', 'output_token_throughput', 'total_token_throughput', 'goodput', 'slo_attainment', 'settings', 'date', 'requests', 'model']) {
    assert.ok(k in res, `missing ${k}`);
  }
  assert.equal(res.model, cluster.modelName);
  assert.equal(res.completed, REQUESTS, JSON.stringify(res.requests.filter((q: any) => !q.ok)));
  assert.equal(res.failed, 0);
  assert.equal(res.requests.length, REQUESTS);
  assert.equal(res.output_len_mismatches, 0, 'the router returned exactly the requested output lengths (ignore_eos)');
  assert.equal(res.total_output_tokens, REQUESTS * OUTPUT);
  assert.equal(res.total_input_tokens, res.requests.reduce((s: number, q: any) => s + q.prompt_tokens, 0));

  const ttft = res.requests.map((q: any) => q.ttft_ms as number);
  const tpot = res.requests.map((q: any) => q.tpot_ms as number);
  const e2el = res.requests.map((q: any) => q.e2el_ms as number);
  for (const [i, q] of res.requests.entries()) {
    assert.ok(q.ok && q.ttft_ms > 0 && q.e2el_ms >= q.ttft_ms, `request ${i}: ${JSON.stringify(q)}`);
    assert.equal(q.output_tokens, OUTPUT);
    assert.equal(q.itl_ms.length, OUTPUT - 1, `request ${i}: one inter-token gap per token after the first`);
    // TPOT is the time after the first token spread over the remaining tokens.
    assert.ok(Math.abs(q.tpot_ms - (q.e2el_ms - q.ttft_ms) / (OUTPUT - 1)) < 0.01 + q.tpot_ms * 1e-3, `request ${i}: tpot ${q.tpot_ms}`);
  }
  const close = (a: number, b: number, what: string) => assert.ok(Math.abs(a - b) <= 0.01 + Math.abs(b) * 1e-3, `${what}: ${a} vs ${b}`);
  close(res.ttft_ms.mean, mean(ttft), 'ttft mean');
  close(res.tpot_ms.mean, mean(tpot), 'tpot mean');
  close(res.e2el_ms.mean, mean(e2el), 'e2el mean');
  close(res.ttft_ms.max, Math.max(...ttft), 'ttft max');
  assert.equal(res.itl_ms.count, REQUESTS * (OUTPUT - 1));
  assert.equal(res.slo_attainment, 1);
  close(res.request_throughput, REQUESTS / res.duration_s, 'request throughput');
});
