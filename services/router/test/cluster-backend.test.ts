// ClusterBackend against a real Redis registry and real gRPC servers whose handlers are scripted
// fakes of a worker (one module under test: what the router does with calls, deadlines, failures
// and registry changes). Issue 12, router side of defects 5, 6, 7, 8, 12, 16, 17.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import {
  bindServer, createGrpcServer, decodeService, emptyLoad, grpc, prefillService, startRedisServer, WorkerRegistration,
  type GenerateEventMsg, type RedisServerHandle, type WorkerLoad, type WorkerRole,
} from '@pdserve/common';
import { BackendError, type GenerateRequest, type GenerationEvent } from '../src/backend.ts';
import { ClusterBackend, type ClusterBackendOptions } from '../src/cluster-backend.ts';
import { until } from './fakes.ts';

const MODEL_NAME = 'test-model';
const silent = pino({ level: 'silent' });

type GenerateCall = grpc.ServerWritableStream<{ request_id: string }, GenerateEventMsg>;
type PrefillCall = grpc.ServerUnaryCall<{ request_id: string }, unknown>;

interface Script {
  /** Decode side: default reserves, then streams `tokens` once the prefill answered, then finishes. */
  generate?: (call: GenerateCall, w: FakeWorker) => void;
  /** Prefill side: default answers at once. */
  prefill?: (call: PrefillCall, cb: grpc.sendUnaryData<unknown>, w: FakeWorker) => void;
}

class FakeWorker {
  generateCalls: GenerateCall[] = [];
  prefillCalls: PrefillCall[] = [];
  cancelledGenerate = 0;
  cancelledPrefill = 0;
  server!: grpc.Server;
  port = 0;
  registration!: WorkerRegistration;
  load: WorkerLoad = { ...emptyLoad(), free_kv_blocks: 10, total_kv_blocks: 10 };

  constructor(readonly id: string, readonly role: WorkerRole, readonly script: Script, readonly model = MODEL_NAME) {}

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  async listen(port = 0): Promise<void> {
    this.server = createGrpcServer();
    const self = this;
    const health = (_c: unknown, cb: grpc.sendUnaryData<unknown>) => cb(null, { worker_id: self.id, role: self.role, ready: true });
    this.server.addService(decodeService(), {
      Generate(call: GenerateCall) {
        self.generateCalls.push(call);
        call.on('cancelled', () => { self.cancelledGenerate++; });
        (self.script.generate ?? defaultGenerate)(call, self);
      },
      PushKv() {},
      Cancel(_c: unknown, cb: grpc.sendUnaryData<unknown>) { cb(null, { found: false }); },
      Health: health,
    });
    this.server.addService(prefillService(), {
      Prefill(call: PrefillCall, cb: grpc.sendUnaryData<unknown>) {
        self.prefillCalls.push(call);
        call.on('cancelled', () => { self.cancelledPrefill++; });
        (self.script.prefill ?? ((_c, done) => done(null, { queue_ms: 1, prefill_ms: 1, transfer_tail_ms: 0 })))(call, cb, self);
      },
      Cancel(_c: unknown, cb: grpc.sendUnaryData<unknown>) { cb(null, { found: false }); },
      Health: health,
    });
    this.port = await bindServer(this.server, `127.0.0.1:${port}`);
  }

  async register(redisUrl: string, prefix: string): Promise<void> {
    this.registration = new WorkerRegistration({
      redisUrl, prefix, heartbeatMs: 100, ttlMs: 1000,
      worker: { id: this.id, role: this.role, grpc_address: this.address, metrics_url: '', model: this.model },
      getLoad: () => this.load,
    });
    await this.registration.start();
  }

  async stop(): Promise<void> {
    await this.registration?.stop();
    this.server?.forceShutdown();
  }
}

function defaultGenerate(call: GenerateCall, w: FakeWorker, tokens = 3): void {
  call.write({ event: 'reserved', reserved: true });
  // Tokens once "the KV arrived": here, once the prefill call for this id reached the worker pair.
  const go = () => {
    for (let i = 0; i < tokens; i++) call.write({ event: 'tokens', tokens: { tokens: [{ id: 5 + i, logprob: 0, top_logprobs: [] }], admit_ms: 1 } });
    call.write({ event: 'finished', finished: { reason: 'length', stop_token_id: 0, has_stop_token: false } });
    call.end();
  };
  setTimeout(go, 10);
  void w;
}

