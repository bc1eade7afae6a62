// Live role changes and the planner, through real processes: `pdserve up` (redis-server of the
// test's own, router, workers over gRPC, ONNX Runtime) and `pdserve planner` processes. Streams in
// flight while a worker changes role must all complete with the single-engine greedy text.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Engine, generate } from '../packages/engine/src/index.ts';
import {
  clusterKeys, createRedisClient, freePort, getPdRatio, parseWorkerRecord, publishRouterStats, setDesiredRole, startRedisServer, waitForReady,
  type RedisClient, type RedisServerHandle, type RouterStats, type WorkerRecord,
} from '../packages/common/src/index.ts';
import { readDecisions } from '../services/planner/src/index.ts';
import { postJson, readSse, startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { repoRoot, sharedPath } from './support/shared.ts';

const keys = clusterKeys();
const MAX_TOKENS = 100;
const prompts = ['Once upon a time', 'The little dog ran to the park', 'Lily and Tom found a big red box', 'Sam'];

interface Planner {
  id: string;
  proc: ChildProcess;
  metricsPort: number;
  output(): string;
  health(): Promise<{ leader: boolean } | undefined>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

async function startPlanner(redisUrl: string, id: string, extra: string[] = []): Promise<Planner> {
  const metricsPort = await freePort();
  const proc = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, 'packages/cli/src/main.ts'), 'planner', '--redis-url', redisUrl, '--id', id,
    '--metrics-port', String(metricsPort), '--interval-ms', '200', '--lease-ms', '1500', '--min-requests', '1', '--min-dwell-ms', '60000', ...extra], {
    cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d) => { out += d; });
  proc.stderr!.on('data', (d) => { out += d; });
  const health = async () => {
    try {
      return (await (await fetch(`http://127.0.0.1:${metricsPort}/health`)).json()) as { leader: boolean };
    } catch {
      return undefined;
    }
  };
  await waitFor(async () => ((await health()) ? true : undefined), 20_000, `planner ${id} to start`);
  return {
    id, proc, metricsPort, output: () => out, health,
    stop: async (signal = 'SIGTERM') => {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill(signal);
      await exited;
    },
  };
}

async function workerRecords(redis: RedisClient): Promise<WorkerRecord[]> {
  const ids = (await redis.smembers(keys.workers)).sort();
  if (ids.length === 0) return [];
  return (await redis.mget(ids.map((id) => keys.worker(id)))).map((r) => parseWorkerRecord(r)).filter((w): w is WorkerRecord => w !== undefined);
}

/** A router's statistics as a second router would publish them: a prefill-heavy load. */
function prefillHeavyStats(): RouterStats {
  return {
    router_id: 'router-test', window_s: 30, arrivals: 3000, arrival_rate: 100, finished: 3000, prompt_tokens_mean: 400, output_tokens_mean: 4,
    slo_attainment: 0.5, rejected: 0, slo_ttft_ms: 5000, slo_tpot_ms: 1000, updated_ms: Date.now(),
  };
}

interface Outcome { prompt: string; status: number; text: string; done: boolean; start: number; end: number; error?: string }

/** Streams greedy completions from `concurrency` loops until stopped; records every outcome. */
function startLoad(c: TestCluster, concurrency = 3) {
  const outcomes: Outcome[] = [];
  let stopped = false;
  const loop = async (k: number) => {
    for (let i = k; !stopped; i++) {
      const prompt = prompts[i % prompts.length]!;
      const start = Date.now();
      try {
        const res = await fetch(`${c.url}/v1/completions`, {
          method: 'POST', headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: c.modelName, prompt, max_tokens: MAX_TOKENS, temperature: 0, stream: true }),
        });
        if (res.status !== 200) {
          outcomes.push({ prompt, status: res.status, text: '', done: false, start, end: Date.now(), error: await res.text() });
          continue;
        }
        const { events, done } = await readSse(res);
        const error = events.find((e) => e.error)?.error?.message;
        outcomes.push({ prompt, status: 200, text: events.filter((e) => e.choices?.length).map((e) => e.choices[0].text).join(''), done, start, end: Date.now(), error });
      } catch (err) {
        outcomes.push({ prompt, status: 0, text: '', done: false, start, end: Date.now(), error: (err as Error).message });
      }
    }
  };
  const loops = Array.from({ length: concurrency }, (_, k) => loop(k));
  return {
    outcomes,
    async stop(): Promise<Outcome[]> {
      stopped = true;
      await Promise.all(loops);
      return outcomes;
    },
  };
}

