// KV leases on a decode worker (issue 10 item 3): the room reserved for a request is freed when its
// deadline (the request's kv_timeout_ms, an inactivity bound) passes with no KV coming, whether
// nothing ever arrived (the prefill worker died or never started) or a push stopped half-way; each
// expiry is counted in pdserve_kv_leases_expired_total{reason} and logged, and the worker keeps
// serving. Real worker process on stories260K, raw gRPC.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { grpc, requestMetadata, type RedisServerHandle } from '../../../packages/common/src/index.ts';
import { stories260K } from '../../../test/support/cluster.ts';
import {
  allBlocksFree, assertAlive, blockBytesOf, generate, needStories260K, pollUntil, startRedis, startWorkerProc, zeroChunk, type WorkerProc,
} from './support/workers.ts';

let model: { dir: string; cleanup(): void } | undefined;
let redis: RedisServerHandle | undefined;
let D: WorkerProc | undefined;

before(async () => {
  model = stories260K();
  redis = await startRedis();
  D = await startWorkerProc(model.dir, redis.url, 'decode', ['--max-sequences', '4']);
});
after(async () => {
  await D?.stop();
  await redis?.stop();
  model?.cleanup();
});

async function expired(w: WorkerProc, reason: string): Promise<number> {
  const text = await (await fetch(w.metricsUrl)).text();
  const line = text.split('\n').find((l) => l.startsWith('pdserve_kv_leases_expired_total{') && l.includes(`reason="${reason}"`));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

test('a reservation whose KV never arrives is freed at its deadline, counted kv_never_arrived and logged', async (t) => {
  if (!needStories260K(t)) return;
  const w = D!;
  const before = await expired(w, 'kv_never_arrived');
  const g = generate(w, { request_id: 'lease-never', prompt_len: 40, kv_timeout_ms: 300 });
  await g.reserved;
  const end = await g.ended;
  assert.notEqual(end.code, grpc.status.OK);
  await pollUntil(async () => ((await expired(w, 'kv_never_arrived')) === before + 1 ? true : undefined), 10_000, 'kv_never_arrived +1');
  assert.match(w.output(), /"reason":"kv_never_arrived"[^\n]*KV lease expired/);
  await allBlocksFree(w);
  await assertAlive(w);
});

test('a push that stops half-way is freed at its deadline, counted kv_push_stalled', async (t) => {
  if (!needStories260K(t)) return;
  const w = D!;
  const rid = 'lease-stalled';
  const before = await expired(w, 'kv_push_stalled');
  const g = generate(w, { request_id: rid, prompt_len: 40, kv_timeout_ms: 500 });
  await g.reserved;
  // One block of three, then silence with the stream left open (a prefill worker frozen mid-push).
  const push = (w.decode as any).PushKv(requestMetadata(rid), () => {}) as grpc.ClientWritableStream<unknown>;
  push.on('error', () => {});
  push.write(zeroChunk(rid, blockBytesOf(model!.dir), 40, 0, 1, false));
  const end = await g.ended;
  push.cancel();
  assert.notEqual(end.code, grpc.status.OK);
  await pollUntil(async () => ((await expired(w, 'kv_push_stalled')) === before + 1 ? true : undefined), 10_000, 'kv_push_stalled +1');
  await allBlocksFree(w);
  await assertAlive(w);
});
