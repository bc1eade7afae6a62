import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import { createRouterMetrics } from '../src/metrics/router-metrics.ts';
import { createWorkerMetrics } from '../src/metrics/worker-metrics.ts';
import { startMetricsServer } from '../src/metrics/http.ts';
import { exportedMetricNames, metricNamesInExpr, dashboardExpressions } from '../src/metrics/dashboard.ts';

const ROUTER_METRICS = {
  histogram: [
    'pdserve_time_to_first_token_seconds',
    'pdserve_inter_token_latency_seconds',
    'pdserve_request_time_per_output_token_seconds',
    'pdserve_e2e_request_latency_seconds',
    'pdserve_request_queue_time_seconds',
    'pdserve_ttft_breakdown_seconds',
    'pdserve_request_prompt_tokens',
    'pdserve_request_generation_tokens',
  ],
  counter: [
    'pdserve_prompt_tokens_total',
    'pdserve_generation_tokens_total',
    'pdserve_request_success_total',
    'pdserve_request_errors_total',
    'pdserve_admission_rejected_total',
    'pdserve_slo_requests_total',
  ],
  gauge: ['pdserve_num_requests_running', 'pdserve_num_requests_waiting', 'pdserve_workers'],
};

const WORKER_METRICS = {
  histogram: ['pdserve_batch_size', 'pdserve_step_duration_seconds', 'pdserve_kv_transfer_seconds', 'pdserve_kv_transfer_bytes'],
  counter: [
    'pdserve_prompt_tokens_total',
    'pdserve_generation_tokens_total',
    'pdserve_kv_transfer_bytes_total',
    'pdserve_kv_transfer_failures_total',
  ],
  gauge: [
    'pdserve_kv_cache_usage_perc',
    'pdserve_num_sequences_running',
    'pdserve_num_sequences_waiting',
    'pdserve_prefill_tokens_per_second',
    'pdserve_kv_blocks_free',
    'pdserve_kv_blocks_total',
    'pdserve_kv_transfer_compression_ratio',
  ],
};

const DEFAULT_METRICS = [
  'process_cpu_seconds_total',
  'process_resident_memory_bytes',
  'nodejs_eventloop_lag_seconds',
  'nodejs_eventloop_lag_p99_seconds',
  'nodejs_heap_size_used_bytes',
];

/** `# TYPE name type` lines of an exposition. */
function typesOf(text: string): Map<string, string> {
  const types = new Map<string, string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) types.set(m[1]!, m[2]!);
  return types;
}

function assertListed(text: string, expected: Record<string, string[]>): void {
  const types = typesOf(text);
  for (const [type, names] of Object.entries(expected)) {
    for (const name of names) assert.equal(types.get(name), type, `${name} should be a ${type}`);
  }
  for (const name of DEFAULT_METRICS) assert.ok(types.has(name), `default metric ${name} missing`);
}

test('router registry exports every listed metric and the default process metrics', async () => {
  const m = createRouterMetrics();
  const text = await m.registry.metrics();
  assertListed(text, ROUTER_METRICS);
  // Known label values exist at 0 before anything happens.
  assert.match(text, /^pdserve_request_success_total\{finished_reason="abort"\} 0$/m);
  assert.match(text, /^pdserve_slo_requests_total\{slo="tpot",outcome="missed"\} 0$/m);
  assert.match(text, /^pdserve_ttft_breakdown_seconds_bucket\{le="120",phase="kv_transfer"\} 0$/m);
  assert.match(text, /^pdserve_workers\{role="decode",state="stale"\} 0$/m);
  // Buckets span milliseconds to minutes.
  assert.match(text, /^pdserve_time_to_first_token_seconds_bucket\{le="0.001"\} 0$/m);
  assert.match(text, /^pdserve_time_to_first_token_seconds_bucket\{le="120"\} 0$/m);
});

