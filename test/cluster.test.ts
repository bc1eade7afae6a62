// End to end through real processes: `pdserve up` (redis-server, router, workers over gRPC, ONNX
// Runtime), driven over HTTP and with the official openai client, disaggregated and unified.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import OpenAI from 'openai';
import { Engine, generate } from '../packages/engine/src/index.ts';
import { postJson, readSse, startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { sharedPath } from './support/shared.ts';
import { spawnSync } from 'node:child_process';

const modes: Array<{ name: string; args: string[]; workers: number }> = [
  { name: 'disaggregated 1 prefill + 1 decode', args: ['--prefill', '1', '--decode', '1'], workers: 2 },
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
      assert.deepEqual(r.json.usage, { prompt_tokens: 5, completion_tokens: maxTokens, total_tokens: 5 + maxTokens });

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
      const controller = new AbortController();
      const res = await fetch(`${cluster.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, signal: controller.signal,
        body: JSON.stringify({ model: cluster.modelName, prompt: golden.prompt, max_tokens: 400, temperature: 0, stream: true, ignore_eos: true }),
      });
      const reader = res.body!.getReader();
      await reader.read(); // the stream is flowing: KV is held on the decode side
      const busy = await waitFor(async () => {
        const w = ((await (await fetch(`${cluster!.url}/workers`)).json()) as any).workers as any[];
        return w.some((x) => x.load.running > 0 || x.load.free_kv_blocks < x.load.total_kv_blocks) ? w : undefined;
      }, 10_000, 'a worker to report the running sequence');
      assert.ok(busy.length >= 1);
      controller.abort();
      const workers = await waitFor(async () => {
        const w = ((await (await fetch(`${cluster!.url}/workers`)).json()) as any).workers as any[];
        return w.length === mode.workers && w.every((x) => x.load.running === 0 && x.load.waiting === 0 && x.load.free_kv_blocks === x.load.total_kv_blocks) ? w : undefined;
      }, 15_000, 'every worker to report all KV blocks free');
      assert.equal(workers.length, mode.workers);
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
      const router = await (await fetch(`${cluster.url}/metrics`)).text();
      const value = (text: string, name: string) => Number(/^(\S+) (\S+)$/m.exec(text.split('\n').filter((l) => l.startsWith(name + ' ') || l.startsWith(name + '{')).join('\n'))?.[2] ?? NaN);
      assert.ok(value(router, 'pdserve_time_to_first_token_seconds_count') >= 10);
      assert.ok(value(router, 'pdserve_generation_tokens_total') > 100);
      const workers = ((await (await fetch(`${cluster.url}/workers`)).json()) as any).workers as any[];
      for (const w of workers) {
        const text = await (await fetch(w.metrics_url)).text();
        assert.match(text, /pdserve_kv_cache_usage_perc/);
        assert.match(text, /pdserve_step_duration_seconds_count/);
        assert.match(text, /nodejs_eventloop_lag_seconds/);
      }
      if (workerCount === 2) {
        const prefill = workers.find((w) => w.role === 'prefill');
        const text = await (await fetch(prefill.metrics_url)).text();
        assert.ok(value(text, 'pdserve_kv_transfer_bytes_total') > 0, 'prefill worker counted KV bytes sent');
      }
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