let redis: RedisServerHandle;
let n = 0;
const workers: FakeWorker[] = [];
const backends: ClusterBackend[] = [];

before(async () => { redis = await startRedisServer(); });
after(async () => {
  await Promise.all(backends.map((b) => b.stop()));
  await Promise.all(workers.map((w) => w.stop()));
  await redis?.stop();
});

async function cluster(specs: Array<{ id: string; role?: WorkerRole; script?: Script; model?: string }>, opts: Partial<ClusterBackendOptions> = {}) {
  const prefix = `cb${++n}`;
  const ws: FakeWorker[] = [];
  for (const s of specs) {
    const w = new FakeWorker(`${s.id}`, s.role ?? 'unified', s.script ?? {}, s.model);
    await w.listen();
    await w.register(redis.url, prefix);
    ws.push(w);
    workers.push(w);
  }
  const backend = new ClusterBackend({ redisUrl: redis.url, prefix, logger: silent, model: MODEL_NAME, pollMs: 50, ...opts });
  backends.push(backend);
  await backend.start();
  await until(() => backend.workers().length === specs.length, 5000);
  return { backend, workers: ws, prefix };
}

function request(id = 'r1', signal = new AbortController().signal): GenerateRequest {
  return {
    requestId: id, promptIds: [1, 2, 3], signal,
    sampling: { temperature: 0, topP: 1, topK: 0, maxTokens: 3, minTokens: 0, stopTokenIds: [], ignoreEos: false },
  };
}

async function collect(it: AsyncIterable<GenerationEvent>): Promise<GenerationEvent[]> {
  const out: GenerationEvent[] = [];
  for await (const e of it) out.push(e);
  return out;
}

