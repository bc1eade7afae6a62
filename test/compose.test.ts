// Deployment files: docker-compose.yml parses under docker-compose v1, deploy/prometheus.yml passes
// promtool, and every Grafana dashboard expression is valid PromQL over metrics the router and
// worker registries actually export. Tools that are missing skip their check (docker-compose
// fails instead under CI=true).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRouterMetrics } from '../packages/common/src/metrics/router-metrics.ts';
import { createWorkerMetrics } from '../packages/common/src/metrics/worker-metrics.ts';
import { dashboardExpressions, exportedMetricNames, metricNamesInExpr } from '../packages/common/src/metrics/dashboard.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dashboardPath = join(root, 'deploy/grafana/dashboards/pdserve.json');

/** Runs a tool; returns undefined when it is not installed. */
function tool(cmd: string, args: string[]): { status: number | null; output: string } | undefined {
  const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', timeout: 30_000 });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
  if (r.error) throw r.error;
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

function missing(t: TestContext, what: string, failUnderCi: boolean): void {
  const message = `${what} is not installed`;
  if (failUnderCi && process.env.CI === 'true') throw new Error(`${message} (required under CI=true)`);
  t.skip(message);
}

test('docker-compose.yml is accepted by docker-compose config', (t) => {
  const r = tool('docker-compose', ['-f', 'docker-compose.yml', 'config', '-q']);
  if (!r) return missing(t, 'docker-compose', true);
  assert.equal(r.status, 0, r.output);
});

test('deploy/prometheus.yml passes promtool check config', (t) => {
  const r = tool('promtool', ['check', 'config', 'deploy/prometheus.yml']);
  if (!r) return missing(t, 'promtool', false);
  assert.equal(r.status, 0, r.output);
});

test('dashboard expressions only read metrics the registries export', () => {
  const dashboard: unknown = JSON.parse(readFileSync(dashboardPath, 'utf8'));
  const exprs = dashboardExpressions(dashboard);
  assert.ok(exprs.length >= 20, `expected the full dashboard, got ${exprs.length} expressions`);
  for (const e of exprs) assert.doesNotMatch(e, /\$/, `unsubstituted Grafana variable in ${e}`);

  const known = exportedMetricNames(
    createRouterMetrics().registry,
    createWorkerMetrics({ role: 'decode', workerId: 'test' }).registry,
  );
  const unknown: string[] = [];
  const used = new Set<string>();
  for (const expr of exprs) {
    const names = metricNamesInExpr(expr);
    assert.ok(names.length > 0, `no metric in ${expr}`);
    for (const name of names) {
      used.add(name);
      if (!known.has(name)) unknown.push(`${name} in ${expr}`);
    }
  }
  assert.deepEqual(unknown, [], 'dashboard reads metrics nobody exports');
  // The panels the brief asks for read these.
  for (const name of [
    'pdserve_request_success_total', 'pdserve_request_errors_total', 'pdserve_time_to_first_token_seconds_bucket',
    'pdserve_request_time_per_output_token_seconds_bucket', 'pdserve_inter_token_latency_seconds_bucket',
    'pdserve_slo_requests_total', 'pdserve_ttft_breakdown_seconds_bucket', 'pdserve_kv_transfer_bytes_total',
    'pdserve_kv_transfer_failures_total', 'pdserve_num_requests_running', 'pdserve_num_requests_waiting',
    'pdserve_num_sequences_running', 'pdserve_num_sequences_waiting', 'pdserve_kv_cache_usage_perc',
    'pdserve_batch_size_bucket', 'pdserve_workers', 'nodejs_eventloop_lag_p99_seconds',
  ]) assert.ok(used.has(name), `no panel reads ${name}`);
});

test('dashboard panels use the provisioned datasource', () => {
  const text = readFileSync(dashboardPath, 'utf8');
  const uids = new Set([...text.matchAll(/"uid":\s*"([^"]+)"/g)].map((m) => m[1]));
  uids.delete('pdserve'); // the dashboard's own uid
  const provisioned = readFileSync(join(root, 'deploy/grafana/provisioning/datasources/prometheus.yml'), 'utf8');
  for (const uid of uids) assert.match(provisioned, new RegExp(`^\\s*uid:\\s*${uid}\\s*$`, 'm'));
});

test('dashboard expressions parse with promtool (as recording rules)', (t) => {
  const exprs = dashboardExpressions(JSON.parse(readFileSync(dashboardPath, 'utf8')));
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-rules-'));
  try {
    const file = join(dir, 'rules.yml');
    const rules = exprs.map((e, i) => `      - record: pdserve:dashboard_expr_${i}\n        expr: ${JSON.stringify(e)}\n`).join('');
    writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${rules}`);
    const r = tool('promtool', ['check', 'rules', file]);
    if (!r) return missing(t, 'promtool', false);
    assert.equal(r.status, 0, r.output);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('Dockerfile entrypoint, healthcheck and build context fit together', () => {
  const dockerfile = readFileSync(join(root, 'deploy/Dockerfile'), 'utf8');
  assert.match(dockerfile, /^ENTRYPOINT \["node", "--import", "tsx", "packages\/cli\/src\/main\.ts"\]$/m);
  assert.match(dockerfile, /^HEALTHCHECK .*\n?.*deploy\/healthcheck\.mjs/m);
  assert.match(dockerfile, /PDSERVE_HEALTH_URL=http:\/\/127\.0\.0\.1:8000\/health/);
  assert.match(dockerfile, /ONNXRUNTIME_NODE_INSTALL=skip/);
  assert.match(dockerfile, /^USER node$/m);
  assert.ok(existsSync(join(root, 'deploy/healthcheck.mjs')));
  const ignored = readFileSync(join(root, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim());
  for (const needed of ['deploy', 'deploy/healthcheck.mjs', 'packages', 'pnpm-lock.yaml', 'package.json']) {
    assert.ok(!ignored.includes(needed), `.dockerignore drops ${needed}`);
  }
  assert.ok(ignored.includes('**/node_modules'));
});
