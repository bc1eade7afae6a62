// `pdserve up` as a user runs it (issue 12, defect 11): the redis-server it started dying is noticed
// (the cluster stops with a message naming it and exits 1, instead of staying "ready" on a frozen
// registry), the workers get the drain bound the stop grace is sized from, and without role flags
// the cluster starts as two unified workers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeDummyModel } from '../packages/engine/src/index.ts';
import { startCluster, waitFor } from './support/cluster.ts';

/** Direct children of `pid` as [pid, command name]. */
function children(pid: number): Array<[number, string]> {
  const out = execFileSync('ps', ['-o', 'pid=,comm=', '--ppid', String(pid)], { encoding: 'utf8' });
  return out.trim().split('\n').filter(Boolean).map((l) => {
    const [p, ...name] = l.trim().split(/\s+/);
    return [Number(p), name.join(' ')];
  });
}

test('pdserve up stops and exits 1 when its redis-server dies', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-up-'));
  const model = join(dir, 'dummy');
  writeDummyModel('tiny', model);
  // No role flags: the default start, two unified workers (the planner splits them when its
  // measurements say so; a few requests here are too few for it to move).
  const cluster = await startCluster(model, []);
  try {
    const listed = ((await (await fetch(`${cluster.url}/workers`)).json()) as { workers: Array<{ role: string }> }).workers;
    assert.deepEqual(listed.map((w) => w.role), ['unified', 'unified'], 'the default start');
    const upPid = cluster.proc.pid!;
    const kids = children(upPid);
    const redis = kids.find(([, name]) => name.startsWith('redis-server'));
    assert.ok(redis, `no redis-server among ${JSON.stringify(kids)}`);
    // Every worker is told the drain bound the stop grace is sized from.
    const workers = kids.filter(([, name]) => name.startsWith('node'));
    assert.ok(workers.length >= 2);
    const worker = workers.map(([p]) => readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0')).find((argv) => argv.includes('worker'));
    assert.ok(worker, 'a worker process');
    assert.equal(worker[worker.indexOf('--drain-timeout-s') + 1], '30');

    const exited = new Promise<number | null>((r) => cluster.proc.once('exit', (code) => r(code)));
    process.kill(redis[0], 'SIGKILL');
    const code = await exited;
    assert.equal(code, 1, cluster.output().slice(-3000));
    assert.match(cluster.output(), /redis-server \(the cluster's registry\) exited unexpectedly/);
    // Nothing of the cluster is left behind.
    await waitFor(async () => (workers.every(([p]) => { try { process.kill(p, 0); return false; } catch { return true; } }) ? true : undefined), 20_000, 'cluster processes gone');
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a Ctrl-C in the terminal (SIGINT to up\'s whole process group) stops the cluster in order: each worker deregisters, up exits 0, nothing is left', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-up-'));
  const model = join(dir, 'dummy');
  writeDummyModel('tiny', model);
  const cluster = await startCluster(model, [], 60_000, { ownProcessGroup: true });
  try {
    const kids = children(cluster.proc.pid!);
    const redis = kids.find(([, name]) => name.startsWith('redis-server'));
    assert.ok(redis, `no redis-server among ${JSON.stringify(kids)}`);
    // Every child of up, redis-server and its watchdog included, leads a process group of its own,
    // so the terminal's SIGINT reaches up alone and up stops them in order.
    const pgid = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[2]);
    for (const [pid, name] of kids) assert.equal(pgid(pid), pid, `${name} (${pid}) is in process group ${pgid(pid)}`);
    const exited = new Promise<number | null>((r) => cluster.proc.once('exit', (code) => r(code)));
    // A terminal delivers Ctrl-C to every process of the foreground group, not only to `up`.
    process.kill(-cluster.proc.pid!, 'SIGINT');
    assert.equal(await exited, 0, cluster.output().slice(-3000));
    // The registry outlives the workers: each one removed its own entry on the way out (a
    // redis-server that took the Ctrl-C itself was gone before they could).
    assert.match(cluster.output(), /"msg":"worker stopped"/);
    assert.doesNotMatch(cluster.output(), /deregistration failed/, cluster.output().slice(-3000));
    await waitFor(async () => { try { process.kill(redis[0], 0); return undefined; } catch { return true; } }, 20_000, 'redis-server gone');
  } finally {
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