test('observeRequest / observeError / setWorkerCounts fill the metrics and judge SLOs', async () => {
  const m = createRouterMetrics(new Registry(), { collectDefault: false, slo: { ttftSeconds: 1, tpotSeconds: 0.1 } });
  const ok = m.observeRequest({
    finishedReason: 'stop', promptTokens: 10, generationTokens: 5, e2eSeconds: 0.9, ttftSeconds: 0.5, queueSeconds: 0.01,
    interTokenSeconds: [0.1, 0.1, 0.1, 0.1], ttftBreakdown: { queue: 0.01, prefill: 0.3, kv_transfer: 0.1, first_decode: 0.09 },
  });
  assert.deepEqual(ok, { ttft: true, tpot: true, all: true });
  const slow = m.observeRequest({ finishedReason: 'length', promptTokens: 3, generationTokens: 3, e2eSeconds: 2.5, ttftSeconds: 0.5 });
  assert.deepEqual(slow, { ttft: true, tpot: false, all: false });
  const one = m.observeRequest({ finishedReason: 'abort', promptTokens: 3, generationTokens: 1, e2eSeconds: 3, ttftSeconds: 3 });
  assert.deepEqual(one, { ttft: false, tpot: undefined, all: false });
  m.observeError(503);
  m.observeError(400);
  m.admissionRejected.inc({ reason: 'queue_full' });
  m.setWorkerCounts([{ role: 'prefill', state: 'healthy' }, { role: 'prefill', state: 'healthy' }, { role: 'decode', state: 'draining' }]);
  m.setWorkerCounts([{ role: 'prefill', state: 'healthy' }]);

  const text = await m.registry.metrics();
  const value = (series: string) => {
    const line = text.split('\n').find((l) => l.startsWith(series + ' '));
    assert.ok(line, `${series} missing`);
    return Number(line.slice(series.length + 1));
  };
  assert.equal(value('pdserve_request_success_total{finished_reason="stop"}'), 1);
  assert.equal(value('pdserve_prompt_tokens_total'), 16);
  assert.equal(value('pdserve_generation_tokens_total'), 9);
  assert.equal(value('pdserve_inter_token_latency_seconds_count'), 4);
  assert.equal(value('pdserve_request_time_per_output_token_seconds_count'), 2);
  assert.equal(value('pdserve_time_to_first_token_seconds_count'), 3);
  assert.equal(value('pdserve_ttft_breakdown_seconds_count{phase="prefill"}'), 1);
  assert.equal(value('pdserve_request_errors_total{code="503"}'), 1);
  assert.equal(value('pdserve_request_errors_total{code="400"}'), 1);
  assert.equal(value('pdserve_admission_rejected_total{reason="queue_full"}'), 1);
  assert.equal(value('pdserve_slo_requests_total{slo="all",outcome="met"}'), 1);
  assert.equal(value('pdserve_slo_requests_total{slo="all",outcome="missed"}'), 3); // slow, one, 503
  assert.equal(value('pdserve_slo_requests_total{slo="tpot",outcome="missed"}'), 2); // slow, 503
  assert.equal(value('pdserve_workers{role="prefill",state="healthy"}'), 1);
  assert.equal(value('pdserve_workers{role="decode",state="draining"}'), 0);
});

test('worker registry exports every listed metric with worker_id/role labels', async () => {
  const w = createWorkerMetrics({ role: 'decode', workerId: 'w-1' });
  w.observeStep({ phase: 'prefill', seconds: 0.5, tokens: 100 });
  w.observeStep({ phase: 'decode', seconds: 0.01, batchSize: 4 });
  w.observeKvTransfer({ seconds: 0.02, bytes: 3 * 1024 * 1024 });
  w.observeKvTransfer({ seconds: 0.01, bytes: 1024 * 1024, rawBytes: 2 * 1024 * 1024, wireDtype: 'fp16' });
  w.kvTransferFailed('timeout');
  w.setKvBlocks({ free: 25, total: 100 });
  const text = await w.registry.metrics();
  assertListed(text, WORKER_METRICS);
  assert.match(text, /^pdserve_kv_cache_usage_perc\{worker_id="w-1",role="decode"\} 0.75$/m);
  assert.match(text, /^pdserve_prefill_tokens_per_second\{worker_id="w-1",role="decode"\} 200$/m);
  assert.match(text, /^pdserve_generation_tokens_total\{worker_id="w-1",role="decode"\} 4$/m);
  assert.match(text, /^pdserve_kv_transfer_bytes_total\{wire_dtype="fp32",worker_id="w-1",role="decode"\} 3145728$/m);
  assert.match(text, /^pdserve_kv_transfer_bytes_total\{wire_dtype="fp16",worker_id="w-1",role="decode"\} 1048576$/m);
  assert.match(text, /^pdserve_kv_transfer_bytes_total\{wire_dtype="int8",worker_id="w-1",role="decode"\} 0$/m);
  assert.match(text, /^pdserve_kv_transfer_bytes_bucket\{le="65536",worker_id="w-1",role="decode",wire_dtype="fp32"\} 0$/m);
  assert.match(text, /^pdserve_kv_transfer_bytes_bucket\{le="1073741824",worker_id="w-1",role="decode",wire_dtype="fp32"\} 1$/m);
  assert.match(text, /^pdserve_kv_transfer_compression_ratio\{wire_dtype="fp16",worker_id="w-1",role="decode"\} 2$/m);
  assert.match(text, /^pdserve_kv_transfer_compression_ratio\{wire_dtype="fp32",worker_id="w-1",role="decode"\} 1$/m);
  assert.match(text, /^pdserve_batch_size_bucket\{le="256",worker_id="w-1",role="decode"\} 1$/m);
  assert.match(text, /^pdserve_kv_transfer_failures_total\{reason="checksum",worker_id="w-1",role="decode"\} 0$/m);
  assert.match(text, /^pdserve_kv_transfer_failures_total\{reason="timeout",worker_id="w-1",role="decode"\} 1$/m);
  assert.match(text, /^nodejs_eventloop_lag_seconds\{worker_id="w-1",role="decode"\} /m);
});

