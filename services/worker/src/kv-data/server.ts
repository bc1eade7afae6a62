// Decode side of the TCP KV data channel: listens on --kv-data-port (default any free port) on the
// worker's interface, parses frames (frames.ts) and hands each chunk to the same receive path as
// gRPC's PushKv (kv-receive.ts -> EngineHost.pushKv -> the engine thread's applyKv). Every buffer is
// bounded: one partial frame per connection (at most maxPayload), and a connection stops being read
// while the engine thread's backlog for a request is over KV_BACKLOG_BYTES. A malformed frame closes
// its connection and fails only the transfers that connection had in progress.
import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { createHash, timingSafeEqual } from 'node:crypto';
import { clusterSecurity, kvTrace } from '@pdserve/common';
import type { EngineHost } from '../engine-host.ts';
import { receiveKvChunk } from '../kv-receive.ts';
import { chunkFromFrame, encodeHeader, FrameReader, type Frame, type FrameTypeName } from './frames.ts';
import { VerifyingPayload } from './verify.ts';
import { PeerShmRing } from './shm-ring.ts';

export interface KvDataServer {
  /** host:port the data channel listens on. */
  port: number;
  close(): Promise<void>;
}

export interface KvDataServerOptions {
  host: string;
  port: number;
  engine: EngineHost;
  log: Logger;
  /** Largest payload one frame may carry; default max(16 MiB, 4 fp32 blocks). */
  maxPayload?: number;
  onKvFailure?(r: 'rejected'): void;
  onKvTransfer?(): void;
  /** Accept a same-host prefill worker's shared-memory ring (shm-ring.ts); default true. */
  sharedMemory?: boolean;
  /** A connection refused for a missing or wrong cluster token (counted with the gRPC refusals). */
  onAuthFailure?(reason: 'missing' | 'wrong', peer: string): void;
}

const digest = (s: string) => createHash('sha256').update(s).digest();

export async function startKvDataServer(o: KvDataServerOptions): Promise<KvDataServer> {
  const maxPayload = o.maxPayload ?? Math.max(16 * 1024 * 1024, 4 * o.engine.info.blockBytes);
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    serveConnection(socket, o, maxPayload);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => { server.off('error', reject); resolve(); });
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : o.port;
  return {
    port,
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}

/**
 * A chunk frame's payload goes into a receive-pool slot shared with the engine thread when one is
 * free, and is checked (CRC-32 per block, NaN/Inf for fp32) while it arrives. A frame whose meta does
 * not describe whole blocks gets a plain buffer and is checked in full by EngineHost.pushKv.
 */
function incomingPayload(engine: EngineHost, type: FrameTypeName, meta: unknown, payloadLen: number): VerifyingPayload | undefined {
  const m = meta as { bc?: unknown; w?: unknown } | null;
  if (type !== 'chunk' || !m || typeof m.bc !== 'number' || !Number.isInteger(m.bc) || m.bc <= 0 || payloadLen % m.bc !== 0) return undefined;
  const fp32 = m.w === 'fp32' || m.w === '';
  const taken = engine.receivePool.take(payloadLen);
  const bytes = taken?.view ?? new Uint8Array(new ArrayBuffer(payloadLen));
  return new VerifyingPayload(
    bytes, payloadLen / m.bc, fp32 && payloadLen % 4 === 0, taken ? () => engine.receivePool.give(taken.slot) : undefined, taken?.slot,
    taken ? (part) => engine.receivePool.hasNonFinite(part) : undefined,
  );
}

