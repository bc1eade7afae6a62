// Prefill side of the TCP KV data channel: one persistent connection per decode peer, shared by
// every transfer to it; each batch of chunks the engine thread posts goes out corked, as one writev
// (a small header buffer and the payload itself, no copy), and writing stops at the socket's
// high-water mark until 'drain'. The decode side answers each transfer with an `ack` frame.
// On one host the payloads go through a shared-memory ring instead of the socket (shm-ring.ts):
// each is copied into the ring as it is handed over, and only its frame goes on the socket.
import { connect, type Socket } from 'node:net';
import { clusterSecurity, kvTrace, type KvChunkMsg } from '@pdserve/common';
import { corruptForTest, type KvPush } from '../kv-sinks.ts';
import { chunkMeta, encodeHeader, FrameReader, type AckMeta, type FreedMeta, type WelcomeMeta } from './frames.ts';
import { DEFAULT_KV_SHM_MIB, ShmRing } from './shm-ring.ts';

/** Size of the shared-memory ring each data connection offers (--kv-shm-mib); 0 = none. */
let shmRingBytes = DEFAULT_KV_SHM_MIB * 1024 * 1024;
/** Bytes of KV payload that went through a shared-memory ring, for the worker's metrics. */
let shmBytesSent = 0;

export function configureKvSharedMemory(o: { ringBytes: number }): void {
  shmRingBytes = o.ringBytes;
}

export function kvSharedMemoryBytesSent(): number {
  return shmBytesSent;
}

class DataConnection {
  readonly pushes = new Map<string, TcpKvPush>();
  private readonly queue: Array<{ buffers: Buffer[]; sent?: () => void }> = [];
  private waitingDrain = false;
  private connected = false;
  closed = false;
  private readonly socket: Socket;
  /** The offered ring; `ringAccepted` once the decode worker has it open. */
  private ring?: ShmRing;
  private ringAccepted = false;

  constructor(readonly address: string, private readonly onClosed: () => void) {
    const i = address.lastIndexOf(':');
    this.socket = connect({ host: address.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(address.slice(i + 1)), noDelay: true });
    // An idle pooled connection must not keep a stopping worker alive.
    this.socket.unref();
    // The hello goes first: the decode side drops a connection whose first frame is anything else
    // or carries another cluster's token (the gRPC calls are checked the same way).
    const token = clusterSecurity().token;
    this.ring = shmRingBytes > 0 ? ShmRing.create(shmRingBytes) : undefined;
    this.socket.write(encodeHeader('hello', { ...(token === undefined ? {} : { t: token }), ...(this.ring ? { shm: this.ring.offer() } : {}) }, 0));
    this.socket.on('connect', () => { this.connected = true; this.flush(); });
    const reader = new FrameReader(0);
    this.socket.on('data', (data: Buffer) => {
      let frames;
      try { frames = reader.push(data); } catch (err) { return this.fail(`bad frame from ${address}: ${(err as Error).message}`); }
      for (const f of frames) {
        if (f.type === 'welcome' && this.ring && !this.ringAccepted) {
          // Accepted or not, the file's name has served its purpose.
          this.ring.unlink();
          if ((f.meta as WelcomeMeta | null)?.shm === true) this.ringAccepted = true;
          else { this.ring.close(); this.ring = undefined; }
          continue;
        }
        if (f.type === 'freed' && this.ringAccepted) {
          if (!this.ring!.release((f.meta as FreedMeta | null)?.n as number)) return this.fail(`bad freed frame from ${address}`);
          continue;
        }
        const m = f.meta as AckMeta;
        if (f.type !== 'ack' || typeof m?.r !== 'string') return this.fail(`unexpected ${f.type} frame from ${address}`);
        this.pushes.get(m.r)?.ended(typeof m.e === 'string' ? m.e : undefined);
      }
    });
    this.socket.on('error', (err) => this.fail(err.message));
    this.socket.on('close', () => this.fail('connection closed'));
  }

  /**
   * Copies a payload into the shared-memory ring, where the decode worker has it open: its place in
   * the ring, or undefined (no ring, ring full, write failed) and the payload goes inline. Frames
   * must then be sent in the order their payloads were placed, since regions come back in order.
   */
  place(data: Uint8Array): [number, number] | undefined {
    if (!this.ringAccepted || this.closed) return undefined;
    const at = this.ring!.put(data);
    if (at) shmBytesSent += data.byteLength;
    return at;
  }

