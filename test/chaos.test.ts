// Chaos suite (issue 10): real `pdserve up` clusters (redis-server, router, workers as processes,
// stories260K on ONNX Runtime) with faults injected while requests are in flight.
//   - kill -9 of a decode worker with 8 streams in flight (held there by the workers' test-only
//     decode gate): all 8 complete, and (greedy) their texts equal the fault-free run's; the router
//     counts the migrations; up restarts the worker.
//   - kill -9 of the prefill worker with prompts queued: all complete (re-prefilled on the decode
//     workers, --prefill-placement remote falling back to local with no prefill worker left).
//   - clients disconnecting at random points under load leak no KV block (free = total again).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { counterTotal, workerPids } from '../scripts/lib/cluster-processes.ts';

interface StreamResult { text: string; finish: string | null; done: boolean; error?: unknown; chunks: number }

/** One streaming completion; `onChunk` sees the running chunk count (to time a fault). */
async function stream(url: string, model: string, prompt: string, maxTokens: number, onChunk?: (n: number) => void | Promise<void>, signal?: AbortSignal, extra: Record<string, unknown> = {}): Promise<StreamResult> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, signal,
    body: JSON.stringify({ model, prompt, max_tokens: maxTokens, temperature: 0, stream: true, ignore_eos: true, ...extra }),
  });
  assert.equal(res.status, 200, await res.clone().text().catch(() => ''));
  const out: StreamResult = { text: '', finish: null, done: false, chunks: 0 };
  const decoder = new TextDecoder();
  let buf = '';
  for await (const part of res.body!) {
    buf += decoder.decode(part as Uint8Array, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 2);
      if (!line.startsWith('data: ')) continue;
      const payload = line.slice(6);
      if (payload === '[DONE]') { out.done = true; continue; }
      const ev = JSON.parse(payload);
      if (ev.error) { out.error = ev.error; continue; }
      out.text += ev.choices[0].text ?? '';
      if (ev.choices[0].finish_reason) out.finish = ev.choices[0].finish_reason;
      await onChunk?.(++out.chunks);
    }
  }
  return out;
}

const PROMPTS = ['Once upon a time', 'The little dog', 'Lily and Ben', 'One day, a girl', 'The sun was', 'Tom had a red ball', 'In the park', 'A big bird'];
const MAX_TOKENS = 400; // stories260K's context is 512: long enough to be cut mid-stream
const DECODE_KILL_TOKENS = 64; // the decode gate holds the streams for the kill, so they need not be long

async function metrics(url: string): Promise<string> {
  return (await fetch(`${url}/metrics`)).text();
}

/** Every registered worker's KV blocks are all free (the router's /workers, from heartbeats). */
async function allKvFree(url: string, workers: number): Promise<true | undefined> {
  const body = await (await fetch(`${url}/workers`)).json() as { workers: Array<{ healthy: boolean; load: { free_kv_blocks: number; total_kv_blocks: number } }> };
  const live = body.workers.filter((w) => w.healthy);
  if (live.length < workers) return undefined;
  return live.every((w) => w.load.free_kv_blocks === w.load.total_kv_blocks) && live.some((w) => w.load.total_kv_blocks > 0) ? true : undefined;
}

