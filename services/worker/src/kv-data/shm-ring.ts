// Same-host fast path of the KV data channel: a ring of KV payloads in a tmpfs file (/dev/shm), so a
// chunk's bytes are copied once into the page cache by the prefill worker and once out of it by the
// decode worker, instead of travelling through the loopback TCP stack (socket buffers, 64 KiB reads,
// a JS callback per read). The socket still carries every frame, in order: a chunk frame then names
// its payload's place in the ring (meta `s` = [offset, length]) instead of carrying it.
//
// Negotiation (frames.ts): the prefill side creates the ring and offers it in its hello frame (path,
// a random nonce written at the file's start, ring size). A decode worker that can open that file
// and reads the same nonce is on the same host and kernel; it answers `welcome` {shm: true} and
// keeps the file open; the prefill side then unlinks the file, so nothing is left in /dev/shm when
// either process dies. Any other answer (or none: an older decode worker never answers) leaves the
// connection on inline payloads.
//
// Space: the prefill side allocates regions in order; the decode side reads each region as soon as
// its frame arrives (into a receive-pool slot, then verifies it as for an inline payload) and
// reports how many it consumed in `freed` frames, so regions come back in order (a FIFO ring). When
// the ring is full, or a write fails (tmpfs full: containers often cap /dev/shm at 64 MiB), a chunk
// goes inline as before. Checksums are taken over the wire bytes before they enter the ring and
// verified after they leave it, exactly as for the socket.
import { closeSync, constants, fstatSync, openSync, readdirSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

export const SHM_DIR = '/dev/shm';
/** MiB of the ring each data connection offers unless configured (`--kv-shm-mib`). */
export const DEFAULT_KV_SHM_MIB = 32;
/** Bytes before the ring's data: the nonce, padded to a page. */
export const SHM_HEADER_BYTES = 4096;
const NONCE_BYTES = 16;
const NAME = /^pdserve-kv-(\d+)-[0-9a-f]{16}$/;
/** The largest ring a decode worker will open (a hostile hello cannot make it map more). */
export const MAX_SHM_RING_BYTES = 1024 * 1024 * 1024;

export interface ShmOffer { p: string; n: string; b: number }

/** Prefill side: the ring one data connection writes payloads into. */
export class ShmRing {
  /** Regions handed to the decode side and not yet reported consumed, oldest first. */
  private readonly inFlight: Array<{ offset: number; end: number }> = [];
  private fd?: number;
  private linked = true;

  private constructor(readonly path: string, readonly nonce: Buffer, readonly bytes: number, fd: number) {
    this.fd = fd;
  }

  /** A new ring of `bytes` (sparse: tmpfs pages are taken as they are first written), or undefined where /dev/shm is not usable. */
  static create(bytes: number): ShmRing | undefined {
    removeStaleRings();
    const path = `${SHM_DIR}/pdserve-kv-${process.pid}-${randomBytes(8).toString('hex')}`;
    let fd: number | undefined;
    try {
      fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
      const nonce = randomBytes(NONCE_BYTES);
      if (writeSync(fd, nonce, 0, NONCE_BYTES, 0) !== NONCE_BYTES) throw new Error('short write');
      // Size the file so the decode side can check it; the data pages stay unallocated until used.
      if (writeSync(fd, Buffer.alloc(1), 0, 1, SHM_HEADER_BYTES + bytes - 1) !== 1) throw new Error('short write');
      return new ShmRing(path, nonce, bytes, fd);
    } catch {
      if (fd !== undefined) closeSync(fd);
      try { unlinkSync(path); } catch { /* never created */ }
      return undefined;
    }
  }

  offer(): ShmOffer {
    return { p: this.path, n: this.nonce.toString('hex'), b: this.bytes };
  }

  /** The decode side has the file open (or refused it): the name is no longer needed. */
  unlink(): void {
    if (!this.linked) return;
    this.linked = false;
    try { unlinkSync(this.path); } catch { /* already gone */ }
  }

  close(): void {
    this.unlink();
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    this.inFlight.length = 0;
  }

  /**
   * Copies `data` into a free region and returns its [offset, length], or undefined (ring full,
   * closed, or the write failed: the caller sends the payload inline).
   */
  put(data: Uint8Array): [number, number] | undefined {
    if (this.fd === undefined || data.byteLength === 0) return undefined;
    const offset = this.place(data.byteLength);
    if (offset === undefined) return undefined;
    try {
      if (writeSync(this.fd, data, 0, data.byteLength, SHM_HEADER_BYTES + offset) !== data.byteLength) return undefined;
    } catch {
      return undefined; // ENOSPC on a small /dev/shm: this chunk goes inline, later ones try again
    }
    this.inFlight.push({ offset, end: offset + data.byteLength });
    return [offset, data.byteLength];
  }

  /** The decode side consumed the `count` oldest regions. False if it claims more than were sent. */
  release(count: number): boolean {
    if (!Number.isInteger(count) || count < 0 || count > this.inFlight.length) return false;
    this.inFlight.splice(0, count);
    return true;
  }

  /** Regions in flight (tests: a leak shows here). */
  get pending(): number {
    return this.inFlight.length;
  }

  /** Where `len` bytes fit: after the newest region, wrapping to 0, never over the oldest. */
  private place(len: number): number | undefined {
    if (len > this.bytes) return undefined;
    const oldest = this.inFlight[0];
    const newest = this.inFlight[this.inFlight.length - 1];
    if (!oldest || !newest) return 0;
    if (newest.offset >= oldest.offset) {
      // Not wrapped: free space is [newest.end, bytes) and [0, oldest.offset).
      if (newest.end + len <= this.bytes) return newest.end;
      return len <= oldest.offset ? 0 : undefined;
    }
    // Wrapped: free space is [newest.end, oldest.offset).
    return newest.end + len <= oldest.offset ? newest.end : undefined;
  }
}

/** Rings left by prefill workers that died between offering and the decode side's answer. */
function removeStaleRings(): void {
  let names: string[];
  try { names = readdirSync(SHM_DIR); } catch { return; }
  for (const name of names) {
    const m = NAME.exec(name);
    if (!m || Number(m[1]) === process.pid || processAlive(Number(m[1]))) continue;
    try { unlinkSync(`${SHM_DIR}/${name}`); } catch { /* raced with its owner or another worker */ }
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Decode side: a peer's ring, opened read-only. */
export class PeerShmRing {
  private fd?: number;

  private constructor(fd: number, readonly bytes: number) {
    this.fd = fd;
  }

  /**
   * Opens the ring a hello frame offers, or says why not (then the connection stays on inline
   * payloads). Only files named like a ring under /dev/shm are opened, without following links and
   * without blocking (a FIFO there could not hold the main thread), and only a regular file of the
   * offered size whose first bytes are the offered nonce is accepted: a namesake on another host or
   * in another container has a different nonce.
   */
  static open(offer: unknown): PeerShmRing | string {
    const o = offer as Partial<ShmOffer> | null;
    if (!o || typeof o !== 'object' || typeof o.p !== 'string' || typeof o.n !== 'string' || typeof o.b !== 'number') return 'malformed shared-memory offer';
    if (!Number.isInteger(o.b) || o.b <= 0 || o.b > MAX_SHM_RING_BYTES) return 'shared-memory ring size out of range';
    const slash = o.p.lastIndexOf('/');
    if (o.p.slice(0, slash) !== SHM_DIR || !NAME.test(o.p.slice(slash + 1))) return 'not a pdserve shared-memory ring path';
    if (!/^[0-9a-f]{32}$/.test(o.n)) return 'malformed shared-memory nonce';
    let fd: number | undefined;
    try {
      fd = openSync(o.p, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      const st = fstatSync(fd);
      if (!st.isFile() || st.size !== SHM_HEADER_BYTES + o.b) throw new Error('not a ring of the offered size');
      const nonce = Buffer.alloc(NONCE_BYTES);
      if (readSync(fd, nonce, 0, NONCE_BYTES, 0) !== NONCE_BYTES || nonce.toString('hex') !== o.n) throw new Error('nonce differs (another host)');
      return new PeerShmRing(fd, o.b);
    } catch (err) {
      if (fd !== undefined) closeSync(fd);
      return `shared-memory ring not usable here: ${(err as Error).message}`;
    }
  }

  /** Copies the region [offset, offset + into.byteLength) into `into`; false if it is out of range or short. */
  read(offset: number, into: Uint8Array): boolean {
    if (this.fd === undefined || !Number.isInteger(offset) || offset < 0 || offset + into.byteLength > this.bytes) return false;
    try {
      return readSync(this.fd, into, 0, into.byteLength, SHM_HEADER_BYTES + offset) === into.byteLength;
    } catch {
      return false;
    }
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}
