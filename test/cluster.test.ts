// End to end through real processes: `pdserve up` (redis-server, router, workers over gRPC, ONNX
// Runtime), driven over HTTP and with the official openai client, disaggregated and unified.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';
import { Engine, generate } from '../packages/engine/src/index.ts';
import { postJson, readSse, startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { repoRoot, sharedPath } from './support/shared.ts';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dashboardExpressions, findExecutable, freePort } from '../packages/common/src/index.ts';

const modes: Array<{ name: string; args: string[]; workers: number }> = [
  // Every prompt through the prefill worker and a KV transfer (auto placement, which may prefill
  // short prompts on the decode worker, is test/slo.test.ts).
  { name: 'disaggregated 1 prefill + 1 decode', args: ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote'], workers: 2 },
  { name: 'unified 1', args: ['--unified', '1'], workers: 1 },
];

const prompts = [
  'Once upon a time',
  'The little dog ran to the park',
  'Lily and Tom found a big red box under the tree. They opened it and',
  'Sam',
];

for (const mode of modes) {
  describe(`cluster: ${mode.name}`, () => {
    let cluster: TestCluster | undefined;
    let model: { dir: string; cleanup(): void } | undefined;
    const expected = new Map<string, string>();
    let golden: any;
    let seededText = '';

    before(async () => {
      if (process.env.CI !== 'true' && !requireSharedSilently()) return;
      golden = JSON.parse(readFileSync(sharedPath('golden', 'stories260K.once-upon-a-time.json'), 'utf8'));
      model = stories260K();
      // What one engine in this process produces: the cluster must give the same tokens.
      const engine = await Engine.load(model.dir, { threads: 1, maxSequences: 1 });
      for (const p of prompts) {
        const ids = engine.tokenizer.encode(p);
        const r = await generate(engine, ids, { temperature: 0, topK: 0, topP: 1, maxTokens: 24 + p.length });
        expected.set(p, engine.tokenizer.decode(r.ids, ids));
      }
      const ids = engine.tokenizer.encode(prompts[0]);
      const sampled = await generate(engine, ids, { temperature: 0.9, topK: 40, topP: 0.95, seed: 42, maxTokens: 30 });
      seededText = engine.tokenizer.decode(sampled.ids, ids);
      cluster = await startCluster(model.dir, [...mode.args, '--max-sequences', '8']);
    });

    after(async () => {
      await cluster?.stop();
      model?.cleanup();
    });

    test('greedy /v1/completions equals the golden file, non-streaming and streaming', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const maxTokens = golden.positions + 1 - golden.prompt_ids.length;
      const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: golden.prompt, max_tokens: maxTokens, temperature: 0 });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.choices[0].text, golden.completion_text);
      assert.equal(r.json.choices[0].finish_reason, 'length');
      assert.deepEqual(r.json.usage, { prompt_tokens: 5, completion_tokens: maxTokens, total_tokens: 5 + maxTokens, prompt_tokens_details: { cached_tokens: 0 } });

      const res = await fetch(`${cluster.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: cluster.modelName, prompt: golden.prompt_ids, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } }),
      });
      assert.equal(res.headers.get('content-type')?.split(';')[0], 'text/event-stream');
      const { events, done } = await readSse(res);
      assert.ok(done, 'stream ends with [DONE]');
      const text = events.filter((e) => e.choices?.length).map((e) => e.choices[0].text).join('');
      assert.equal(text, golden.completion_text);
      assert.equal(events.at(-1).usage.completion_tokens, maxTokens);
    });

    test('a seeded sampled request gives the same text as one engine with that seed (prefill and decode draw from one stream)', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      for (let i = 0; i < 2; i++) {
        const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: prompts[0], max_tokens: 30, temperature: 0.9, top_k: 40, top_p: 0.95, seed: 42 });
        assert.equal(r.status, 200, JSON.stringify(r.json));
        assert.equal(r.json.choices[0].text, seededText);
      }
    });

    test('the official openai client consumes both endpoints, streamed and not', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: 'unused' });
      const models = await client.models.list();
      assert.equal(models.data[0].id, cluster.modelName);
      const c = await client.completions.create({ model: cluster.modelName, prompt: prompts[1], max_tokens: 24 + prompts[1].length, temperature: 0 });
      assert.equal(c.choices[0].text, expected.get(prompts[1]));
      let streamed = '';
      for await (const chunk of await client.completions.create({ model: cluster.modelName, prompt: prompts[1], max_tokens: 24 + prompts[1].length, temperature: 0, stream: true })) {
        streamed += chunk.choices[0]?.text ?? '';
      }
      assert.equal(streamed, expected.get(prompts[1]));
      const chat = await client.chat.completions.create({ model: cluster.modelName, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 12, temperature: 0 });
      assert.equal(chat.choices[0].message.role, 'assistant');
      assert.ok(chat.choices[0].message.content!.length > 0);
      let chatStreamed = '';
      for await (const chunk of await client.chat.completions.create({ model: cluster.modelName, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 12, temperature: 0, stream: true })) {
        chatStreamed += chunk.choices[0]?.delta?.content ?? '';
      }
      assert.equal(chatStreamed, chat.choices[0].message.content);
    });

    test('concurrent requests of different lengths all complete with the right text', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const results = await Promise.all([...prompts, ...prompts].map((p) =>
        postJson(`${cluster!.url}/v1/completions`, { model: cluster!.modelName, prompt: p, max_tokens: 24 + p.length, temperature: 0 })));
      results.forEach((r, i) => {
        const p = prompts[i % prompts.length];
        assert.equal(r.status, 200, JSON.stringify(r.json));
        assert.equal(r.json.choices[0].text, expected.get(p), `prompt ${JSON.stringify(p)}`);
      });
    });

    test('a cancelled stream frees its KV blocks on every worker', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const workers = ((await (await fetch(`${cluster.url}/workers`)).json()) as any).workers as any[];
      // Each worker's /health reports its load live (the registry's copy lags by a heartbeat).
      const live = async () => Promise.all(workers.map(async (w) => ((await (await fetch(w.metrics_url.replace(/metrics$/, 'health'))).json()) as any).load));
      const id = `cancel-${mode.workers}-${Date.now()}`;
      const controller = new AbortController();
      const res = await fetch(`${cluster.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': id }, signal: controller.signal,
        body: JSON.stringify({ model: cluster.modelName, prompt: golden.prompt, max_tokens: 500, temperature: 0, stream: true, ignore_eos: true }),
      });
      const reader = res.body!.getReader();
      await reader.read(); // tokens are flowing: the decode side holds the sequence's KV
      // Abort at once: stories260K decodes the 500 tokens in a few hundred ms, so any wait here
      // (a health poll first) let the generation finish before the cancel in one CI run.
      controller.abort();
      await waitFor(async () => ((await live()).every((l) => l.running === 0 && l.waiting === 0 && l.free_kv_blocks === l.total_kv_blocks) ? true : undefined),
        10_000, 'every worker to report all KV blocks free');
      // It was cancelled, not finished: the router ended it as an abort short of max_tokens, and no
      // worker logged the end of its generation.
      const lines = () => cluster!.output().split('\n').filter((l) => l.includes(id));
      const ended = await waitFor(async () => lines().flatMap((l) => { try { return [JSON.parse(l)]; } catch { return []; } }).find((l) => l.msg === 'generation finished'),
        10_000, 'the router to log the end of the request');
      assert.equal(ended.finishReason, 'abort');
      assert.ok(ended.completionTokens < 500, `${ended.completionTokens} tokens before the abort`);
      assert.ok(!lines().some((l) => l.includes('decode finished')), 'the generation was cut short');
      const reports = await waitFor(async () => {
        const w = ((await (await fetch(`${cluster!.url}/workers`)).json()) as any).workers as any[];
        return w.every((x) => x.load.free_kv_blocks === x.load.total_kv_blocks) ? w : undefined;
      }, 10_000, 'the registry load reports to show the blocks free');
      assert.equal(reports.length, mode.workers);
    });

    test('bad requests get OpenAI errors with the right status, and the router keeps serving', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const url = `${cluster.url}/v1/completions`;
      const malformed = await postJson(url, '{"model": ');
      assert.equal(malformed.status, 400);
      assert.equal(typeof malformed.json.error.message, 'string');
      const unknown = await postJson(url, { model: 'no-such-model', prompt: 'hi' });
      assert.equal(unknown.status, 404);
      assert.equal(unknown.json.error.code, 'model_not_found');
      const negative = await postJson(url, { model: cluster.modelName, prompt: 'hi', max_tokens: -5 });
      assert.equal(negative.status, 400);
      assert.equal(negative.json.error.param, 'max_tokens');
      const long = await postJson(url, { model: cluster.modelName, prompt: Array.from({ length: 600 }, () => 300), max_tokens: 4 });
      assert.equal(long.status, 413);
      const overflow = await postJson(url, { model: cluster.modelName, prompt: golden.prompt, max_tokens: 600 });
      assert.equal(overflow.status, 400);
      const empty = await postJson(`${cluster.url}/v1/chat/completions`, { model: cluster.modelName, messages: [] });
      assert.equal(empty.status, 400);
      assert.ok(empty.json.error.message);
      const ok = await postJson(url, { model: cluster.modelName, prompt: prompts[0], max_tokens: 24 + prompts[0].length, temperature: 0 });
      assert.equal(ok.status, 200);
      assert.equal(ok.json.choices[0].text, expected.get(prompts[0]));
    });

    test('the request id follows a request from the router into every worker log line about it', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const id = `trace-${mode.workers}-${Date.now()}`;
      const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: prompts[0], max_tokens: 4 }, { 'x-request-id': id });
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('x-request-id'), id);
      const lines = await waitFor(async () => {
        const found = cluster!.output().split('\n').filter((l) => l.includes(id)).map((l) => JSON.parse(l));
        const names = new Set(found.map((l) => `${l.name}:${l.msg}`));
        return names.has('pdserve-worker:prefill done') && names.has('pdserve-worker:decode finished') && found.some((l) => l.name === 'pdserve-router') ? found : undefined;
      }, 5_000, 'router and worker log lines with the request id');
      for (const l of lines) assert.equal(l.request_id, id);
    });

    test('every Grafana dashboard query returns data from a real Prometheus scraping this cluster', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      if (mode.workers !== 2) return t.skip('checked once, on the disaggregated cluster (it has every worker metric)');
      if (!findExecutable('prometheus')) {
        if (process.env.CI === 'true') throw new Error('prometheus is not installed (apt-get install prometheus)');
        return t.skip('prometheus is not installed (apt-get install prometheus)');
      }
      const workers = ((await (await fetch(`${cluster.url}/workers`)).json()) as any).workers as any[];
      // `pdserve up` runs a planner; its log line says where its metrics are.
      const plannerMetrics = /"metrics":"(http:[^"]+)","msg":"planner started"/.exec(cluster.output())?.[1];
      assert.ok(plannerMetrics, 'the planner logged its metrics URL');
      const targets = [new URL(cluster.url).host, ...workers.map((w) => new URL(w.metrics_url).host), new URL(plannerMetrics).host];
      const dir = mkdtempSync(join(tmpdir(), 'pdserve-prom-'));
      const port = await freePort();
      // The shipped deploy/prometheus.yml pattern (one job per service kind), with this cluster's ports.
      writeFileSync(join(dir, 'prometheus.yml'), [
        'global: { scrape_interval: 1s, evaluation_interval: 1s }',
        'scrape_configs:',
        `  - job_name: router\n    static_configs: [{ targets: ["${targets[0]}"] }]`,
        `  - job_name: workers\n    static_configs: [{ targets: [${targets.slice(1, -1).map((x) => `"${x}"`).join(', ')}] }]`,
        `  - job_name: planner\n    static_configs: [{ targets: ["${targets.at(-1)}"] }]`,
      ].join('\n'));
      const prom = spawn('prometheus', [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: 'ignore' });
      t.after(() => { prom.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }); });
      const api = `http://127.0.0.1:${port}/api/v1/query?query=`;
      const query = async (q: string) => (await (await fetch(api + encodeURIComponent(q))).json()) as any;
      await waitFor(async () => {
        try { const r = await query('count(up == 1)'); return Number(r.data.result[0]?.value[1]) === targets.length ? true : undefined; } catch { return undefined; }
      }, 20_000, 'Prometheus to scrape every service');
      // Traffic while Prometheus watches, so rates and histograms have data: a round before the
      // first poll and one more between polls until every query has data (no fixed waits).
      const traffic = () => Promise.all(prompts.map((p) => postJson(`${cluster!.url}/v1/completions`, { model: cluster!.modelName, prompt: p, max_tokens: 8, temperature: 0 })));
      await traffic();
      const dashboard = JSON.parse(readFileSync(join(repoRoot, 'deploy/grafana/dashboards/pdserve.json'), 'utf8'));
      const exprs = dashboardExpressions(dashboard, { window: '1m' });
      assert.ok(exprs.length >= 10, `dashboard has ${exprs.length} queries`);
      // Poll (not a fixed wait) until the scrapes after the traffic give every query data; a loaded
      // machine only delays this.
      let empty: string[] = [];
      await waitFor(async () => {
        await traffic();
        empty = [];
        for (const e of exprs) {
          const r = await query(e);
          assert.equal(r.status, 'success', `${e}: ${JSON.stringify(r)}`);
          if (!(r.data.result.length > 0)) empty.push(e);
        }
        return empty.length === 0 ? true : undefined;
      }, 30_000, 'every dashboard query to return data', 300).catch(() => {});
      assert.deepEqual(empty, [], 'queries that returned no data');
    });

    test('metrics on every service moved with the requests; SIGTERM to pdserve up stops every process', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const children = childPids(cluster.proc.pid!);
      assert.ok(children.length >= mode.workers + 1, `children: ${children}`);
      await metricsCheck(cluster, mode.workers);
      await cluster.stop();
      await waitFor(async () => (children.every((p) => !alive(p)) ? true : undefined), 15_000, 'every child process to exit');
    });

    /** The router and every worker export the metrics, moved as the requests above imply. */
    async function metricsCheck(cluster: TestCluster, workerCount: number): Promise<void> {
      const scrape = async (url: string) => await (await fetch(url)).text();
      // Sum of every series of a metric (all label sets).
      const total = (text: string, name: string) => text.split('\n')
        .filter((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'))
        .reduce((s, l) => s + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
      const workers = ((await (await fetch(`${cluster.url}/workers`)).json()) as any).workers as any[];
      const before = await scrape(`${cluster.url}/metrics`);
      const workerBefore = await Promise.all(workers.map((w) => scrape(w.metrics_url)));
      const sent = await Promise.all(prompts.map((p) => postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: p, max_tokens: 6, temperature: 0, ignore_eos: true })));
      const promptTokens = sent.reduce((s, r) => s + r.json.usage.prompt_tokens, 0);
      const completionTokens = sent.reduce((s, r) => s + r.json.usage.completion_tokens, 0);
      // Request-end hooks run after the last byte: poll until the router has counted every request.
      const after = await waitFor(async () => {
        const text = await scrape(`${cluster.url}/metrics`);
        const counted = (name: string) => total(text, name) - total(before, name) >= prompts.length;
        return counted('pdserve_request_success_total') && counted('pdserve_e2e_request_latency_seconds_count') ? text : undefined;
      }, 10_000, 'the router to count every finished request');
      const delta = (name: string) => total(after, name) - total(before, name);
      assert.equal(delta('pdserve_request_success_total'), prompts.length);
      assert.equal(delta('pdserve_time_to_first_token_seconds_count'), prompts.length);
      assert.equal(delta('pdserve_e2e_request_latency_seconds_count'), prompts.length);
      assert.equal(delta('pdserve_prompt_tokens_total'), promptTokens);
      assert.equal(delta('pdserve_generation_tokens_total'), completionTokens);
      assert.equal(delta('pdserve_ttft_breakdown_seconds_count'), prompts.length * 4);
      for (const name of ['pdserve_inter_token_latency_seconds_count', 'pdserve_request_time_per_output_token_seconds_count', 'pdserve_request_queue_time_seconds_count']) {
        assert.ok(delta(name) > 0, `${name} moved`);
      }
      for (const name of ['pdserve_num_requests_running', 'pdserve_num_requests_waiting', 'pdserve_workers', 'pdserve_admission_rejected_total', 'pdserve_request_errors_total', 'nodejs_eventloop_lag_seconds']) {
        assert.match(after, new RegExp(`^# TYPE ${name} `, 'm'), `router exports ${name}`);
      }
      for (const [i, w] of workers.entries()) {
        const text = await scrape(w.metrics_url);
        const wd = (name: string) => total(text, name) - total(workerBefore[i], name);
        for (const name of ['pdserve_kv_cache_usage_perc', 'pdserve_num_sequences_running', 'pdserve_num_sequences_waiting', 'pdserve_kv_blocks_free', 'pdserve_kv_transfer_failures_total', 'nodejs_heap_size_used_bytes']) {
          assert.match(text, new RegExp(`^${name}`, 'm'), `${w.role} exports ${name}`);
        }
        if (w.role !== 'decode') assert.ok(wd('pdserve_step_duration_seconds_count') >= 1, `${w.role} ran prefill steps`); // short prompts share passes
        if (w.role !== 'prefill') assert.ok(wd('pdserve_batch_size_count') > 0, `${w.role} ran decode steps`);
        if (w.role === 'prefill') {
          assert.equal(wd('pdserve_kv_transfer_seconds_count'), prompts.length, 'one KV transfer per request');
          assert.ok(wd('pdserve_kv_transfer_bytes_total') > 0, 'KV bytes counted');
        }
      }
      assert.equal(workers.length, workerCount);
    }
  });
}

function childPids(pid: number): number[] {
  const r = spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' });
  return r.stdout.split('\n').filter(Boolean).map(Number);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[2].startsWith('Z');
  } catch {
    return false;
  }
}

function requireSharedSilently(): boolean {
  try {
    return readFileSync(sharedPath('golden', 'stories260K.once-upon-a-time.json')).length > 0;
  } catch {
    return false;
  }
}
