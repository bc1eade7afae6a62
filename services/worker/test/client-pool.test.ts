// Issue 12 defect 12: the per-address gRPC client cache of a prefill worker shrinks again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClientPool } from '../src/client-pool.ts';

class FakeClient {
  closed = false;
  constructor(readonly address: string) {}
  close(): void {
    this.closed = true;
  }
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('clients of addresses no longer in use are closed and dropped', async () => {
  const made: FakeClient[] = [];
  const pool = new ClientPool((a) => { const c = new FakeClient(a); made.push(c); return c; }, 20);
  // 50 decode workers come and go (restarts on new ports): the pool must not keep 50 channels.
  for (let i = 0; i < 50; i++) {
    const address = `10.0.0.1:${5000 + i}`;
    pool.acquire(address);
    pool.release(address);
  }
  await until(() => pool.size === 0, 'idle clients to close');
  assert.ok(made.every((c) => c.closed), 'every idle client was closed');
});

test('one client per address while in use, shared by concurrent calls, kept while any call holds it', async () => {
  const pool = new ClientPool((a) => new FakeClient(a), 10);
  const a = pool.acquire('x:1');
  const b = pool.acquire('x:1');
  assert.equal(a, b);
  pool.release('x:1');
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(pool.size, 1, 'still held by one call');
  assert.equal(a.closed, false);
  pool.release('x:1');
  await until(() => pool.size === 0, 'the client to close');
  assert.equal(a.closed, true);
  // Reacquired within the idle window: the same client, not closed.
  const c = pool.acquire('y:1');
  pool.release('y:1');
  assert.equal(pool.acquire('y:1'), c);
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(c.closed, false);
  pool.release('y:1');
});
