// `pdserve up`'s worker supervision (packages/cli/src/supervisor.ts): the policy (backoff, restart
// budget) with a fake clock, the restarting mechanism with fake children, and one real process
// started, SIGKILLed and started again through the common Supervisor.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Supervisor } from '@pdserve/common';
import { exitReason, RestartingChildren, RestartPolicy, type ChildLike, type ExitLike } from '../src/supervisor.ts';

test('backoff doubles per restart inside the window, capped', () => {
  const p = new RestartPolicy({ baseDelayMs: 100, maxDelayMs: 500, budget: 10, windowMs: 60_000 });
  const delays = [0, 1, 2, 3, 4].map((i) => p.onExit('w', i * 1000));
  assert.deepEqual(delays.map((d) => (d.action === 'restart' ? d.delayMs : -1)), [100, 200, 400, 500, 500]);
});

test('the budget is per child and per window: the sixth death in 60 s is given up on, an old one ages out', () => {
  const p = new RestartPolicy({ budget: 5, windowMs: 60_000 });
  for (let i = 0; i < 5; i++) assert.equal(p.onExit('a', i * 1000).action, 'restart');
  assert.deepEqual(p.onExit('a', 5000), { action: 'give_up', restarts: 5 });
  assert.equal(p.onExit('b', 5000).action, 'restart', 'another child has its own budget');
  const q = new RestartPolicy({ budget: 2, windowMs: 10_000 });
  q.onExit('a', 0);
  q.onExit('a', 1000);
  const later = q.onExit('a', 10_500); // the death at 0 has left the window
  assert.equal(later.action, 'restart');
  assert.equal(later.action === 'restart' && later.attempt, 2, 'the backoff counts only deaths inside the window');
});

test('exit reasons are the signal name or exit_<code>', () => {
  assert.equal(exitReason({ code: null, signal: 'SIGKILL' }), 'SIGKILL');
  assert.equal(exitReason({ code: 1, signal: null }), 'exit_1');
  assert.equal(exitReason({ code: null, signal: null }), 'exit_unknown');
});

/** A child whose exit the test decides. */
function fakeChild(pid: number): ChildLike & { die(e: Partial<ExitLike>): void } {
  let resolve!: (e: ExitLike) => void;
  const exited = new Promise<ExitLike>((r) => { resolve = r; });
  return { pid, exited, die: (e) => resolve({ code: null, signal: null, expected: false, ...e }) };
}

function harness(policy = new RestartPolicy({ baseDelayMs: 10, budget: 2, windowMs: 60_000 })) {
  const started: Array<ReturnType<typeof fakeChild>> = [];
  const timers: Array<{ fn: () => void; ms: number; cancelled: boolean }> = [];
  const restarts: string[] = [];
  const gaveUp: string[] = [];
  const logs: string[] = [];
  let clock = 0;
  const r = new RestartingChildren({
    policy,
    log: { warn: (_o, m) => logs.push(m), error: (_o, m) => logs.push(m) },
    onRestart: (role, reason) => restarts.push(`${role}:${reason}`),
    onGiveUp: (name) => gaveUp.push(name),
    now: () => clock,
    setTimer: (fn, ms) => { const t = { fn, ms, cancelled: false }; timers.push(t); return { cancel: () => { t.cancelled = true; } }; },
  });
  const start = () => { const c = fakeChild(100 + started.length); started.push(c); return c; };
  const fire = () => { for (const t of timers.splice(0)) if (!t.cancelled) t.fn(); };
  return { r, started, timers, restarts, gaveUp, logs, start, fire, tick: (ms: number) => { clock += ms; } };
}

const settle = () => new Promise((r) => setImmediate(r));

test('a child that dies is started again after the backoff, counted with its role and reason', async () => {
  const h = harness();
  h.r.add('decode-0', 'decode', h.start);
  assert.equal(h.started.length, 1);
  h.started[0].die({ signal: 'SIGKILL' });
  await settle();
  assert.deepEqual(h.restarts, ['decode:SIGKILL']);
  assert.equal(h.timers.length, 1);
  assert.equal(h.timers[0].ms, 10);
  assert.equal(h.started.length, 1, 'not before the backoff');
  h.fire();
  assert.equal(h.started.length, 2);
  assert.equal(h.r.current('decode-0'), h.started[1]);
  h.tick(1000);
  h.started[1].die({ code: 3 });
  await settle();
  assert.equal(h.timers[0].ms, 20, 'the second restart waits twice as long');
  h.fire();
  h.started[2].die({ code: 3 });
  await settle();
  assert.deepEqual(h.restarts, ['decode:SIGKILL', 'decode:exit_3']);
  assert.deepEqual(h.gaveUp, ['decode-0'], 'budget of 2 spent: given up');
  assert.deepEqual(h.r.givenUp(), ['decode-0']);
  assert.equal(h.timers.length, 0);
  assert.equal(h.started.length, 3);
});

test('an expected exit (the cluster stopping) and stop() restart nothing', async () => {
  const h = harness();
  h.r.add('prefill-0', 'prefill', h.start);
  h.r.add('decode-0', 'decode', h.start);
  h.started[0].die({ code: 0, expected: true });
  await settle();
  assert.equal(h.timers.length, 0);
  h.started[1].die({ signal: 'SIGSEGV' });
  await settle();
  assert.equal(h.timers.length, 1);
  h.r.stop();
  assert.ok(h.timers[0].cancelled, 'a pending restart is cancelled');
  h.fire();
  assert.equal(h.started.length, 2);
});

test('real process: a SIGKILLed child is started again and keeps running', { timeout: 30_000 }, async () => {
  const sup = new Supervisor({ output: 'prefix', graceMs: 2000 });
  const reasons: string[] = [];
  const restarting = new RestartingChildren({
    policy: new RestartPolicy({ baseDelayMs: 50 }),
    log: { warn: () => {}, error: () => {} },
    onRestart: (role, reason) => reasons.push(`${role}:${reason}`),
  });
  const spawn = () => sup.spawn({ name: 'sleeper', command: process.execPath, args: ['-e', 'setInterval(() => {}, 1000)'] });
  const first = restarting.add('sleeper', 'decode', spawn);
  try {
    process.kill(first.pid, 'SIGKILL');
    const deadline = Date.now() + 20_000;
    while (restarting.current('sleeper') === first && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    const second = restarting.current('sleeper')!;
    assert.notEqual(second, first, 'restarted');
    assert.notEqual(second.pid, first.pid);
    process.kill(second.pid, 0); // alive
    assert.deepEqual(reasons, ['decode:SIGKILL']);
  } finally {
    restarting.stop();
    const exits = await sup.stop();
    assert.ok(exits.at(-1)!.expected);
  }
});
