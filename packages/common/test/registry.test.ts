// WorkerRegistration / WorkerDirectory against a real redis-server on a free port.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Redis } from 'ioredis';
import { freePort } from '../src/process/free-port.ts';
import {
  clusterKeys,
  encodeWorkerRecord,
  getAdmission,
  getPdRatio,
  setAdmission,
  setPdRatio,
  type WorkerLoad,
  type WorkerRecord,
  type WorkerRole,
} from '../src/redis/keys.ts';
import { startRedisServer, type RedisServerHandle } from '../src/redis/redis-server.ts';
import { WorkerDirectory, WorkerRegistration, type WorkerInfo } from '../src/redis/registry.ts';
import type { LogLike } from '../src/process/log-like.ts';
import { sleep, waitFor } from './fixtures/util.ts';

// A heartbeat every 150 ms against a 1 s TTL: a live worker survives a 500 ms stall of this process
// (a loaded CI machine) with margin, while a dead one still lapses within a second or so.
const HB = 150;
const TTL = 1000;
const POLL = 100;

/** Collects log lines so tests can assert on them and stay quiet. */
function memoryLogger(): LogLike & { lines: Array<{ level: string; msg?: string; obj: Record<string, unknown> }> } {
  const lines: Array<{ level: string; msg?: string; obj: Record<string, unknown> }> = [];
  const at = (level: string) => (obj: Record<string, unknown>, msg?: string) => void lines.push({ level, msg, obj });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

function load(over: Partial<WorkerLoad> = {}): WorkerLoad {
  return { queue_len: 0, running: 0, waiting: 0, free_kv_blocks: 100, total_kv_blocks: 128, kv_block_tokens: 16, ...over };
}

let prefixCounter = 0;
const nextPrefix = (): string => `t${process.pid}-${++prefixCounter}`;

describe('redis worker registry', () => {
  let server: RedisServerHandle;
  let admin: Redis;
  const cleanups: Array<() => Promise<unknown>> = [];

  before(async () => {
    server = await startRedisServer();
    admin = new Redis(server.url, { lazyConnect: false });
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    admin.disconnect();
    await server.stop();
  });

  function registration(
    prefix: string,
    id: string,
    role: WorkerRole,
    getLoad: () => WorkerLoad = () => load(),
    url = server.url,
  ): WorkerRegistration {
    const r = new WorkerRegistration({
      redisUrl: url,
      prefix,
      worker: { id, role, grpc_address: `127.0.0.1:${50000 + prefixCounter}`, metrics_url: 'http://127.0.0.1:9000/metrics', model: 'tiny' },
      getLoad,
      heartbeatMs: HB,
      ttlMs: TTL,
      logger: memoryLogger(),
    });
    cleanups.push(() => r.stop());
    return r;
  }

  function directory(prefix: string, extra: { onChange?: (w: WorkerInfo[]) => void; url?: string; subscribe?: boolean } = {}): WorkerDirectory {
    const d = new WorkerDirectory({
      redisUrl: extra.url ?? server.url,
      prefix,
      pollMs: POLL,
      logger: memoryLogger(),
      onChange: extra.onChange,
      subscribe: extra.subscribe,
    });
    cleanups.push(() => d.stop());
    return d;
  }

  test('a registration appears in the directory with its load; ready() needs prefill + decode', async () => {
    const prefix = nextPrefix();
    let running = 3;
    const prefill = registration(prefix, 'p0', 'prefill', () => load({ running, queue_len: 2, step_ms_recent: [1, 2, 3] }));
    const changes: WorkerInfo[][] = [];
    const dir = directory(prefix, { onChange: (w) => changes.push(w) });
    assert.equal(await dir.start(), true);
    assert.deepEqual(dir.list(), []);
    assert.equal(dir.ready(), false);

    assert.equal(await prefill.start(), true);
    const w = await waitFor('p0 listed', () => dir.get('p0'));
    assert.equal(w.role, 'prefill');
    assert.equal(w.state, 'ready');
    assert.equal(w.healthy, true);
    assert.equal(w.ttl_ms, TTL);
    assert.equal(w.load.running, 3);
    assert.equal(w.load.queue_len, 2);
    assert.deepEqual(w.load.step_ms_recent, [1, 2, 3]);
    assert.ok(Date.now() - w.last_heartbeat_ms < 5 * TTL, 'a recent heartbeat');
    assert.equal(dir.ready(), false, 'prefill alone is not ready');
    assert.ok(changes.length >= 1);

    running = 7;
    await waitFor('load update', () => dir.get('p0')?.load.running === 7);

    const decode = registration(prefix, 'd0', 'decode');
    await decode.start();
    await waitFor('ready with p0 + d0', () => dir.ready());
    assert.deepEqual(dir.healthy('decode').map((x) => x.id), ['d0']);
    assert.deepEqual(dir.list().map((x) => x.id), ['d0', 'p0']);

    // The raw layout is what docs/redis.md says.
    const keys = clusterKeys(prefix);
    assert.deepEqual((await admin.smembers(keys.workers)).sort(), ['d0', 'p0']);
    const ttl = await admin.pttl(keys.worker('p0'));
    assert.ok(ttl > 0 && ttl <= TTL, `pttl ${ttl}`);
    assert.equal(await admin.get(keys.schema), '1');

    // One unified worker is ready on its own.
    const prefix2 = nextPrefix();
    const uni = registration(prefix2, 'u0', 'unified');
    const dir2 = directory(prefix2);
    await uni.start();
    await dir2.start();
    await waitFor('unified ready', () => dir2.ready());
  });

  test('TTL lapse: a worker that stops heartbeating becomes unhealthy, is pruned from the set, then forgotten', async () => {
    const prefix = nextPrefix();
    const keys = clusterKeys(prefix);
    const dir = directory(prefix);
    await dir.start();
    // A worker that heartbeats once and then "crashes" (no more heartbeats, no deregistration).
    const now = Date.now();
    const record: WorkerRecord = {
      id: 'crashy', role: 'decode', grpc_address: '127.0.0.1:1', metrics_url: '', model: 'tiny',
      started_at: now, last_heartbeat_ms: now, ttl_ms: TTL, heartbeat_ms: HB, state: 'ready', load: load(),
    };
    await admin.multi().set(keys.worker('crashy'), encodeWorkerRecord(record), 'PX', TTL).sadd(keys.workers, 'crashy').exec();
    await dir.refresh();
    assert.equal(dir.get('crashy')?.healthy, true);

    const lost = await waitFor('crashy lost', () => dir.get('crashy')?.lost_since !== undefined && dir.get('crashy'), TTL + 5000);
    assert.equal(lost.healthy, false);
    assert.deepEqual(dir.healthy(), []);
    assert.deepEqual(await admin.smembers(keys.workers), [], 'expired member pruned by the reader');

    // A live registration of the same id brings it back healthy.
    const back = registration(prefix, 'crashy', 'decode');
    await back.start();
    await waitFor('crashy back', () => dir.get('crashy')?.healthy === true && dir.get('crashy')?.lost_since === undefined);
  });

  test('lost workers are forgotten after forgetLostAfterMs', async () => {
    const prefix = nextPrefix();
    const keys = clusterKeys(prefix);
    const dir = new WorkerDirectory({ redisUrl: server.url, prefix, pollMs: POLL, forgetLostAfterMs: 200, subscribe: false });
    cleanups.push(() => dir.stop());
    await dir.start();
    const now = Date.now();
    const record: WorkerRecord = {
      id: 'gone', role: 'prefill', grpc_address: '127.0.0.1:1', metrics_url: '', model: 'tiny',
      started_at: now, last_heartbeat_ms: now, ttl_ms: 150, heartbeat_ms: 50, state: 'ready', load: load(),
    };
    await admin.multi().set(keys.worker('gone'), encodeWorkerRecord(record), 'PX', 150).sadd(keys.workers, 'gone').exec();
    await dir.refresh();
    assert.ok(dir.get('gone'));
    await waitFor('lost', () => dir.get('gone')?.lost_since !== undefined);
    await waitFor('forgotten', () => dir.get('gone') === undefined, 2000);
  });

  test('draining: state propagates, the worker stops counting as healthy', async () => {
    const prefix = nextPrefix();
    const p = registration(prefix, 'p0', 'prefill');
    const d = registration(prefix, 'd0', 'decode');
    // Long poll period: the change must arrive through the events channel.
    const dir = new WorkerDirectory({ redisUrl: server.url, prefix, pollMs: 5000 });
    cleanups.push(() => dir.stop());
    await Promise.all([p.start(), d.start()]);
    await dir.start();
    assert.equal(dir.ready(), true);

    const t0 = Date.now();
    assert.equal(await p.setState('draining'), true);
    assert.equal(p.state, 'draining');
    await waitFor('p0 draining', () => dir.get('p0')?.state === 'draining', 2000, 5);
    // Under the 5 s poll with margin for a stalled machine: only the event hint can get it here.
    assert.ok(Date.now() - t0 < 3500, 'event hint should beat the 5 s poll');
    assert.equal(dir.get('p0')?.healthy, false);
    assert.equal(dir.ready(), false);
    // Still heartbeating while draining: the key stays.
    await sleep(TTL + 100);
    assert.equal(dir.get('p0')?.state, 'draining');
    assert.equal(dir.get('p0')?.lost_since, undefined);

    await p.setState('ready');
    await waitFor('p0 ready again', () => dir.ready(), 2000, 5);
  });

  test('stop() deregisters: key and set member gone, directory drops it', async () => {
    const prefix = nextPrefix();
    const keys = clusterKeys(prefix);
    const r = registration(prefix, 'w1', 'unified');
    const dir = directory(prefix);
    await r.start();
    await dir.start();
    assert.ok(dir.get('w1'));
    await r.stop();
    assert.equal(await admin.exists(keys.worker('w1')), 0);
    assert.equal(await admin.sismember(keys.workers, 'w1'), 0);
    await waitFor('w1 gone', () => dir.get('w1') === undefined);
    // Not "lost": a deregistered worker just leaves.
    await sleep(TTL);
    assert.equal(dir.get('w1'), undefined);
    assert.equal(await admin.exists(keys.worker('w1')), 0, 'no late heartbeat re-created the key');
    await r.stop(); // idempotent
  });

  test('pd_ratio and admission helpers round-trip and show up in the directory', async () => {
    const prefix = nextPrefix();
    const keys = clusterKeys(prefix);
    assert.equal(await getPdRatio(admin, keys), undefined);
    assert.equal(await getAdmission(admin, keys), undefined);
    const dir = directory(prefix);
    await dir.start();

    const ratio = await setPdRatio(admin, keys, { prefill: 1, decode: 3, updated_by: 'test' });
    assert.deepEqual(await getPdRatio(admin, keys), ratio);
    assert.equal(ratio.prefill, 1);
    assert.equal(ratio.decode, 3);
    await assert.rejects(setPdRatio(admin, keys, { prefill: 0, decode: 1 }), /positive/);

    const adm = await setAdmission(admin, keys, { state: 'throttled', reason: 'kv pressure' });
    assert.deepEqual(await getAdmission(admin, keys), adm);
    assert.equal(adm.updated_by, undefined);

    await waitFor('directory sees ratio + admission', () => dir.pdRatio()?.decode === 3 && dir.admission()?.state === 'throttled');
    await setAdmission(admin, keys, { state: 'open' });
    await waitFor('admission open', () => dir.admission()?.state === 'open' && dir.admission()?.reason === '');
  });

  test('a registration started while redis is down registers once redis comes up', async () => {
    const port = await freePort();
    const url = `redis://127.0.0.1:${port}`;
    const prefix = nextPrefix();
    const r = registration(prefix, 'early', 'prefill', () => load(), url);
    const t0 = Date.now();
    assert.equal(await r.start(), false, 'first heartbeat fails without throwing');
    assert.ok(Date.now() - t0 < 10_000, 'a refused connection fails fast, it does not hang');
    assert.equal(r.registered, false);
    const late = await startRedisServer({ port });
    cleanups.push(() => late.stop());
    const check = new Redis(url);
    cleanups.push(async () => check.disconnect());
    // The key lands in Redis a moment before the heartbeat's reply sets `registered`: wait for both.
    await waitFor('registered after redis start', async () => (await check.exists(clusterKeys(prefix).worker('early'))) === 1 && r.registered, 4000);
    assert.equal(r.registered, true);
  });

  test('redis blip: directory serves the last snapshot, both sides recover on the same port', async () => {
    const blip = await startRedisServer();
    const port = blip.port;
    let restarted: RedisServerHandle | undefined;
    cleanups.push(async () => {
      await blip.stop();
      await restarted?.stop();
    });
    const prefix = nextPrefix();
    const regLog = memoryLogger();
    const p = new WorkerRegistration({
      redisUrl: blip.url, prefix, heartbeatMs: HB, ttlMs: TTL, logger: regLog, getLoad: () => load(),
      worker: { id: 'p0', role: 'prefill', grpc_address: '127.0.0.1:1', metrics_url: '', model: 'tiny' },
    });
    cleanups.push(() => p.stop());
    const d = registration(prefix, 'd0', 'decode', () => load(), blip.url);
    const changes: WorkerInfo[][] = [];
    const dirLog = memoryLogger();
    const dir = new WorkerDirectory({ redisUrl: blip.url, prefix, pollMs: POLL, logger: dirLog, onChange: (w) => changes.push(w) });
    cleanups.push(() => dir.stop());
    await Promise.all([p.start(), d.start()]);
    await dir.start();
    await waitFor('ready before blip', () => dir.ready());
    const before = dir.list();

    await blip.stop();
    await waitFor('directory notices the outage', () => dir.staleSince() !== undefined, 2000);
    // Outage longer than the TTL: the snapshot must not decay or throw.
    await sleep(TTL * 2);
    assert.doesNotThrow(() => dir.list());
    const during = dir.list();
    assert.deepEqual(during.map((w) => w.id), before.map((w) => w.id));
    assert.ok(during.every((w) => w.stale_since !== undefined && w.healthy));
    assert.equal(dir.ready(), true, 'last snapshot keeps serving');
    assert.equal(p.registered, false);
    assert.ok(changes.at(-1)?.every((w) => w.stale_since !== undefined), 'onChange told about staleness');
    assert.ok(regLog.lines.some((l) => l.level === 'warn'), 'registration logged the outage');

    restarted = await startRedisServer({ port });
    await waitFor('directory recovers', () => dir.staleSince() === undefined, 4000);
    await waitFor('both workers re-registered and healthy', () => dir.ready() && dir.list().every((w) => w.stale_since === undefined && w.healthy), 4000);
    assert.equal(p.registered, true);
    assert.ok(regLog.lines.some((l) => l.msg === 'worker re-registered after redis outage'));
    assert.ok(dirLog.lines.some((l) => l.msg === 'worker directory recovered'));
    const check = new Redis(restarted.url);
    assert.deepEqual((await check.smembers(clusterKeys(prefix).workers)).sort(), ['d0', 'p0']);
    check.disconnect();
  });

  test('a hung (SIGSTOPped) redis: loops do not stall, directory goes stale, everything recovers on SIGCONT', async () => {
    const hung = await startRedisServer();
    cleanups.push(async () => {
      try {
        process.kill(hung.pid, 'SIGCONT');
      } catch {
        /* gone */
      }
      await hung.stop();
    });
    const prefix = nextPrefix();
    const r = registration(prefix, 'h0', 'unified', () => load(), hung.url);
    const dir = directory(prefix, { url: hung.url });
    await r.start();
    await dir.start();
    await waitFor('listed', () => dir.ready());
    process.kill(hung.pid, 'SIGSTOP');
    try {
      await waitFor('stale while hung', () => dir.staleSince() !== undefined, 2000);
      const t0 = Date.now();
      assert.equal(await dir.refresh(), false);
      assert.equal(await r.heartbeat(), false);
      assert.ok(Date.now() - t0 < 10_000, 'bounded by commandTimeout, not hanging');
      assert.equal(dir.ready(), true);
    } finally {
      process.kill(hung.pid, 'SIGCONT');
    }
    await waitFor('recovered', () => dir.staleSince() === undefined && r.registered && dir.ready(), 5000);
  });

  test('getLoad that throws or hangs does not stop heartbeats', async () => {
    const prefix = nextPrefix();
    let mode: 'ok' | 'throw' | 'hang' = 'ok';
    const r = registration(prefix, 'flaky', 'decode', () => {
      if (mode === 'throw') throw new Error('boom');
      if (mode === 'hang') return new Promise<WorkerLoad>(() => {}) as unknown as WorkerLoad;
      return load({ running: 5 });
    });
    const dir = directory(prefix);
    await r.start();
    await dir.start();
    await waitFor('listed', () => dir.get('flaky')?.load.running === 5);
    mode = 'throw';
    await sleep(TTL + 100);
    assert.equal(dir.get('flaky')?.healthy, true);
    assert.equal(dir.get('flaky')?.load.running, 5, 'last good load is reported');
    mode = 'hang';
    await sleep(TTL + 2 * HB);
    assert.equal(dir.get('flaky')?.healthy, true);
  });
});
