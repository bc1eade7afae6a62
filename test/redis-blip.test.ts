// Redis is only the registry: when it goes away the router keeps routing from the last worker list
// it read, and when it returns on the same address the workers re-register and all carries on.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterKeys, createRedisClient, setAdmission, startRedisServer, waitForReady, type RedisServerHandle } from '../packages/common/src/index.ts';
import { postJson, startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { requireShared } from './support/shared.ts';

let redis: RedisServerHandle | undefined;
let cluster: TestCluster | undefined;
let model: { dir: string; cleanup(): void } | undefined;

before(async () => {
  redis = await startRedisServer();
});

after(async () => {
  await cluster?.stop();
  await redis?.stop();
  model?.cleanup();
});

async function ensureCluster(): Promise<TestCluster> {
  model ??= stories260K();
  cluster ??= await startCluster(model.dir, ['--redis-url', redis!.url, '--prefill', '1', '--decode', '1', '--planner', 'off']);
  return cluster;
}

test('the admission state an operator sets in Redis closes and reopens the cluster', async (t) => {
  if (!requireShared(t, 'models', 'stories260K')) return;
  const c = await ensureCluster();
  const client = createRedisClient({ url: redis!.url });
  t.after(() => client.quit());
  assert.ok(await waitForReady(client, 5_000), 'connected to Redis');
  const keys = clusterKeys();
  const ask = () => postJson(`${c.url}/v1/completions`, { model: c.modelName, prompt: 'Once upon a time', max_tokens: 4 });
  await setAdmission(client, keys, { state: 'closed', reason: 'maintenance window', updated_by: 'test' });
  const closed = await waitFor(async () => { const r = await ask(); return r.status === 503 ? r : undefined; }, 5_000, 'the router to see the closed state');
  assert.equal(closed.json.error.code, 'admission_closed');
  assert.match(closed.json.error.message, /maintenance window/);
  assert.ok(closed.headers.get('retry-after'));
  await setAdmission(client, keys, { state: 'open', updated_by: 'test' });
  await waitFor(async () => ((await ask()).status === 200 ? true : undefined), 5_000, 'the router to admit again');
});

test('the router serves through a Redis outage and the registry recovers when Redis returns', async (t) => {
  if (!requireShared(t, 'models', 'stories260K')) return;
  await ensureCluster();
  const ask = () => postJson(`${cluster!.url}/v1/completions`, { model: cluster!.modelName, prompt: 'Once upon a time', max_tokens: 8, temperature: 0 });
  const before = await ask();
  assert.equal(before.status, 200);

  const port = redis!.port;
  await redis!.stop();
  // Past the workers' heartbeat TTL (3 s): nothing can refresh their records now.
  await new Promise((r) => setTimeout(r, 3500));
  for (let i = 0; i < 3; i++) {
    const during = await ask();
    assert.equal(during.status, 200, JSON.stringify(during.json));
    assert.equal(during.json.choices[0].text, before.json.choices[0].text);
  }
  assert.equal((await fetch(`${cluster!.url}/ready`)).status, 200, 'still ready from the last known workers');

  redis = await startRedisServer({ port });
  const workers = await waitFor(async () => {
    const w = ((await (await fetch(`${cluster!.url}/workers`)).json()) as any).workers as any[];
    return w.length === 2 && w.every((x) => x.healthy && Date.now() - x.last_heartbeat_ms < 3000) ? w : undefined;
  }, 15_000, 'both workers to heartbeat into the restarted Redis');
  assert.deepEqual(workers.map((w) => w.role).sort(), ['decode', 'prefill']);
  assert.equal((await ask()).status, 200);
});
