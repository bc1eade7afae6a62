// `pdserve up`'s stop grace and readiness probe bound (issue 12, defect 11), with the timings
// injected so the tests run in well under a second: a worker that drains for its whole bound exits
// on its own rather than being SIGKILLed, and a router that accepts /ready but never answers does
// not hang `up`'s readiness wait.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import { availableParallelism, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { Supervisor } from '@pdserve/common';
import { allowedCpus, ortSpinning, pinWorkers, startingRoles, stopGraceMs, waitReady, workerCores } from '../src/commands/up.ts';

/** A child that, on SIGTERM, keeps "draining" for drainMs and then exits 0 by itself. */
function drainingChild(sup: Supervisor, name: string, drainMs: number, marker: string) {
  // The marker file says the SIGTERM handler is in place (a loaded machine can take longer than any
  // fixed wait to start node).
  const script = `process.on('SIGTERM', () => setTimeout(() => process.exit(0), ${drainMs})); require('fs').writeFileSync(${JSON.stringify(marker)}, 'up'); setInterval(() => {}, 1000);`;
  const child = sup.spawn({ name, command: process.execPath, args: ['-e', script] });
  return child;
}

async function stopAfterStart(drainMs: number, graceMs: number) {
  const sup = new Supervisor({ graceMs, output: 'passthrough' });
  const marker = join(mkdtempSync(join(tmpdir(), 'pdserve-up-timing-')), 'up');
  const child = drainingChild(sup, 'worker', drainMs, marker);
  const deadline = Date.now() + 30_000;
  while (!existsSync(marker)) {
    if (Date.now() > deadline) throw new Error('the child never installed its SIGTERM handler');
    await new Promise((r) => setTimeout(r, 20));
  }
  rmSync(dirname(marker), { recursive: true, force: true });
  await sup.stop();
  return child.exited;
}

test('the stop grace covers the drain bound: a worker draining for its whole bound exits on its own', async () => {
  const drainMs = 400;
  assert.equal(stopGraceMs(30_000), 40_000, 'default: drain bound plus 10 s');
  const exit = await stopAfterStart(drainMs, stopGraceMs(drainMs, 2_000));
  assert.equal(exit.signal, null, 'not SIGKILLed');
  assert.equal(exit.code, 0);
  // The control: a grace shorter than the drain (the old fixed 5 s against a 30 s drain) cuts it short.
  const cut = await stopAfterStart(drainMs, drainMs / 4);
  assert.equal(cut.signal, 'SIGKILL');
});

test('a readiness probe that never answers is abandoned after its bound; the next one succeeds', async () => {
  let probes = 0;
  const hung: ServerResponse[] = [];
  const server = createServer((req, res) => {
    probes++;
    if (probes === 1) { hung.push(res); return; } // accepts, never answers
    res.writeHead(200).end('{}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    // Without the probe bound the first fetch waits forever and this test times out.
    await waitReady(url, 30_000, () => undefined, 100);
    assert.ok(probes >= 2, `probes: ${probes}`);
  } finally {
    for (const r of hung) r.destroy();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test('waitReady gives up at its deadline, and stops at once when a child failed', async () => {
  const server = createServer((_req, res) => res.writeHead(503).end());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    await assert.rejects(waitReady(url, 300, () => undefined, 100), /not ready after 0.3 s/);
    await assert.rejects(waitReady(url, 30_000, () => 'router exited unexpectedly', 100), /router exited unexpectedly/);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

test("--ort-spinning auto: the workers' threads spin only while each has a core of its own", () => {
  assert.equal(ortSpinning('auto', 2, 1, 2), 'on', '1 prefill + 1 decode, 1 thread each, 2 cores');
  assert.equal(ortSpinning('auto', 2, 2, 2), 'off', 'two 2-thread workers share 2 cores');
  assert.equal(ortSpinning('auto', 1, 2, 2), 'on', '--unified 1 --threads 2');
  assert.equal(ortSpinning('auto', 2, 0, 8), 'off', 'threads 0 is one per core: a second worker shares');
  assert.equal(ortSpinning('auto', 4, 2, 8), 'on');
  assert.equal(ortSpinning('on', 2, 2, 2), 'on', 'an explicit choice stands');
  assert.equal(ortSpinning('off', 1, 1, 2), 'off');
});

test('the roles up starts: two unified workers without role flags, else what the flags say', () => {
  assert.deepEqual(startingRoles({}), [['unified', 2]]);
  assert.deepEqual(startingRoles({ unified: 3 }), [['unified', 3]]);
  assert.deepEqual(startingRoles({ prefill: 1, decode: 1 }), [['prefill', 1], ['decode', 1]]);
  assert.deepEqual(startingRoles({ decode: 3 }), [['prefill', 1], ['decode', 3]], '--decode alone: one prefill worker');
  assert.deepEqual(startingRoles({ prefill: 2 }), [['prefill', 2], ['decode', 1]]);
});

test('pinning: unified workers get cores of their own by default, a split cluster shares them', () => {
  assert.equal(pinWorkers(undefined, [['unified', 2]], 2), true, 'the default start on 2 cores');
  assert.equal(pinWorkers(undefined, [['unified', 3]], 2), false, 'more workers than cores: shared');
  assert.equal(pinWorkers(undefined, [['prefill', 1], ['decode', 1]], 2), false, 'a split shares the cores');
  assert.equal(pinWorkers(true, [['prefill', 1], ['decode', 1]], 2), true, '--pin');
  assert.equal(pinWorkers(false, [['unified', 2]], 2), false, '--no-pin');
  const range = (lo: number, hi: number) => Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
  assert.deepEqual([0, 1].map((i) => workerCores(i, 2, range(0, 1))), ['0', '1']);
  assert.deepEqual([0, 1].map((i) => workerCores(i, 2, range(0, 7))), ['0,1,2,3', '4,5,6,7']);
  assert.deepEqual([0, 1, 2].map((i) => workerCores(i, 3, range(0, 7))), ['0,1', '2,3', '4,5']);
  assert.deepEqual([0, 1, 2].map((i) => workerCores(i, 3, range(0, 1))), ['0', '1', '0'], 'more workers than cores: round robin');
  assert.deepEqual([0, 1].map((i) => workerCores(i, 2, [4, 5])), ['4', '5'], 'the CPUs this process may use, not 0..n-1');
});

test("the CPUs up may pin to: the process's allowed list", () => {
  assert.deepEqual(allowedCpus('Name:\tnode\nCpus_allowed_list:\t0-1\n'), [0, 1]);
  assert.deepEqual(allowedCpus('Cpus_allowed_list:\t4-5,8,10-11\n'), [4, 5, 8, 10, 11]);
  const all = Array.from({ length: availableParallelism() }, (_, i) => i);
  assert.deepEqual(allowedCpus('no such line'), all, 'elsewhere: 0..cores-1');
  assert.deepEqual(allowedCpus('Cpus_allowed_list:\t3-1\n'), all, 'malformed: 0..cores-1');
  assert.deepEqual(allowedCpus(), allowedCpus(readFileSync('/proc/self/status', 'utf8')));
});