async function rejection(p: Promise<unknown>): Promise<BackendError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof BackendError, `expected a BackendError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the generation to fail');
}

/** Each test's own bound, so one hang (the defects) fails that test only. */
const T = { timeout: 8000 };

describe('ClusterBackend', () => {
  test('defect 5: a consumer that stops early cancels the prefill call too', T, async () => {
    const { backend, workers: [w] } = await cluster([{
      id: 'u-early',
      script: {
        generate: (call) => {
          call.write({ event: 'reserved', reserved: true });
          call.write({ event: 'tokens', tokens: { tokens: [{ id: 7, logprob: 0, top_logprobs: [] }], admit_ms: 1 } });
        },
        prefill: () => { /* still computing: never answers */ },
      },
    }]);
    const it = backend.generate({ ...request(), slo: { tpotMs: 100 } })[Symbol.asyncIterator]();
    const first = await it.next();
    assert.equal((first.value as GenerationEvent).type, 'token');
    assert.equal(backend.budgets.count('u-early'), 1, 'a request with a TPOT SLO is followed while it decodes');
    await until(() => w!.prefillCalls.length === 1, 5000);
    await it.return!(undefined);
    await until(() => w!.cancelledGenerate === 1, 5000);
    await until(() => w!.cancelledPrefill === 1, 5000);
    await until(() => backend.bookkeeping().inflight === 0, 5000);
    assert.equal(backend.bookkeeping().budgets, 0, 'and forgotten once it is cancelled');
  });

  test('a request stops counting as in flight at its finish event, even if the consumer never resumes the generator', T, async () => {
    // The router's own consumer stops at the finish event; the in-flight count steers placement,
    // so a leak there made an idle worker that had served requests look busy (and lose its prefix hits).
    const { backend } = await cluster([{ id: 'u-finish' }]);
    const it = backend.generate({ ...request(), slo: { tpotMs: 100 } })[Symbol.asyncIterator]();
    for (;;) {
      const r = await it.next();
      assert.equal(r.done, false);
      if ((r.value as GenerationEvent).type === 'finish') break;
    }
    assert.equal(backend.bookkeeping().inflight, 0);
    assert.equal(backend.bookkeeping().budgets, 0);
    await it.return!(undefined);
  });

  test('defect 5: a request whose client already left does no worker work', T, async () => {
    const { backend, workers: [w] } = await cluster([{ id: 'u-gone' }]);
    const ac = new AbortController();
    ac.abort('client_disconnected');
    const events = await collect(backend.generate(request('r-gone', ac.signal)));
    assert.deepEqual(events.filter((e) => e.type === 'token'), []);
    assert.equal(w!.generateCalls.length, 0);
  });

  test('defect 6: a decode stream that goes silent ends with 504 and is cancelled', T, async () => {
    const { backend, workers: [w] } = await cluster([{
      id: 'u-silent',
      script: { generate: (call) => call.write({ event: 'reserved', reserved: true }) },
    }], { tokenIdleTimeoutMs: 300 });
    const err = await rejection(collect(backend.generate(request())));
    assert.equal(err.status, 504);
    assert.equal(err.code, 'worker_timeout');
    await until(() => w!.cancelledGenerate === 1, 5000);
  });

  test('defect 6: a prefill that never answers hits its deadline (504), and both calls are cancelled', T, async () => {
    const { backend, workers: [w] } = await cluster([{
      id: 'u-hung-prefill',
      script: { generate: (call) => call.write({ event: 'reserved', reserved: true }), prefill: () => {} },
    }], { prefillTimeoutMs: 300, tokenIdleTimeoutMs: 60_000 });
    const err = await rejection(collect(backend.generate(request())));
    assert.equal(err.status, 504);
    assert.equal(err.code, 'worker_timeout');
    const deadline = w!.prefillCalls[0]!.getDeadline();
    assert.ok(deadline instanceof Date || (typeof deadline === 'number' && Number.isFinite(deadline)), 'Prefill carries a deadline');
    assert.ok(Number.isFinite(Number(w!.generateCalls[0]!.getDeadline())), 'Generate carries a deadline');
    await until(() => w!.cancelledGenerate === 1, 5000);
  });

  test('defect 7: during a Redis outage a dead worker is set aside, the request retried elsewhere, and it comes back', T, async () => {
    const outage = await startRedisServer();
    const prefix = `cb${++n}`;
    const a = new FakeWorker('a-dies', 'unified', {});
    const b = new FakeWorker('b-lives', 'unified', {});
    b.load = { ...b.load, queue_len: 5 }; // a looks better, so it is picked first
    for (const w of [a, b]) { await w.listen(); await w.register(outage.url, prefix); workers.push(w); }
    const backend = new ClusterBackend({ redisUrl: outage.url, prefix, logger: silent, model: MODEL_NAME, pollMs: 50 });
    backends.push(backend);
    await backend.start();
    await until(() => backend.workers().filter((w) => w.healthy).length === 2, 5000);
    await outage.stop();
    await until(() => backend.directory.staleSince() !== undefined, 5000);
    const port = a.port;
    a.server.forceShutdown(); // a dies while the registry cannot say so
    assert.equal(backend.workers().find((w) => w.id === a.id)?.healthy, true, 'the stale snapshot still calls it healthy');

    for (let i = 0; i < 3; i++) {
      const events = await collect(backend.generate(request(`r${i}`)));
      assert.equal(events.at(-1)?.type, 'finish', `request ${i} succeeded`);
    }
    assert.equal(b.generateCalls.length, 3, 'every request ended on b');
    assert.equal(backend.workers().find((w) => w.id === a.id)?.healthy, false, 'a is marked unhealthy locally');

    // a returns on the same address: the Health probe (backoff 1 s) lets it be chosen again.
    a.generateCalls = [];
    await a.listen(port);
    const end = Date.now() + 10_000;
    while (a.generateCalls.length === 0) {
      assert.ok(Date.now() < end, 'a was never used again');
      await collect(backend.generate(request('probe')));
      await new Promise((r) => setTimeout(r, 100));
    }
    a.registration.stop().catch(() => {});
    b.registration.stop().catch(() => {});
  });

  test('defect 8: two routers sending the same x-request-id give workers distinct ids', T, async () => {
    const { backend, workers: [w], prefix } = await cluster([{ id: 'u-ids' }]);
    const other = new ClusterBackend({ redisUrl: redis.url, prefix, logger: silent, model: MODEL_NAME, pollMs: 50 });
    backends.push(other);
    await other.start();
    await collect(backend.generate(request('same')));
    await collect(other.generate(request('same')));
    const ids = w!.generateCalls.map((c) => c.request.request_id);
    assert.equal(ids.length, 2);
    assert.notEqual(ids[0], ids[1]);
    assert.ok(ids.every((id) => id.startsWith('same#')), ids.join(', '));
  });

  test('defect 12: clients, in-flight counts and suspicions shrink when workers leave', T, async () => {
    const { backend, workers: [w1, w2] } = await cluster([{ id: 'u-leave-1' }, { id: 'u-leave-2' }]);
    await collect(backend.generate(request('x1')));
    w1!.load = { ...w1!.load, queue_len: 9 };
    await until(() => backend.workers().find((w) => w.id === w1!.id)?.load.queue_len === 9, 5000);
    await collect(backend.generate(request('x2')));
    assert.equal(backend.bookkeeping().clients, 2);
    await w1!.stop();
    await w2!.stop();
    // Gone (deregistered) or lost (expired): either way nothing of theirs is kept.
    await until(() => backend.workers().every((w) => !w.healthy), 5000);
    await until(() => backend.bookkeeping().clients === 0, 5000);
    assert.deepEqual(backend.bookkeeping(), { clients: 0, inflight: 0, suspects: 0, budgets: 0 });
  });

  test('a request admission refuses on the best-scored worker goes to the next that meets its SLO; refused everywhere, the first refusal', T, async () => {
    const { backend, workers: [a, b] } = await cluster([{ id: 'u-swamped' }, { id: 'u-roomy' }]);
    // a scores better (fewer requests) but has 4000 prompt tokens queued at 100 tokens/s.
    a!.load = { ...a!.load, queued_prefill_tokens: 4000, prefill_tokens_per_s: 100 };
    b!.load = { ...b!.load, running: 2, queued_prefill_tokens: 0, prefill_tokens_per_s: 1000, decode_step_ms_by_batch: { 1: 20, 3: 30 } };
    await until(() => backend.workers().every((w) => w.load.prefill_tokens_per_s !== undefined), 5000);
    const slo = { ttftMs: 1000 };
    await collect(backend.generate({ ...request('fits-b'), slo }));
    assert.deepEqual([a!.generateCalls.length, b!.generateCalls.length], [0, 1]);
    b!.load = { ...b!.load, queued_prefill_tokens: 3000 };
    await until(() => backend.workers().find((w) => w.id === b!.id)?.load.queued_prefill_tokens === 3000, 5000);
    const err = await rejection(collect(backend.generate({ ...request('fits-none'), slo })));
    assert.equal(err.status, 503);
    assert.equal(err.code, 'slo_ttft');
    assert.match(err.message, /4000 prompt tokens ahead on the local prefill, prefilling at 100 tokens\/s/, "the best-scored worker's refusal");
  });

  test('a worker takes a batch up to twice the largest it has measured a step at (2 past it after a refusal), where its step is a quarter of the SLO or more', T, async () => {
    const { backend, workers: [w] } = await cluster([{ id: 'u-fresh' }]);
    // Its warmup measured batch 1; 3 requests run there.
    w!.load = { ...w!.load, running: 3, queued_prefill_tokens: 0, prefill_tokens_per_s: 1000, decode_step_ms_by_batch: { 1: 20 } };
    await until(() => backend.workers().every((x) => x.load.running === 3), 5000);
    // Its step at batch 4 is estimated at ~23 ms: over a quarter of an 80 ms SLO, so the limit acts.
    const slo = { ttftMs: 5000, tpotMs: 80 };
    const err = await rejection(collect(backend.generate({ ...request('past-measured'), slo })));
    assert.equal(err.status, 503);
    assert.equal(err.code, 'slo_tpot');
    assert.match(err.message, /a batch of 4 .* past 3, the most admission lets it reach from the largest it has measured a step at \(1\)/);
    w!.load = { ...w!.load, decode_step_ms_by_batch: { 1: 20, 3: 26 } };
    await until(() => backend.workers().every((x) => (x.load.decode_step_ms_by_batch as Record<string, number> | undefined)?.['3'] === 26), 5000);
    await collect(backend.generate({ ...request('within-reach'), slo }));
    assert.equal(w!.generateCalls.length, 1);
    // Twice the 3 measured would allow a batch of 6, but this router has just refused a request: 2
    // past it at most. (The report says 6 running; the router discounts 'within-reach', which it saw
    // finish after that report, so this request would make the batch 6.)
    w!.load = { ...w!.load, running: 6 };
    await until(() => backend.workers().every((x) => x.load.running === 6), 5000);
    const cautious = await rejection(collect(backend.generate({ ...request('after-refusal'), slo })));
    assert.equal(cautious.code, 'slo_tpot');
    assert.match(cautious.message, /a batch of 6 .* past 5, .*\(3, after a refusal\)/);
    // Against a 500 ms SLO the same extrapolation could be 4x off and still fit: no limit.
    w!.load = { ...w!.load, running: 5 };
    await until(() => backend.workers().every((x) => x.load.running === 5), 5000);
    await collect(backend.generate({ ...request('fast-enough'), slo: { ttftMs: 5000, tpotMs: 500 } }));
    assert.equal(w!.generateCalls.length, 2);
  });

  test('defect 16: a worker serving another model gets no requests', T, async () => {
    const { backend, workers: [w] } = await cluster([{ id: 'u-other-model', model: 'another-model' }]);
    assert.equal(backend.ready(), false);
    assert.equal(backend.workers()[0]!.healthy, false);
    const err = await rejection(collect(backend.generate(request())));
    assert.equal(err.status, 503);
    assert.equal(w!.generateCalls.length, 0);
  });

  test('defect 17: worker failures reach the client without worker ids or addresses', T, async () => {
    const { backend, workers: [w] } = await cluster([{
      id: 'u-secret-id',
      script: {
        generate: (call) => call.emit('error', { code: grpc.status.INTERNAL, details: `worker u-secret-id at 10.1.2.3:50051 broke` }),
      },
    }]);
    const err = await rejection(collect(backend.generate(request())));
    assert.equal(err.status, 502);
    assert.doesNotMatch(err.message, /u-secret-id|10\.1\.2\.3|127\.0\.0\.1|:\d{4,5}/);
    assert.match(err.detail ?? '', /u-secret-id/, 'the log detail keeps them');
    const bad = await cluster([{
      id: 'u-secret-2',
      script: { generate: (call) => call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: 'worker u-secret-2 (10.9.9.9:1): top_k out of range' }) },
    }]);
    const e2 = await rejection(collect(bad.backend.generate(request())));
    assert.equal(e2.status, 400);
    assert.match(e2.message, /top_k out of range/);
    assert.doesNotMatch(e2.message, /u-secret-2|10\.9\.9\.9/);
    void w;
  });
  test('issue 10: a decode stream that breaks mid-generation is migrated: prompt + sent tokens, shrunk budgets, sample offset', T, async () => {
    const seen: Array<{ prompt_len: number; sampling: Record<string, number> }> = [];
    const reasons: string[] = [];
    const breaking = (call: GenerateCall) => {
      seen.push(call.request as never);
      call.write({ event: 'reserved', reserved: true });
      setTimeout(() => {
        for (const id of [7, 8]) call.write({ event: 'tokens', tokens: { tokens: [{ id, logprob: 0, top_logprobs: [] }], admit_ms: 1 } });
        setTimeout(() => call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'peer gone' }), 20);
      }, 10);
    };
    const { backend, workers: [a, b] } = await cluster([
      { id: 'u-mig-a', script: { generate: breaking } },
      { id: 'u-mig-b', script: { generate: breaking } },
    ], { onMigration: (r) => reasons.push(r) });
    const req = request('r-mig');
    req.sampling = { ...req.sampling, maxTokens: 5, minTokens: 3, seed: 42 };
    const events = await collect(backend.generate(req)).catch((e) => e);
    // Both workers break after 2 tokens: 7 8 from the first, 7 8 from the second, then the third
    // attempt finds nobody left and reports the worker failure (never a hang, never "no capacity").
    assert.ok(events instanceof BackendError, String(events));
    assert.equal(events.code, 'worker_unavailable');
    assert.equal(seen.length, 2);
    assert.equal(seen[0]!.prompt_len, 3);
    assert.equal(seen[0]!.sampling.sample_offset, 0);
    assert.equal(seen[1]!.prompt_len, 5, 'the prompt grew by the 2 tokens already sent');
    assert.equal(seen[1]!.sampling.max_tokens, 3);
    assert.equal(seen[1]!.sampling.min_tokens, 1);
    assert.equal(seen[1]!.sampling.sample_offset, 2);
    assert.equal(seen[1]!.sampling.seed, 42, 'the same seed');
    assert.deepEqual(reasons, ['decode_unavailable']);
    const prefills = [...a!.prefillCalls, ...b!.prefillCalls].map((c) => (c.request as unknown as { prompt_ids: number[] }).prompt_ids);
    assert.deepEqual(prefills, [[1, 2, 3], [1, 2, 3, 7, 8]]);
  });

  test('issue 10: a migrated request finishes on the next worker with every token once', T, async () => {
    let calls = 0;
    const { backend } = await cluster([
      { id: 'u-mig2-a', script: { generate: (call, w) => (calls++ === 0 ? (call.write({ event: 'reserved', reserved: true }), setTimeout(() => { call.write({ event: 'tokens', tokens: { tokens: [{ id: 9, logprob: 0, top_logprobs: [] }], admit_ms: 1 } }); setTimeout(() => call.emit('error', { code: grpc.status.INTERNAL, details: 'RST_STREAM' }), 20); }, 10)) : defaultGenerate(call, w)) } },
      { id: 'u-mig2-b', script: { generate: (call, w) => (calls++ === 0 ? (call.write({ event: 'reserved', reserved: true }), setTimeout(() => { call.write({ event: 'tokens', tokens: { tokens: [{ id: 9, logprob: 0, top_logprobs: [] }], admit_ms: 1 } }); setTimeout(() => call.emit('error', { code: grpc.status.INTERNAL, details: 'RST_STREAM' }), 20); }, 10)) : defaultGenerate(call, w)) } },
    ], { maxMigrations: 1 });
    const events = await collect(backend.generate(request('r-mig2')));
    assert.deepEqual(events.filter((e) => e.type === 'token').map((e) => (e as { id: number }).id), [9, 5, 6, 7]);
    assert.equal(events.at(-1)!.type, 'finish');
  });

  test('a KV block refused for its checksum (DATA_LOSS) blames the prefill worker, whichever call reports it first: the request finishes on the decode worker', T, async () => {
    for (const first of ['decode', 'prefill'] as const) {
      const reasons: string[] = [];
      let attempts = 0;
      const lost = { code: grpc.status.DATA_LOSS, details: 'KV block 1 failed its checksum' };
      const { backend, workers: [p, d] } = await cluster([
        { id: `p-crc-${first}`, role: 'prefill', script: { prefill: (_c, cb) => setTimeout(() => cb(lost as never), first === 'prefill' ? 5 : 60) } },
        {
          id: `d-crc-${first}`, role: 'decode',
          script: {
            generate: (call, w) => {
              if (attempts++ > 0) return defaultGenerate(call, w);
              call.write({ event: 'reserved', reserved: true });
              setTimeout(() => call.emit('error', lost), first === 'decode' ? 20 : 120);
            },
          },
        },
      ], { onMigration: (r) => reasons.push(r), placement: { mode: 'remote' } });
      const events = await collect(backend.generate(request(`r-crc-${first}`)));
      assert.deepEqual(events.filter((e) => e.type === 'token').map((e) => (e as { id: number }).id), [5, 6, 7], first);
      assert.deepEqual(reasons, ['prefill_failed'], first);
      // The second attempt prefilled on the decode worker itself: the sender was not tried again.
      assert.equal(p!.prefillCalls.length, 1, first);
      assert.equal(d!.prefillCalls.length, 1, first);
    }
  });

  test('issue 10: --max-migrations 0 ends a broken request with the worker error', T, async () => {
    const { backend } = await cluster([
      { id: 'u-nomig-a', script: { generate: (call) => call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'gone' }) } },
      { id: 'u-nomig-b', script: { generate: (call) => call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'gone' }) } },
    ], { maxMigrations: 0 });
    const err = await rejection(collect(backend.generate(request('r-nomig'))));
    assert.equal(err.code, 'worker_unavailable');
    assert.match(err.message, /0 migrations allowed/);
  });
});