test('metrics server serves /metrics, /health and 404 on port 0', async () => {
  const w = createWorkerMetrics({ role: 'prefill', workerId: 'p-0', collectDefault: false });
  let healthy = true;
  const server = await startMetricsServer({
    host: '127.0.0.1', port: 0, registry: w.registry, health: () => ({ ok: healthy, role: 'prefill' }),
  });
  try {
    assert.ok(server.port > 0);
    const base = `http://127.0.0.1:${server.port}`;
    const metrics = await fetch(`${base}/metrics`);
    assert.equal(metrics.status, 200);
    assert.equal(metrics.headers.get('content-type'), w.registry.contentType);
    assert.match(await metrics.text(), /^pdserve_kv_cache_usage_perc\{worker_id="p-0",role="prefill"\} 0$/m);

    const health = await fetch(`${base}/health?verbose=1`);
    assert.equal(health.status, 200);
    assert.deepEqual(await health.json(), { ok: true, role: 'prefill' });
    healthy = false;
    assert.equal((await fetch(`${base}/health`)).status, 503);

    const missing = await fetch(`${base}/nope`);
    assert.equal(missing.status, 404);
    await missing.text();
    const post = await fetch(`${base}/metrics`, { method: 'POST' });
    assert.equal(post.status, 405);
    await post.text();
  } finally {
    await server.close();
  }
});

test('health probe that throws reports 503', async () => {
  const server = await startMetricsServer({
    host: '127.0.0.1', port: 0, registry: new Registry(), health: async () => { throw new Error('engine not loaded'); },
  });
  try {
    const res = await fetch(`http://127.0.0.1:${server.port}/health`);
    assert.equal(res.status, 503);
    assert.deepEqual(await res.json(), { ok: false, error: 'engine not loaded' });
  } finally {
    await server.close();
  }
});

test('dashboard helpers: expressions, metric names, exported names', () => {
  const dash = {
    panels: [
      { type: 'row', panels: [{ targets: [{ expr: 'sum(rate(a_total[$__rate_interval]))' }] }] },
      { targets: [{ expr: 'histogram_quantile(0.99, sum by (le) (rate(b_bucket{x="y"}[${__rate_interval}])))' }, { expr: '' }] },
    ],
  };
  assert.deepEqual(dashboardExpressions(dash), [
    'sum(rate(a_total[1m]))',
    'histogram_quantile(0.99, sum by (le) (rate(b_bucket{x="y"}[1m])))',
  ]);
  assert.deepEqual(
    metricNamesInExpr('sum by (code) (rate(x_total{code=~"5.."}[1m])) / ignoring(code) group_left sum(rate(y_total[5m] offset 1m)) or on() vector(0)'),
    ['x_total', 'y_total'],
  );
  assert.deepEqual(metricNamesInExpr('label_replace(up, "a", "$1", "b", "(.*)") > bool 0.5e3'), ['up']);
  const names = exportedMetricNames(createRouterMetrics(new Registry(), { collectDefault: false }).registry);
  assert.ok(names.has('pdserve_time_to_first_token_seconds_bucket'));
  assert.ok(names.has('pdserve_request_errors_total'));
  assert.ok(!names.has('pdserve_time_to_first_token_seconds'));
});
