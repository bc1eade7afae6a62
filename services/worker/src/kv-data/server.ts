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
  return new VerifyingPayload(bytes, payloadLen / m.bc, fp32 && payloadLen % 4 === 0, taken ? () => engine.receivePool.give(taken.slot) : undefined, taken?.slot);
}

function serveConnection(socket: Socket, o: KvDataServerOptions, maxPayload: number): void {
  socket.setNoDelay(true);
  const reader = new FrameReader(maxPayload, { payload: (type, meta, len) => incomingPayload(o.engine, type, meta, len) });
  /** Transfers this connection carries that have not ended (acknowledged, refused or cancelled). */
  const open = new Set<string>();
  /** Requests whose transfer this connection ended: their later frames are dropped. */
  const ended = new Set<string>();
  /** Per open transfer, for the debug line gRPC's PushKv logs too ('KV received'). */
  const stats = new Map<string, { bytes: number; chunks: number; firstAt: number }>();
  let pausedFor = 0;
  let closed = false;
  // Until its hello frame, a connection is nobody's: no chunk, cancel or ack is taken from it.
  let greeted = false;
  const token = clusterSecurity().token;
  const expected = token === undefined ? undefined : digest(token);

  const ack = (requestId: string, error?: string) => {
    open.delete(requestId);
    const st = stats.get(requestId);
    stats.delete(requestId);
    if (st && !error) o.log.debug({ request_id: requestId, kv_bytes: st.bytes, kv_chunks: st.chunks, kv_receive_ms: Math.round((performance.now() - st.firstAt) * 100) / 100, via: 'tcp' }, 'KV received');
    ended.add(requestId);
    if (ended.size > 4096) ended.delete(ended.values().next().value!);
    if (!closed) socket.write(encodeHeader('ack', error ? { r: requestId, e: error } : { r: requestId }, 0));
  };
  const hostile = (why: string) => {
    if (closed) return;
    closed = true;
    o.log.warn({ err: why, remote: socket.remoteAddress }, 'KV data connection closed: malformed frame');
    reader.dispose();
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
    const st = stats.get(requestId) ?? { bytes: 0, chunks: 0, firstAt: performance.now() };
    st.bytes += f.payload.byteLength;
    st.chunks++;
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
  socket.on('data', (data: Buffer) => {
    if (closed) return;
    let frames: Frame[];
    try {
      frames = reader.push(data);
    } catch (err) {
      return hostile((err as Error).message);
    }
    for (const f of frames) {
      if (!closed) onFrame(f);
      // A frame not handed to the engine (dropped, refused before pushKv) gives its buffer back.
      f.incoming?.release?.();
    }
  });
  const broken = () => {
    if (closed) return;
    closed = true;
    reader.dispose();
    // The prefill side went away mid-transfer: the decode side cannot get the rest.
    for (const id of open) o.engine.failKv(id, 'KV data connection closed mid-transfer');
    open.clear();
    stats.clear();
  };
  socket.on('error', broken);
  socket.on('close', broken);
}