function assertAllRight(outcomes: Outcome[], expected: Map<string, string>): void {
  assert.ok(outcomes.length > 0, 'the load ran');
  const wrong = outcomes.filter((o) => o.status !== 200 || !o.done || o.error || o.text !== expected.get(o.prompt));
  assert.deepEqual(wrong.map((o) => ({ status: o.status, error: o.error, prompt: o.prompt, done: o.done, text: o.text.slice(0, 40) })), [], `${wrong.length} of ${outcomes.length} requests failed or differ`);
}

describe('live role changes and the planner', () => {
  let redis: RedisServerHandle | undefined;
  let client: RedisClient | undefined;
  let cluster: TestCluster | undefined;
  let model: { dir: string; cleanup(): void } | undefined;
  const planners: Planner[] = [];
  const expected = new Map<string, string>();

  before(async () => {
    if (!existsSync(sharedPath('models', 'stories260K'))) {
      if (process.env.CI === 'true') throw new Error('../shared/models/stories260K is missing');
      return;
    }
    redis = await startRedisServer();
    client = createRedisClient({ url: redis.url });
    await waitForReady(client, 5_000);
    model = stories260K();
    const engine = await Engine.load(model.dir, { threads: 1, maxSequences: 1 });
    for (const p of prompts) {
      const ids = engine.tokenizer.encode(p);
      const r = await generate(engine, ids, { temperature: 0, topK: 0, topP: 1, maxTokens: MAX_TOKENS });
      expected.set(p, engine.tokenizer.decode(r.ids, ids));
    }
    cluster = await startCluster(model.dir, ['--redis-url', redis.url, '--prefill', '1', '--decode', '1', '--planner', 'off', '--max-sequences', '8', '--role-grace-ms', '1000']);
  });

  after(async () => {
    for (const p of planners) await p.stop('SIGKILL');
    await cluster?.stop();
    client?.disconnect();
    await redis?.stop();
    model?.cleanup();
  });

  test('the planner moves 1 prefill + 1 decode to 2 unified under load: every stream completes with the right text', async (t) => {
    if (!cluster) return t.skip('no ../shared models');
    const redisC = client!;
    const load = startLoad(cluster);
    // The planner decides from measured speeds: wait until both workers have reported them.
    await waitFor(async () => {
      const ws = await workerRecords(redisC);
      return ws.length === 2 && ws.some((w) => w.load.prefill_tokens_per_s) && ws.some((w) => w.load.decode_step_ms) ? true : undefined;
    }, 20_000, 'prefill and decode speeds in the load reports');
    await publishRouterStats(redisC, keys, prefillHeavyStats(), 60_000);
    const planner = await startPlanner(redis!.url, 'planner-a');
    planners.push(planner);
    const decision = await waitFor(async () => (await readDecisions(redisC, keys))[0], 20_000, "the planner's decision in the stream");
    assert.equal(decision.planner, 'planner-a');
    assert.deepEqual(JSON.parse(decision.to), { prefill: 0, decode: 0, unified: 2 });
    assert.match(decision.reason, /1P\+1D -> 2U/);
    assert.equal(decision.changes.length, 2);
    const changed = await waitFor(async () => {
      const r = (await (await fetch(`${cluster!.url}/workers`)).json()) as { workers: Array<{ id: string; role: string }> };
      return r.workers.length === 2 && r.workers.every((w) => w.role === 'unified') ? r.workers : undefined;
    }, 10_000, '/workers to show both workers unified');
    assert.equal(changed.length, 2);
    const ratio = await getPdRatio(redisC, keys);
    assert.equal(ratio?.unified_workers, 2);
    assert.equal(ratio?.prefill, 2);
    assert.equal(ratio?.decode, 2);
    assert.equal(ratio?.updated_by, 'planner-a');
    const records = await workerRecords(redisC);
    for (const w of records) {
      assert.equal(w.role_change?.decision_id, decision.id);
      t.diagnostic(`${w.id}: ${w.role_change!.from} -> ${w.role_change!.to} applied ${w.role_change!.applied_ms - decision.ts} ms after the decision`);
    }
    // Keep the load on past the change, then check every request.
    const appliedAt = Math.max(...records.map((w) => w.role_change!.applied_ms));
    await waitFor(async () => (load.outcomes.filter((o) => o.start > appliedAt).length >= 6 ? true : undefined), 20_000, 'requests after the change');
    const outcomes = await load.stop();
    assertAllRight(outcomes, expected);
    assert.ok(outcomes.some((o) => o.start < decision.ts && o.end > appliedAt), 'some streams were in flight across the change');
    await planner.stop();
  });

  test('an operator command moves a decoding worker to prefill: its streams finish, new decodes go elsewhere', async (t) => {
    if (!cluster) return t.skip('no ../shared models');
    const redisC = client!;
    const load = startLoad(cluster, 4);
    const busy = await waitFor(async () => (await workerRecords(redisC)).find((w) => w.load.running > 0), 20_000, 'a worker with running decodes');
    const requested = await setDesiredRole(redisC, keys, busy.id, { role: 'prefill', requested_by: 'test', reason: 'operator test' });
    const moved = await waitFor(async () => {
      const w = (await workerRecords(redisC)).find((x) => x.id === busy.id);
      return w?.role === 'prefill' && w.role_change?.settled_ms ? w : undefined;
    }, 20_000, 'the worker to settle as prefill');
    t.diagnostic(`applied ${moved.role_change!.applied_ms - requested.requested_ms} ms after the command, settled after ${moved.role_change!.settled_ms! - requested.requested_ms} ms`);
    // Settled: nothing decodes there any more, while the load goes on.
    await waitFor(async () => (load.outcomes.filter((o) => o.start > moved.role_change!.settled_ms!).length >= 6 ? true : undefined), 20_000, 'requests after the change');
    const after = (await workerRecords(redisC)).find((x) => x.id === busy.id)!;
    assert.equal(after.load.running, 0);
    const outcomes = await load.stop();
    assertAllRight(outcomes, expected);
    const r = (await (await fetch(`${cluster.url}/workers`)).json()) as { workers: Array<{ id: string; role: string }> };
    assert.equal(r.workers.find((w) => w.id === busy.id)?.role, 'prefill');
  });

  test('bad input: an unknown role or a non-hash command in Redis is logged, counted and ignored', async (t) => {
    if (!cluster) return t.skip('no ../shared models');
    const redisC = client!;
    const [a, b] = await workerRecords(redisC);
    await redisC.hset(keys.desiredRole(a!.id), { role: 'chef', requested_ms: String(Date.now()) });
    await redisC.set(keys.desiredRole(b!.id), 'unified');
    const count = async (w: WorkerRecord) => {
      const text = await (await fetch(w.metrics_url)).text();
      return Number(/^pdserve_role_change_rejected_total\{reason="invalid"[^}]*\} (\d+)/m.exec(text)?.[1] ?? 0);
    };
    await waitFor(async () => ((await count(a!)) === 1 && (await count(b!)) === 1 ? true : undefined), 10_000, 'both rejections counted');
    assert.match(cluster.output(), /unknown role \\"chef\\" \(one of prefill, decode, unified\)/);
    assert.match(cluster.output(), /is not a hash: WRONGTYPE/);
    // Still counted once after more heartbeats, roles unchanged, and the cluster serves.
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await count(a!), 1);
    const now = await workerRecords(redisC);
    assert.deepEqual(now.map((w) => w.role), [a!.role, b!.role]);
    const res = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: prompts[0], max_tokens: MAX_TOKENS, temperature: 0 });
    assert.equal(res.status, 200);
    assert.equal(res.json.choices[0].text, expected.get(prompts[0]!));
    await redisC.del(keys.desiredRole(a!.id), keys.desiredRole(b!.id));
  });

  test('a planner that loses Redis keeps the current roles and leads again when Redis returns', async (t) => {
    if (!cluster) return t.skip('no ../shared models');
    // It must not decide anything here (this test is about losing Redis, not about decisions): a
    // decision between the snapshot below and the outage changed roles in one CI run.
    const planner = await startPlanner(redis!.url, 'planner-blip', ['--min-requests', '1000000']);
    planners.push(planner);
    await waitFor(async () => ((await planner.health())?.leader ? true : undefined), 10_000, 'the planner to lead');
    const before = (await workerRecords(client!)).map((w) => [w.id, w.role]);
    const port = redis!.port;
    await redis!.stop();
    await waitFor(async () => (/planner tick failed; roles stay as they are/.test(planner.output()) ? true : undefined), 10_000, 'the planner to notice');
    const during = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: prompts[0], max_tokens: 8, temperature: 0 });
    assert.equal(during.status, 200, 'the cluster serves through the outage');
    assert.equal(planner.proc.exitCode, null, 'the planner is still running');
    redis = await startRedisServer({ port });
    client!.disconnect();
    client = createRedisClient({ url: redis.url });
    await waitForReady(client, 5_000);
    await waitFor(async () => ((await workerRecords(client!)).length === 2 ? true : undefined), 10_000, 'the workers to re-register');
    await waitFor(async () => ((await client!.get(keys.plannerLock))?.startsWith('planner-blip:') ? true : undefined), 10_000, 'the planner to lead again');
    assert.deepEqual((await workerRecords(client!)).map((w) => [w.id, w.role]), before);
    await planner.stop();
  });
});

