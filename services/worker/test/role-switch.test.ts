// The worker's role switch alone, with a fake clock and a fake registration: what it accepts
// when, what it advertises, and how it treats bad or repeated commands.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import type { RoleChangeStatus, WorkerRole } from '@pdserve/common';
import { RoleSwitch } from '../src/role-switch.ts';

function rig(role: WorkerRole, pinned = false) {
  let now = 1_000;
  const held = { prefill: 0, decode: 0 };
  const advertised: Array<{ role: WorkerRole; change: RoleChangeStatus }> = [];
  const rejected: string[] = [];
  const changed: string[] = [];
  const sw = new RoleSwitch({
    role, pinned, graceMs: 500, settleTimeoutMs: 5_000, log: pino({ level: 'silent' }),
    advertise: async (r, change) => { advertised.push({ role: r, change }); return true; },
    held: () => held,
    onChanged: (from, to) => changed.push(`${from}->${to}`),
    onRejected: (reason) => rejected.push(reason),
    isStopping: () => false,
    now: () => now,
    // Each sleep advances the fake clock: the settle loop runs to its end at once.
    sleep: async (ms) => { now += ms; if (now > 1_700) held.decode = 0; },
  });
  return { sw, held, advertised, rejected, changed, tick: (ms: number) => { now += ms; } };
}

test('unified -> prefill: decode calls stop after the grace period; the change settles once the held decodes finish', async () => {
  const r = rig('unified');
  r.held.decode = 2;
  r.sw.handle({ kind: 'command', command: { role: 'prefill', requested_ms: 900, decision_id: '1-0' } });
  assert.equal(r.sw.role, 'prefill');
  assert.equal(r.sw.accepts('prefill'), true);
  assert.equal(r.sw.accepts('decode'), true, 'stragglers the router routed before it saw the change are taken');
  r.tick(600);
  assert.equal(r.sw.accepts('decode'), false);
  await r.sw.idle();
  assert.deepEqual(r.changed, ['unified->prefill']);
  assert.equal(r.advertised.length, 2);
  assert.deepEqual(r.advertised[0], { role: 'prefill', change: { from: 'unified', to: 'prefill', requested_ms: 900, applied_ms: 1_000, decision_id: '1-0' } });
  const settled = r.advertised[1]!.change;
  assert.ok(settled.settled_ms! > 1_700, 'settled only after the decodes it held were done');
  assert.equal(r.sw.lastChange?.settled_ms, settled.settled_ms);
});

test('prefill -> decode takes decode work at once', () => {
  const r = rig('prefill');
  assert.equal(r.sw.accepts('decode'), false);
  r.sw.handle({ kind: 'command', command: { role: 'decode', requested_ms: 900 } });
  assert.equal(r.sw.accepts('decode'), true);
  assert.equal(r.sw.role, 'decode');
});

test('a command is carried out once; the same role is a no-op', async () => {
  const r = rig('decode');
  const cmd = { kind: 'command' as const, command: { role: 'unified' as const, requested_ms: 900, decision_id: '7-0' } };
  r.sw.handle(cmd);
  r.sw.handle(cmd);
  await r.sw.idle();
  r.sw.handle({ kind: 'command', command: { role: 'unified', requested_ms: 950 } });
  await r.sw.idle();
  assert.deepEqual(r.changed, ['decode->unified']);
});

test('an invalid command is reported once and ignored; a pinned worker refuses commands', async () => {
  const r = rig('decode');
  const bad = { kind: 'invalid' as const, error: 'unknown role "chef"', token: 'chef@1@' };
  r.sw.handle(bad);
  r.sw.handle(bad);
  assert.deepEqual(r.rejected, ['invalid']);
  assert.equal(r.sw.role, 'decode');
  const p = rig('prefill', true);
  p.sw.handle({ kind: 'command', command: { role: 'decode', requested_ms: 900 } });
  await p.sw.idle();
  assert.equal(p.sw.role, 'prefill');
  assert.deepEqual(p.rejected, ['pinned']);
  assert.deepEqual(p.advertised, []);
});
