// Supervisor + exitWhenParentDies with real child processes.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import { after, describe, test } from 'node:test';
import { Supervisor, type ChildExit } from '../src/process/supervisor.ts';
import { killQuietly, pidAlive, waitFor } from './fixtures/util.ts';

const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));
const FOREVER = 'setInterval(() => {}, 60000);';

function capture(): { stream: PassThrough; text: () => string } {
  const stream = new PassThrough();
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (c: string) => (buf += c));
  return { stream, text: () => buf };
}

describe('Supervisor', () => {
  const leftovers: number[] = [];
  after(() => {
    for (const pid of leftovers) killQuietly(pid);
  });

  test('stop() kills every child (SIGTERM, then SIGKILL for the stubborn one) and their process groups', async () => {
    const out = capture();
    const sup = new Supervisor({ graceMs: 300, stdout: out.stream, stderr: out.stream });
    const a = sup.spawn({ name: 'a', command: process.execPath, args: ['-e', `console.log('a up'); ${FOREVER}`] });
    const b = sup.spawn({
      name: 'stubborn',
      command: process.execPath,
      args: ['-e', `process.on('SIGTERM', () => console.log('ignoring SIGTERM')); console.log('stubborn up'); ${FOREVER}`],
    });
    // A shell child with a grandchild in its process group.
    const c = sup.spawn({ name: 'sh', command: 'sh', args: ['-c', 'sleep 1000 & echo "grandchild $!"; wait'] });
    leftovers.push(a.pid, b.pid, c.pid);
    await waitFor('children up', () => /a up/.test(out.text()) && /stubborn up/.test(out.text()) && /grandchild \d+/.test(out.text()));
    const grandchild = Number(/grandchild (\d+)/.exec(out.text())![1]);
    leftovers.push(grandchild);
    for (const pid of [a.pid, b.pid, c.pid, grandchild]) assert.ok(pidAlive(pid), `pid ${pid} alive before stop`);

    const t0 = Date.now();
    const exits = await sup.stop();
    const took = Date.now() - t0;
    assert.ok(took < 2000, `stop took ${took} ms`);
    assert.equal(exits.length, 3);
    assert.ok(exits.every((e) => e.expected));
    assert.equal(exits.find((e) => e.name === 'stubborn')?.signal, 'SIGKILL');
    assert.equal(exits.find((e) => e.name === 'a')?.signal, 'SIGTERM');
    await waitFor('all pids gone', () => [a.pid, b.pid, c.pid, grandchild].every((pid) => !pidAlive(pid)), 2000);
    assert.ok(sup.children().every((ch) => !ch.running));
    assert.match(out.text(), /^\[a\] a up$/m);
    assert.match(out.text(), /^\[stubborn\] ignoring SIGTERM$/m);
    assert.deepEqual(await sup.stop(), exits, 'idempotent');
    assert.throws(() => sup.spawn({ name: 'late', command: process.execPath }), /stopping/);
  });

  test('stop() never signals the pid or group of a child that exited before (pid reuse); its group was reaped at exit', async () => {
    const out = capture();
    const sup = new Supervisor({ graceMs: 300, stdout: out.stream, stderr: out.stream });
    // Exits at once, leaving a grandchild in its process group.
    const quick = sup.spawn({ name: 'quick', command: 'sh', args: ['-c', 'sleep 1000 & echo "grandchild $!"'] });
    const calls: Array<[number, string | number | undefined]> = [];
    const realKill = process.kill;
    process.kill = ((pid: number, signal?: string | number) => {
      calls.push([pid, signal]);
      return realKill.call(process, pid, signal);
    }) as typeof process.kill;
    try {
      await quick.exited;
      const grandchild = Number(/grandchild (\d+)/.exec(out.text())?.[1]);
      if (grandchild) leftovers.push(grandchild);
      await waitFor('the exited child\'s grandchild is reaped', () => !grandchild || !pidAlive(grandchild));
      const before = calls.length;
      await sup.stop();
      const late = calls.slice(before).filter(([pid]) => Math.abs(pid) === quick.pid);
      assert.deepEqual(late, [], 'signals sent to a pid that may belong to someone else by now');
    } finally {
      process.kill = realKill;
    }
  });

  test('an unexpected child exit is reported; output modes prefix / passthrough / auto', async () => {
    const out = capture();
    const unexpected: ChildExit[] = [];
    const sup = new Supervisor({ graceMs: 500, stdout: out.stream, stderr: out.stream, onUnexpectedExit: (e) => unexpected.push(e) });
    const print = `console.log('plain line'); console.log(JSON.stringify({ level: 30, msg: 'json line' }));`;
    const p1 = sup.spawn({ name: 'pre', command: process.execPath, args: ['-e', `${print} ${FOREVER}`] });
    const p2 = sup.spawn({ name: 'raw', output: 'passthrough', command: process.execPath, args: ['-e', `${print.replaceAll('line', 'raw')} ${FOREVER}`] });
    const p3 = sup.spawn({ name: 'auto', output: 'auto', command: process.execPath, args: ['-e', `${print.replaceAll('line', 'auto')} ${FOREVER}`] });
    const dies = sup.spawn({ name: 'dies', command: process.execPath, args: ['-e', `console.error('bye'); process.exit(3)`] });
    leftovers.push(p1.pid, p2.pid, p3.pid);
    const exit = await dies.exited;
    assert.equal(exit.code, 3);
    assert.equal(exit.expected, false);
    await waitFor('callback', () => unexpected.length === 1);
    assert.equal(unexpected[0]!.name, 'dies');

    await waitFor('all output', () => out.text().split('\n').length >= 8);
    const lines = out.text().split('\n');
    assert.ok(lines.includes('[pre] plain line'));
    assert.ok(lines.includes('[pre] {"level":30,"msg":"json line"}'));
    assert.ok(lines.includes('plain raw'));
    assert.ok(lines.includes('{"level":30,"msg":"json raw"}'));
    assert.ok(lines.includes('[auto] plain auto'));
    assert.ok(lines.includes('{"level":30,"msg":"json auto"}'));
    assert.ok(lines.includes('[dies] bye'));

    const exits = await sup.stop();
    assert.equal(exits.filter((e) => e.expected).length, 3);
    for (const pid of [p1.pid, p2.pid, p3.pid]) assert.equal(pidAlive(pid), false);
  });

  test('exitWhenParentDies: children exit when their supervisor is SIGKILLed (IPC and pid-poll paths)', async () => {
    const parent = spawn(process.execPath, ['--import', 'tsx', 'packages/common/test/fixtures/supervised-parent.ts'], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    leftovers.push(parent.pid!);
    let text = '';
    parent.stdout!.setEncoding('utf8');
    parent.stdout!.on('data', (c: string) => (text += c));
    const pids = await waitFor(
      'both children ready',
      () => {
        const ipc = /child-ready ipc (\d+)/.exec(text);
        const noipc = /child-ready noipc (\d+)/.exec(text);
        return ipc && noipc ? [Number(ipc[1]), Number(noipc[1])] : undefined;
      },
      8000,
    );
    leftovers.push(...pids);
    assert.ok(pids.every(pidAlive));
    const parentExit = new Promise((resolve) => parent.once('exit', resolve));
    parent.kill('SIGKILL');
    await parentExit;
    await waitFor('IPC child gone', () => !pidAlive(pids[0]!), 2000, 10);
    await waitFor('pid-poll child gone', () => !pidAlive(pids[1]!), 2000, 10);
  });
});

describe('Supervisor.handleSignals', () => {
  /**
   * A supervising process (handleSignals, exits 130 on SIGINT) with one child that takes
   * `drainMs` to stop after SIGTERM and says so; resolves with its output and exit code once
   * `signals` (delays in ms between SIGINTs) have been sent.
   */
  async function interrupt(drainMs: number, gapsMs: number[]): Promise<{ out: string; code: number | null }> {
    const sup = new URL('../src/process/supervisor.ts', import.meta.url).pathname;
    const child = `process.on('SIGTERM', () => setTimeout(() => { console.log('child drained'); process.exit(0); }, ${drainMs})); console.log('child up'); ${FOREVER}`;
    const script = `import { Supervisor } from ${JSON.stringify(sup)};
      const s = new Supervisor({ graceMs: 10000 });
      s.spawn({ name: 'slow', command: process.execPath, args: ['-e', ${JSON.stringify(child)}] });
      s.handleSignals();`;
    const p = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout!.on('data', (d) => (out += d));
    p.stderr!.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((r) => p.on('close', (c) => r(c)));
    await waitFor('child up', () => out.includes('child up'));
    p.kill('SIGINT');
    for (const gap of gapsMs) {
      await new Promise((r) => setTimeout(r, gap));
      p.kill('SIGINT');
    }
    const code = await exited;
    return { out, code };
  }

  test('one Ctrl-C delivered twice (the terminal and a relaying wrapper) still lets the children drain', async () => {
    const r = await interrupt(300, [20]);
    assert.equal(r.code, 130);
    assert.match(r.out, /child drained/);
  });

  test('a second Ctrl-C a while later kills the children at once', async () => {
    const r = await interrupt(5000, [1300]);
    assert.equal(r.code, 130);
    assert.doesNotMatch(r.out, /child drained/);
  });
});
