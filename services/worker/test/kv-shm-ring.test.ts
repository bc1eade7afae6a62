// The same-host shared-memory ring of the KV data channel (kv-data/shm-ring.ts): regions are placed
// in order, wrap, never overlap one still in flight, and come back in order; a decode worker opens
// only a real ring with the offered nonce and size; payloads read back are the bytes written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { PeerShmRing, ShmRing } from '../src/kv-data/shm-ring.ts';

const haveShm = existsSync('/dev/shm');

test('regions are placed in order, wrap around, never overlap one in flight, and are released oldest first', { skip: !haveShm && 'no /dev/shm' }, () => {
  const ring = ShmRing.create(1000)!;
  try {
    const put = (n: number) => ring.put(new Uint8Array(n).fill(n % 251));
    assert.deepEqual(put(400), [0, 400]);
    assert.deepEqual(put(400), [400, 400]);
    assert.equal(put(400), undefined, 'full: 200 left at the end, none before the oldest');
    assert.ok(ring.release(1));
    assert.deepEqual(put(300), [0, 300], 'wraps to the start, before the oldest region in flight');
    assert.equal(put(150), undefined, '100 left between the newest and the oldest');
    assert.deepEqual(put(100), [300, 100]);
    assert.equal(ring.pending, 3);
    assert.equal(ring.release(4), false, 'more than were sent is refused');
    assert.ok(ring.release(3));
    assert.deepEqual(put(1000), [0, 1000], 'empty: the whole ring, from the start');
    assert.equal(put(1001), undefined, 'larger than the ring');
  } finally {
    ring.close();
  }
});

test('a decode side opens the offered ring, reads back exactly what was written, and the name can go at once', { skip: !haveShm && 'no /dev/shm' }, () => {
  const ring = ShmRing.create(1 << 20)!;
  const peer = PeerShmRing.open(ring.offer());
  assert.ok(peer instanceof PeerShmRing, String(peer));
  ring.unlink();
  assert.equal(existsSync(ring.path), false, 'no file is left in /dev/shm');
  try {
    const data = new Uint8Array(300_000).map((_, i) => (i * 31) & 255);
    const [offset, len] = ring.put(data)!;
    // Into a view over a SharedArrayBuffer, as the receive pool hands out.
    const into = new Uint8Array(new SharedArrayBuffer(len + 4096), 4096, len);
    assert.ok(peer.read(offset, into));
    assert.deepEqual(Buffer.from(into), Buffer.from(data));
    assert.equal(peer.read(1 << 20, new Uint8Array(1)), false, 'past the end of the ring');
    assert.equal(peer.read(-1, new Uint8Array(1)), false);
  } finally {
    peer.close();
    ring.close();
  }
});

test('only a real ring of the offered size and nonce is opened: not another path, a link, a FIFO or a namesake', { skip: !haveShm && 'no /dev/shm' }, () => {
  const ring = ShmRing.create(4096)!;
  const offer = ring.offer();
  const made: string[] = [];
  try {
    assert.match(String(PeerShmRing.open({ ...offer, n: 'f'.repeat(32) })), /nonce differs/);
    assert.match(String(PeerShmRing.open({ ...offer, b: 8192 })), /offered size/);
    assert.match(String(PeerShmRing.open({ ...offer, p: '/tmp/pdserve-kv-1-0123456789abcdef' })), /not a pdserve shared-memory ring path/);
    assert.match(String(PeerShmRing.open({ ...offer, p: '/dev/shm/../etc/passwd' })), /not a pdserve shared-memory ring path/);
    assert.match(String(PeerShmRing.open({ ...offer, b: 2 ** 31 })), /out of range/);
    assert.match(String(PeerShmRing.open(null)), /malformed/);
    const link = `/dev/shm/pdserve-kv-${process.pid}-${'a'.repeat(16)}`;
    symlinkSync(ring.path, link);
    made.push(link);
    assert.match(String(PeerShmRing.open({ ...offer, p: link })), /not usable here/, 'a symbolic link is not followed');
    const fifo = `/dev/shm/pdserve-kv-${process.pid}-${'b'.repeat(16)}`;
    execFileSync('mkfifo', [fifo]);
    made.push(fifo);
    assert.match(String(PeerShmRing.open({ ...offer, p: fifo })), /not usable here/, 'a FIFO is refused without blocking');
  } finally {
    for (const f of made) try { unlinkSync(f); } catch { /* gone */ }
    ring.close();
  }
});

test('a ring left by a dead process is removed when the next ring is created', { skip: !haveShm && 'no /dev/shm' }, () => {
  // A pid that is not running: a finished child's.
  const dead = Number(execFileSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']).toString());
  const stale = `/dev/shm/pdserve-kv-${dead}-${'c'.repeat(16)}`;
  writeFileSync(stale, 'x');
  const ring = ShmRing.create(4096)!;
  ring.close();
  assert.equal(existsSync(stale), false);
  assert.equal(readdirSync('/dev/shm').filter((n) => n.startsWith(`pdserve-kv-${process.pid}-`)).length, 0, 'close unlinks this process\'s own ring');
});
