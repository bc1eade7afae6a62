// Redis is only the registry: when it goes away the router keeps routing from the last worker list
// it read, and when it returns on the same address the workers re-register and all carries on.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startRedisServer, type RedisServerHandle } from '../packages/common/src/index.ts';
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

test('the router serves through a Redis outage and the registry recovers when Redis returns', async (t) => {
  if (!requireShared(t, 'models', 'stories260K')) return;
  model = stories260K();
  cluster = await startCluster(model.dir, ['--redis-url', redis!.url]);
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
  assert.equal((await fetch(`${cluster.url}/ready`)).status, 200, 'still ready from the last known workers');

  redis = await startRedisServer({ port });
  const workers = await waitFor(async () => {
    const w = ((await (await fetch(`${cluster!.url}/workers`)).json()) as any).workers as any[];
    return w.length === 2 && w.every((x) => x.healthy && Date.now() - x.last_heartbeat_ms < 3000) ? w : undefined;
  }, 15_000, 'both workers to heartbeat into the restarted Redis');
  assert.deepEqual(workers.map((w) => w.role).sort(), ['decode', 'prefill']);
  assert.equal((await ask()).status, 200);
});