  /** Queues one batch of buffers (frames) and writes what the socket takes; `sent` once the socket has them (or they are dropped). */
  send(buffers: Buffer[], sent?: () => void): void {
    if (this.closed) return sent?.();
    this.queue.push({ buffers, sent });
    this.flush();
  }

  private flush(): void {
    if (!this.connected || this.closed) return;
    while (!this.waitingDrain && this.queue.length > 0) {
      const { buffers, sent } = this.queue.shift()!;
      this.socket.cork();
      let ok = true;
      // The last buffer's callback comes once all of the batch is written (or the socket failed:
      // a destroyed socket calls back every pending write with an error).
      buffers.forEach((b, i) => { ok = i === buffers.length - 1 && sent ? this.socket.write(b, () => sent()) : this.socket.write(b); });
      this.socket.uncork();
      if (!ok) {
        this.waitingDrain = true;
        this.socket.once('drain', () => { this.waitingDrain = false; this.flush(); });
      }
    }
  }

  fail(why: string): void {
    if (this.closed) return;
    this.closed = true;
    for (const q of this.queue.splice(0)) q.sent?.();
    this.ring?.close();
    this.socket.destroy();
    this.onClosed();
    for (const p of [...this.pushes.values()]) p.ended(`KV push to ${this.address} failed: data connection: ${why}`);
  }
}

const connections = new Map<string, DataConnection>();

function connection(address: string): DataConnection {
  let c = connections.get(address);
  if (!c || c.closed) {
    const fresh: DataConnection = new DataConnection(address, () => { if (connections.get(address) === fresh) connections.delete(address); });
    connections.set(address, fresh);
    c = fresh;
  }
  return c;
}

/** Closes every pooled data connection (tests, worker stop). */
export function closeKvDataConnections(): void {
  for (const c of connections.values()) c.fail('closed');
  connections.clear();
}

/** One sequence's transfer over the data channel to `dataAddress`. */
export class TcpKvPush implements KvPush {
  bytes = 0;
  rawBytes = 0;
  startedAt?: number;
  finishedAt?: number;
  private readonly conn: DataConnection;
  private done = false;

  constructor(private readonly requestId: string, dataAddress: string, private readonly onEnd: (error?: string) => void) {
    this.conn = connection(dataAddress);
    if (this.conn.pushes.has(requestId)) {
      queueMicrotask(() => this.ended(`request ${requestId} already has a KV transfer to ${dataAddress}`));
      return;
    }
    this.conn.pushes.set(requestId, this);
  }

  write(chunks: KvChunkMsg[], _final: boolean, sent?: () => void): void {
    if (this.done) return sent?.();
    this.startedAt ??= performance.now();
    kvTrace('p.main_recv', this.requestId, { messages: chunks.length, via: 'tcp' });
    const buffers: Buffer[] = [];
    let inline = false;
    for (const c of chunks) {
      this.bytes += c.data.byteLength;
      this.rawBytes += c.block_count * c.block_bytes;
      corruptForTest(c);
      const inRing = this.conn.place(c.data);
      if (inRing) {
        buffers.push(encodeHeader('chunk', { ...chunkMeta(c), s: inRing }, 0));
        continue;
      }
      inline = true;
      buffers.push(encodeHeader('chunk', chunkMeta(c), c.data.byteLength));
      if (c.data.byteLength > 0) buffers.push(Buffer.from(c.data.buffer, c.data.byteOffset, c.data.byteLength));
    }
    // Payloads copied into the ring are no longer needed here: the pooled buffers go back now.
    if (!inline) sent?.();
    this.conn.send(buffers, inline ? sent : undefined);
    kvTrace('p.written', this.requestId, { via: 'tcp' });
  }

  cancel(): void {
    if (this.done) return;
    this.conn.send([encodeHeader('cancel', { r: this.requestId }, 0)]);
    this.ended(`KV push to ${this.conn.address} failed: cancelled`);
  }

  /** The decode side acknowledged the transfer (or refused it, or the connection broke). */
  ended(error?: string): void {
    if (this.done) return;
    this.done = true;
    this.finishedAt = performance.now();
    if (this.conn.pushes.get(this.requestId) === this) this.conn.pushes.delete(this.requestId);
    kvTrace('p.ack', this.requestId, { via: 'tcp' });
    this.onEnd(error ? (error.startsWith('KV push') ? error : `KV push to ${this.conn.address} failed: ${error}`) : undefined);
  }
}
