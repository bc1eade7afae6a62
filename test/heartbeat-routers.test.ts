// Faults of the control plane, through real processes: a worker frozen (SIGSTOP) past the
// heartbeat TTL leaves routing and comes back after SIGCONT, with no request left hanging; two
// routers on one Redis serve the same cluster, and killing one (with streams in flight) leaves the
// other serving and the worker's KV blocks all free.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { freePort, startRedisServer, type RedisServerHandle } from '../packages/common/src/index.ts';
import { postJson, startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { repoRoot } from './support/shared.ts';
import { needStories260K } from '../services/worker/test/support/workers.ts';
import { workerPids } from '../scripts/lib/cluster-processes.ts';

/** A request that has not ended after this long counts as hung (the router's own bounds are longer only for silent streams: 60 s). */
const HANG_MS = 45_000;

async function healthyWorkers(routerUrl: string): Promise<number> {
  const text = await (await fetch(`${routerUrl}/metrics`)).text();
  return text.split('\n').filter((l) => l.startsWith('pdserve_workers{') && l.includes('state="healthy"')).reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
}

const complete = (c: TestCluster | { url: string; modelName: string }, url = c.url) =>
  fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(HANG_MS),
    body: JSON.stringify({ model: c.modelName, prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }),
  }).then(async (r) => ({ status: r.status, body: await r.text() }));

describe('a worker frozen past the heartbeat TTL', () => {
  let model: { dir: string; cleanup(): void } | undefined;
  let cluster: TestCluster | undefined;

  before(async () => {
    model = stories260K();
    cluster = await startCluster(model.dir, ['--unified', '2', '--planner', 'off'], 90_000);
  });
  after(async () => {
    await cluster?.stop();
    model?.cleanup();
  });

  test('SIGSTOP: it leaves routing, requests still complete; SIGCONT: it comes back', async (t) => {
    if (!needStories260K(t)) return;
    const c = cluster!;
    await waitFor(async () => ((await healthyWorkers(c.url)) === 2 ? true : undefined), 20_000, 'two healthy workers');
    const [frozen] = workerPids(c.proc.pid!);
    assert.ok(frozen, 'a worker pid');
    process.kill(frozen, 'SIGSTOP');
    try {
      // Requests sent while it freezes: each ends (served by the other worker, or after the retry
      // once the frozen one's connection is declared dead); none hangs.
      const during = await Promise.all([0, 1, 2, 3].map(() => complete(c).catch((err: Error) => {
        throw new Error(`request did not end: ${err.message}\n${c.output().split('\n').filter((l) => /warn|error|lost|WARN|ERROR/.test(l)).slice(-30).join('\n')}`);
      })));
      for (const r of during) assert.equal(r.status, 200, r.body);
      await waitFor(async () => ((await healthyWorkers(c.url)) === 1 ? true : undefined), 20_000, 'the frozen worker out of routing');
      const out = await Promise.all([0, 1, 2, 3].map(() => complete(c)));
      for (const r of out) assert.equal(r.status, 200, r.body);
    } finally {
      process.kill(frozen, 'SIGCONT');
    }
    await waitFor(async () => ((await healthyWorkers(c.url)) === 2 ? true : undefined), 30_000, 'the worker back in routing');
    for (const r of await Promise.all([0, 1, 2, 3].map(() => complete(c)))) assert.equal(r.status, 200, r.body);
  });
});

describe('two routers on one Redis', () => {
  let redis: RedisServerHandle | undefined;
  let model: { dir: string; cleanup(): void } | undefined;
  let cluster: TestCluster | undefined;
  let second: ChildProcess | undefined;
  let secondOut = '';
  let secondUrl = '';

  before(async () => {
    redis = await startRedisServer();
    model = stories260K();
    cluster = await startCluster(model.dir, ['--unified', '1', '--planner', 'off'], 90_000, { env: { PDSERVE_REDIS_URL: redis.url } });
    const port = await freePort();
    second = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, 'packages/cli/src/main.ts'), 'router', '--model', model.dir, '--port', String(port)], {
      cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PDSERVE_REDIS_URL: redis.url },
    });
    second.stdout!.on('data', (d) => { secondOut += d; });
    second.stderr!.on('data', (d) => { secondOut += d; });
    secondUrl = `http://127.0.0.1:${port}`;
    await waitFor(async () => {
      if (second!.exitCode !== null) throw new Error(`second router exited:\n${secondOut.slice(-3000)}`);
      try { return (await fetch(`${secondUrl}/ready`)).ok ? true : undefined; } catch { return undefined; }
    }, 60_000, 'the second router ready');
  });
  after(async () => {
    if (second && second.exitCode === null) second.kill('SIGKILL');
    await cluster?.stop();
    await redis?.stop();
    model?.cleanup();
  });

  test('both serve the same workers; killing one with streams in flight leaves the other serving and no KV block held', async (t) => {
    if (!needStories260K(t)) return;
    const c = cluster!;
    assert.equal(await healthyWorkers(secondUrl), 1);
    const both = await Promise.all([c.url, secondUrl, c.url, secondUrl].map((u) => complete(c, u)));
    for (const r of both) assert.equal(r.status, 200, r.body);

    // Streams in flight on the second router, then it dies (SIGKILL: no cleanup of its own).
    const streams = [0, 1].map(() => fetch(`${secondUrl}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: c.modelName, prompt: 'Once upon a time', max_tokens: 200, temperature: 0, stream: true, ignore_eos: true }),
    }));
    const first = await streams[0]!;
    const reader = first.body!.getReader();
    await reader.read(); // at least one chunk: the stream is decoding on the worker
    second!.kill('SIGKILL');
    await Promise.allSettled(streams);

    for (const r of await Promise.all([0, 1, 2].map(() => complete(c)))) assert.equal(r.status, 200, r.body);
    // The worker let go of the dead router's sequences: every KV block free again.
    const metricsUrl = /"metrics":"([^"]+)"/.exec(c.output())?.[1];
    assert.ok(metricsUrl, 'the worker metrics url in the log');
    await waitFor(async () => {
      const { load } = await (await fetch(metricsUrl.replace(/\/metrics$/, '/health'))).json() as { load: { free_kv_blocks: number; total_kv_blocks: number; running: number } };
      return load.total_kv_blocks > 0 && load.free_kv_blocks === load.total_kv_blocks && load.running === 0 ? true : undefined;
    }, 30_000, 'every KV block free after the router died');
  });
});