describe('chaos', { timeout: 280_000 }, () => {
  let model: ReturnType<typeof stories260K>;
  before(() => { model = stories260K(); });
  after(() => model?.cleanup());

  test('kill -9 of a decode worker with 8 streams in flight: all complete, same text as without the fault; up restarts it', { timeout: 150_000 }, async () => {
    // The workers hold their decode steps while the gate file exists (PDSERVE_TEST_DECODE_GATE):
    // the 8 streams are placed, send their first token and wait there, so the kill certainly finds
    // streams in flight on the victim (stories260K otherwise decodes them to the end before it).
    const gate = join(mkdtempSync(join(tmpdir(), 'pdserve-chaos-')), 'hold-decode');
    const cluster: TestCluster = await startCluster(model.dir, ['--prefill', '1', '--decode', '2', '--planner', 'off', '--admission', 'off', '--max-sequences', '8', '--prefix-cache', 'off'], 60_000, { env: { PDSERVE_TEST_DECODE_GATE: gate } });
    try {
      const clean = await Promise.all(PROMPTS.map((p) => stream(cluster.url, cluster.modelName, p, DECODE_KILL_TOKENS)));
      for (const r of clean) assert.equal(r.finish, 'length');
      await waitFor(async () => (workerPids(cluster.proc.pid!, 'decode').length === 2 && (await fetch(`${cluster.url}/ready`)).ok ? true : undefined), 30_000, 'two decode workers');
      writeFileSync(gate, '');
      const faulty = Promise.all(PROMPTS.map((p) => stream(cluster.url, cluster.modelName, p, DECODE_KILL_TOKENS)));
      // Every stream sits in a decode worker's running batch (their heartbeats say where), held
      // there; the victim is a decode worker holding at least one (its id carries its pid).
      const holders = await waitFor(async () => {
        const body = await (await fetch(`${cluster.url}/workers`)).json() as { workers: Array<{ id: string; role: string; load: { running?: number } }> };
        const decode = body.workers.filter((w) => w.role === 'decode');
        return decode.reduce((n, w) => n + (w.load.running ?? 0), 0) === PROMPTS.length ? decode.filter((w) => (w.load.running ?? 0) > 0) : undefined;
      }, 30_000, 'all 8 streams held on the decode workers');
      const victim = Number(/^decode-.+-(\d+)-[0-9a-f]+$/.exec(holders[0]!.id)?.[1]);
      assert.ok(workerPids(cluster.proc.pid!, 'decode').includes(victim), `decode worker ${holders[0]!.id} is a child of up`);
      process.kill(victim, 'SIGKILL');
      rmSync(gate);
      for (const [i, r] of (await faulty).entries()) {
        assert.equal(r.error, undefined, `stream ${i} got an error: ${JSON.stringify(r.error)}`);
        assert.ok(r.done, `stream ${i} ended with [DONE]`);
        assert.equal(r.finish, 'length');
        assert.equal(r.text, clean[i]!.text, `stream ${i}: same text as the fault-free run`);
      }
      const page = await metrics(cluster.url);
      const logs = cluster.output().split('\n').filter((l) => /"level":(40|50)/.test(l)).slice(-15).join('\n');
      assert.ok(counterTotal(page, 'pdserve_request_migrations_total') >= 1, `no migration counted (victim ${victim}):\n${logs}`);
      // Supervision: the killed worker comes back and the cluster serves with both decode workers.
      const upMetrics = /^supervision metrics (http:\S+)$/m.exec(cluster.output())![1]!;
      await waitFor(async () => (counterTotal(await (await fetch(upMetrics)).text(), 'pdserve_worker_restarts_total', 'reason="SIGKILL"') === 1 ? true : undefined), 20_000, 'the restart counted');
      await waitFor(async () => (workerPids(cluster.proc.pid!, 'decode').length === 2 ? true : undefined), 30_000, 'a new decode worker');
      assert.ok(!workerPids(cluster.proc.pid!, 'decode').includes(victim));
      const after = await stream(cluster.url, cluster.modelName, PROMPTS[0]!, 20);
      assert.equal(after.finish, 'length');
      assert.equal(cluster.proc.exitCode, null, 'pdserve up is still running');
    } finally {
      await cluster.stop();
      rmSync(dirname(gate), { recursive: true, force: true });
    }
  });

  test('kill -9 of the prefill worker with prompts queued: all complete', { timeout: 120_000 }, async () => {
    const cluster = await startCluster(model.dir, ['--prefill', '1', '--decode', '2', '--planner', 'off', '--admission', 'off', '--max-sequences', '8', '--prefix-cache', 'off', '--prefill-placement', 'remote', '--prefill-chunk', '8']);
    try {
      // Long prompts in small chunks keep the prefill worker's queue full when it dies.
      const prompts = PROMPTS.map((p) => `${p} ${'and then they played in the garden all day long, '.repeat(25)}`);
      const clean = await Promise.all(prompts.map((p) => stream(cluster.url, cluster.modelName, p, 16)));
      const [victim] = workerPids(cluster.proc.pid!, 'prefill');
      assert.ok(victim, 'a prefill worker');
      const runs = prompts.map((p) => stream(cluster.url, cluster.modelName, p, 16));
      process.kill(victim!, 'SIGKILL');
      const faulty = await Promise.all(runs);
      for (const [i, r] of faulty.entries()) {
        assert.equal(r.error, undefined, `stream ${i} got an error: ${JSON.stringify(r.error)}`);
        assert.ok(r.done && r.finish === 'length', `stream ${i} completed`);
        assert.equal(r.text, clean[i]!.text, `stream ${i}: same text as the fault-free run`);
      }
      const page = await metrics(cluster.url);
      assert.ok(counterTotal(page, 'pdserve_request_migrations_total', 'reason="prefill_') >= 1, page.split('\n').filter((l) => l.includes('migrations')).join('\n'));
    } finally {
      await cluster.stop();
    }
  });

  test('clients disconnecting at random points under load leak no KV block', { timeout: 120_000 }, async () => {
    const cluster = await startCluster(model.dir, ['--prefill', '1', '--decode', '2', '--planner', 'off', '--admission', 'off', '--max-sequences', '8', '--prefix-cache', 'off']);
    try {
      let seed = 12345;
      const rand = () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31; };
      const runs: Array<Promise<unknown>> = [];
      for (let i = 0; i < 24; i++) {
        const ctrl = new AbortController();
        const cutAt = Math.floor(rand() * 40); // 0: before the first token
        if (cutAt === 0) setTimeout(() => ctrl.abort(), Math.floor(rand() * 20));
        runs.push(stream(cluster.url, cluster.modelName, PROMPTS[i % PROMPTS.length]!, MAX_TOKENS, (n) => { if (n >= cutAt) ctrl.abort(); }, ctrl.signal).catch(() => undefined));
      }
      await Promise.all(runs);
      await waitFor(() => allKvFree(cluster.url, 3), 20_000, 'every KV block free again');
    } finally {
      await cluster.stop();
    }
  });
});
