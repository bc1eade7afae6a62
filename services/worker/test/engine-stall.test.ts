// Issue 12 defect 6 (worker side), end to end: a real unified worker whose engine thread blocks
// synchronously in a step (the test-only PDSERVE_TEST_ENGINE_STALL_MS hook, as a hung forward pass
// would) longer than --engine-stall-s reports itself unhealthy on /health (503, engine_stalled_ms)
// and in its Redis heartbeat state (what the router's WorkerDirectory reads: not healthy, so not
// chosen), and recovers to ready once the thread resumes; the stalled request then completes.
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { grpc, WorkerDirectory, type RedisServerHandle } from '../../../packages/common/src/index.ts';
import { stories260K } from '../../../test/support/cluster.ts';
import { sharedPath } from '../../../test/support/shared.ts';
import { generate, pollUntil, prefill, sampling, startRedis, startWorkerProc, type WorkerProc, needStories260K } from './support/workers.ts';

const STALL_MS = 6_000;
const haveModel = existsSync(sharedPath('models', 'stories260K'));
let model: { dir: string; cleanup(): void } | undefined;
let redis: RedisServerHandle | undefined;
let U: WorkerProc;
let directory: WorkerDirectory;

before(async () => {
  if (!haveModel) return;
  model = stories260K();
  redis = await startRedis();
  U = await startWorkerProc(model.dir, redis.url, 'unified', ['--max-sequences', '2', '--engine-stall-s', '1', '--id', 'stall-u'],
    { PDSERVE_TEST_ENGINE_STALL_MS: String(STALL_MS) });
  directory = new WorkerDirectory({ redisUrl: redis.url, pollMs: 100 });
  await directory.start();
});

after(async () => {
  await directory?.stop();
  await U?.stop();
  await redis?.stop();
  model?.cleanup();
});

const need = needStories260K;

const registered = () => directory.list().find((w) => w.id === 'stall-u');

test('a stalled engine thread makes the worker unhealthy (/health 503, registry state) and it recovers', async (t) => {
  if (!need(t)) return;
  await pollUntil(async () => (registered()?.state === 'ready' && registered()?.healthy ? true : undefined), 10_000, 'the worker to be registered ready');
  assert.equal((await U.health()).status, 200);

  // The first step (this request's prefill) blocks the engine thread for STALL_MS.
  const maxTokens = 8;
  const g = generate(U, { request_id: 'stalled-1', prompt_len: 5, sampling: sampling({ max_tokens: maxTokens }) });
  await g.reserved;
  const p = prefill(U, { request_id: 'stalled-1', sampling: sampling({ max_tokens: maxTokens }), decode_address: U.address });

  const sick = await pollUntil(async () => {
    const h = await U.health();
    return h.status === 503 ? h.json : undefined;
  }, STALL_MS, '/health 503 while the engine thread stalls');
  assert.equal(sick.ok, false);
  assert.ok(sick.engine_stalled_ms >= 1000, `engine_stalled_ms ${sick.engine_stalled_ms}`);
  await pollUntil(async () => (registered()?.state === 'unhealthy' ? true : undefined), STALL_MS, 'registry state unhealthy');
  assert.equal(registered()!.healthy, false, 'the router does not choose an unhealthy worker');

  // The thread resumes: the request completes and the worker is ready again, without a restart.
  const pr = await p;
  assert.equal(pr.code, grpc.status.OK, pr.details);
  const end = await g.ended;
  assert.equal(end.code, grpc.status.OK, end.details);
  const tokens = end.events.filter((e) => e.event === 'tokens').flatMap((e) => e.tokens!.tokens);
  assert.equal(tokens.length, maxTokens, 'every token');
  await pollUntil(async () => ((await U.health()).status === 200 ? true : undefined), 5_000, '/health 200 again');
  await pollUntil(async () => (registered()?.state === 'ready' && registered()?.healthy ? true : undefined), 5_000, 'registry state ready again');
  assert.equal(U.proc.exitCode, null, 'the worker process lives');
});