describe('planner election', () => {
  let redis: RedisServerHandle | undefined;
  let client: RedisClient | undefined;
  const planners: Planner[] = [];

  before(async () => {
    redis = await startRedisServer();
    client = createRedisClient({ url: redis.url });
    await waitForReady(client, 5_000);
  });

  after(async () => {
    for (const p of planners) await p.stop('SIGKILL');
    client?.disconnect();
    await redis?.stop();
  });

  test('two planners: one leads and acts; kill it and the other takes over (and honours the dwell)', async () => {
    const redisC = client!;
    // Two workers' records as they would heartbeat them (no processes behind: the planners only read them).
    const now = Date.now();
    for (const [id, role] of [['prefill-x', 'prefill'], ['decode-x', 'decode']] as const) {
      const record: WorkerRecord = {
        id, role, grpc_address: '127.0.0.1:1', metrics_url: 'http://127.0.0.1:1/metrics', model: 'm', started_at: now, last_heartbeat_ms: now,
        ttl_ms: 600_000, heartbeat_ms: 1000, state: 'ready',
        load: { queue_len: 0, running: 1, waiting: 0, free_kv_blocks: 10, total_kv_blocks: 10, kv_block_tokens: 16, prefill_tokens_per_s: 20_000, decode_step_ms: 2, decode_batch: 1, max_sequences: 8 },
      };
      await redisC.multi().set(keys.worker(id), JSON.stringify(record), 'PX', 600_000).sadd(keys.workers, id).exec();
    }
    await publishRouterStats(redisC, keys, prefillHeavyStats(), 600_000);
    const [a, b] = await Promise.all([startPlanner(redis!.url, 'planner-1'), startPlanner(redis!.url, 'planner-2')]);
    planners.push(a!, b!);
    const decisions = await waitFor(async () => { const d = await readDecisions(redisC, keys); return d.length ? d : undefined; }, 10_000, 'a decision');
    const holder = (await redisC.get(keys.plannerLock))!;
    const leader = holder.startsWith('planner-1:') ? a! : b!;
    const standby = leader === a ? b! : a!;
    assert.equal(decisions[0]!.planner, leader.id);
    assert.equal((await leader.health())?.leader, true);
    assert.equal((await standby.health())?.leader, false);
    assert.equal((await redisC.hgetall(keys.desiredRole('prefill-x'))).role, 'unified');
    // Only the leader acts: one decision, however many ticks both planners ran.
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal((await readDecisions(redisC, keys)).length, 1);

    await leader.stop('SIGKILL');
    await waitFor(async () => ((await standby.health())?.leader ? true : undefined), 10_000, 'the standby to take over');
    assert.ok((await redisC.get(keys.plannerLock))!.startsWith(`${standby.id}:`));
    // The records still show 1P+1D (nothing carried the commands out), but the successor read the
    // last decision from the stream: within the dwell time it does not decide again.
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal((await readDecisions(redisC, keys)).length, 1);
    assert.match(standby.output(), /planner elected leader/);
    assert.ok(Number(await redisC.get(keys.plannerEpoch)) >= 2, 'each election bumps the epoch');
  });
});