function serveConnection(socket: Socket, o: KvDataServerOptions, maxPayload: number): void {
  socket.setNoDelay(true);
  const reader = new FrameReader(maxPayload, { payload: (type, meta, len) => incomingPayload(o.engine, type, meta, len) });
  /** Transfers this connection carries that have not ended (acknowledged, refused or cancelled). */
  const open = new Set<string>();
  /** Requests whose transfer this connection ended: their later frames are dropped. */
  const ended = new Set<string>();
  /** Per open transfer, for the debug line gRPC's PushKv logs too ('KV received'). */
  const stats = new Map<string, { bytes: number; chunks: number; shmChunks: number; firstAt: number }>();
  let pausedFor = 0;
  let closed = false;
  // Until its hello frame, a connection is nobody's: no chunk, cancel or ack is taken from it.
  let greeted = false;
  /** The peer's shared-memory ring, when it offered one this worker could open (same host). */
  let ring: PeerShmRing | undefined;
  const token = clusterSecurity().token;
  const expected = token === undefined ? undefined : digest(token);

  const ack = (requestId: string, error?: string) => {
    open.delete(requestId);
    const st = stats.get(requestId);
    stats.delete(requestId);
    if (st && !error) o.log.debug({ request_id: requestId, kv_bytes: st.bytes, kv_chunks: st.chunks, kv_shm_chunks: st.shmChunks, kv_receive_ms: Math.round((performance.now() - st.firstAt) * 100) / 100, via: 'tcp' }, 'KV received');
    ended.add(requestId);
    if (ended.size > 4096) ended.delete(ended.values().next().value!);
    if (!closed) socket.write(encodeHeader('ack', error ? { r: requestId, e: error } : { r: requestId }, 0));
  };
  const hostile = (why: string) => {
    if (closed) return;
    closed = true;
    o.log.warn({ err: why, remote: socket.remoteAddress }, 'KV data connection closed: malformed frame');
    reader.dispose();
    ring?.close();
    for (const id of open) o.engine.failKv(id, `KV data connection broken: ${why}`);
    open.clear();
    stats.clear();
    socket.destroy();
  };
  const onFrame = (f: Frame) => {
    if (!greeted) {
      if (f.type !== 'hello') return hostile(`${f.type} frame before the hello`);
      const presented = (f.meta as { t?: unknown } | null)?.t;
      if (expected) {
        const ok = typeof presented === 'string' && timingSafeEqual(digest(presented), expected);
        if (!ok) {
          o.onAuthFailure?.(typeof presented === 'string' ? 'wrong' : 'missing', socket.remoteAddress ?? '');
          return hostile(typeof presented === 'string' ? 'wrong cluster token' : 'no cluster token');
        }
      }
      greeted = true;
      const offer = (f.meta as { shm?: unknown } | null)?.shm;
      if (offer !== undefined) {
        // Only a hello that offers a ring is answered (an older prefill worker knows no welcome).
        const opened = o.sharedMemory === false ? 'shared memory is off on this worker (--kv-shm-mib 0)' : PeerShmRing.open(offer);
        if (typeof opened === 'string') o.log.debug({ reason: opened, remote: socket.remoteAddress }, 'KV data connection: payloads inline');
        else ring = opened;
        socket.write(encodeHeader('welcome', typeof opened === 'string' ? { shm: false, e: opened } : { shm: true }, 0));
      }
      return;
    }
    if (f.type === 'hello') return hostile('a second hello frame');
    const requestId = (f.meta as { r?: unknown } | null)?.r;
    if (typeof requestId !== 'string') return hostile(`${f.type} frame without a request id`);
    if (f.type === 'cancel') {
      open.delete(requestId);
      stats.delete(requestId);
      ended.add(requestId);
      return;
    }
    if (f.type !== 'chunk') return hostile(`unexpected ${f.type} frame`);
    if (ended.has(requestId)) return;
    const chunk = chunkFromFrame(f.meta, f.payload);
    if (typeof chunk === 'string') return hostile(chunk);
    open.add(requestId);
    // From here the payload's buffer is pushKv's (it goes to the engine thread or back to the pool).
    const v = f.incoming as VerifyingPayload | undefined;
    f.incoming = undefined;
    const fp32 = chunk.wire_dtype === 'fp32' || chunk.wire_dtype === '';
    const outcome = receiveKvChunk(o.engine, chunk, o.onKvFailure, v?.complete ? { crcs: v.crcs, firstNonFinite: fp32 && v.checkedFinite ? v.firstNonFinite : undefined, slot: v.slot } : { slot: v?.slot });
    if (!outcome.ok) return ack(requestId, outcome.message);
    const st = stats.get(requestId) ?? { bytes: 0, chunks: 0, shmChunks: 0, firstAt: performance.now() };
    st.bytes += f.payload.byteLength;
    st.chunks++;
    if ((f.meta as { s?: unknown }).s !== undefined) st.shmChunks++;
    stats.set(requestId, st);
    kvTrace('d.data', requestId, { bytes: f.payload.byteLength, done: chunk.done, via: 'tcp' });
    if (chunk.done) ack(requestId);
    if (outcome.drained) {
      // The engine has not written this request's earlier chunks yet: stop reading (TCP's window
      // then holds the sender) until it has.
      pausedFor++;
      socket.pause();
      void outcome.drained.then(() => { if (--pausedFor === 0 && !closed) socket.resume(); });
    }
  };
  /**
   * A chunk frame whose payload is in the peer's ring: copies it out into a receive-pool slot and
   * verifies it there, as an inline payload is verified while it arrives. Returns why not, if the
   * reference `s` (the meta's) is bad (the connection is then closed).
   */
  const fromRing = (f: Frame, s: unknown): string | undefined => {
    if (!ring) return 'chunk by reference without a shared-memory ring';
    if (!Array.isArray(s) || s.length !== 2 || !s.every((x) => Number.isInteger(x) && x >= 0) || s[1] === 0 || s[1] > maxPayload) return 'malformed shared-memory reference';
    const [offset, len] = s as [number, number];
    const incoming = incomingPayload(o.engine, 'chunk', f.meta, len);
    const bytes = incoming?.bytes ?? new Uint8Array(new ArrayBuffer(len));
    if (!ring.read(offset, bytes)) {
      incoming?.release();
      return `shared-memory region [${offset}, +${len}) out of range or unreadable`;
    }
    incoming?.progress(len);
    f.payload = bytes;
    f.incoming = incoming;
    return undefined;
  };
  socket.on('data', (data: Buffer) => {
    if (closed) return;
    let frames: Frame[];
    try {
      frames = reader.push(data);
    } catch (err) {
      return hostile((err as Error).message);
    }
    let freed = 0;
    for (const f of frames) {
      if (closed) break;
      const ref = f.type === 'chunk' ? (f.meta as { s?: unknown } | null)?.s : undefined;
      if (ref !== undefined) {
        const bad = fromRing(f, ref);
        if (bad) return hostile(bad);
        // Its bytes are out of the ring (or the frame is about to be dropped): the region is free.
        freed++;
      }
      onFrame(f);
      // A frame not handed to the engine (dropped, refused before pushKv) gives its buffer back.
      f.incoming?.release?.();
    }
    if (freed > 0 && !closed) socket.write(encodeHeader('freed', { n: freed }, 0));
  });
  const broken = () => {
    if (closed) return;
    closed = true;
    reader.dispose();
    ring?.close();
    // The prefill side went away mid-transfer: the decode side cannot get the rest.
    for (const id of open) o.engine.failKv(id, 'KV data connection closed mid-transfer');
    open.clear();
    stats.clear();
  };
  socket.on('error', broken);
  socket.on('close', broken);
}
