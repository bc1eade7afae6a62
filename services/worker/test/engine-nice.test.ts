// The engine thread runs below the worker's I/O threads (--engine-nice, default 10): on a machine
// with more runnable threads than cores, gRPC, heartbeats and the router are not queued behind
// forward passes. Linux keeps a nice value per thread, so the test reads each thread's from /proc.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import type { RedisServerHandle } from '../../../packages/common/src/index.ts';
import { stories260K } from '../../../test/support/cluster.ts';
import { needStories260K, startRedis, startWorkerProc, type WorkerProc } from './support/workers.ts';

let model: { dir: string; cleanup(): void } | undefined;
let redis: RedisServerHandle | undefined;
const started: WorkerProc[] = [];

before(async () => {
  redis = await startRedis();
});

after(async () => {
  await Promise.all(started.map((w) => w.stop()));
  await redis?.stop();
  model?.cleanup();
});

/** tid -> [thread name, nice] of every thread of `pid`. */
function threadNices(pid: number): Map<number, [string, number]> {
  const out = new Map<number, [string, number]>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out.set(Number(tid), [name, Number(fields[16])]); // field 19 of stat: nice
  }
  return out;
}

test('the engine thread and ONNX Runtime\'s pool threads run at nice 10 by default, the main thread at 0; --engine-nice 0 turns it off', async (t) => {
  if (!needStories260K(t)) return;
  model = stories260K();
  const [byDefault, off] = await Promise.all([
    startWorkerProc(model.dir, redis!.url, 'unified', ['--threads', '2']),
    startWorkerProc(model.dir, redis!.url, 'unified', ['--threads', '2', '--engine-nice', '0']),
  ]);
  started.push(byDefault, off);
  const nices = threadNices(byDefault.proc.pid!);
  assert.equal(nices.get(byDefault.proc.pid!)?.[1], 0, 'the main thread keeps the process\'s priority');
  const lowered = [...nices.values()].filter(([, n]) => n === 10);
  // The engine thread itself plus at least one intra-op pool thread of a 2-thread session.
  assert.ok(lowered.length >= 2, `threads at nice 10: ${JSON.stringify([...nices.values()])}`);
  assert.ok([...nices.values()].some(([, n]) => n === 0 && nices.size > lowered.length), 'I/O threads stay at 0');
  assert.deepEqual([...threadNices(off.proc.pid!).values()].filter(([, n]) => n !== 0), [], 'with --engine-nice 0 every thread stays at 0');
});
