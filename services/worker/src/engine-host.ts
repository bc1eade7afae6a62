// The main thread's handle on the engine thread: starts it, turns its messages back into promises
// and callbacks per request, and owns the gRPC side of KV pushes (GrpcKvPush).
import { Worker } from 'node:worker_threads';
import { checksumBlocks, firstNonFinite, KV_WIRE_DTYPES, wireBlockBytes, type KvWireDtype, type SampledToken } from '@pdserve/engine';
import { KV_MESSAGE_BYTES, type KvChunkMsg, type SamplingParamsMsg, type WorkerLoad } from '@pdserve/common';
import type { EngineInfo, EngineThreadData, FailureKind, FromEngine, ToEngine } from './engine-protocol.ts';
import type { KvPush } from './kv-sinks.ts';
import { createKvPush, type KvTransport } from './kv-transport.ts';
import { kvChunkProblem, type KvReceiveState } from './validate.ts';
import { SharedSlots } from './kv-buffers.ts';

/**
 * What a transport already knows about a received chunk's payload. `crcs`: the CRC-32 of each
 * block, computed as the bytes arrived; `firstNonFinite`: the index of its first NaN/Inf float or
 * -1 (fp32 payloads only); `slot`: the payload is a view of that receive-pool slot (pushKv then
 * owns it: it goes to the engine thread with the chunk, or back to the pool).
 */
export interface ReceivedPayload {
  crcs?: number[];
  firstNonFinite?: number;
  slot?: number;
}

/**
 * Received KV bytes handed to the engine thread and not yet written into the cache, per request,
 * before the PushKv stream is paused (HTTP/2 flow control then holds the sender back). 8 MiB: eight
 * of today's 1 MiB messages, so the bound does not throttle the pipelining smaller messages allow.
 */
export const KV_BACKLOG_BYTES = 8 * KV_MESSAGE_BYTES;

// A received payload is a view into the buffer gRPC assembled its message in, which holds that one
// message and nothing else once it is this large (Node pools only Buffers under 4 KiB): hand the
// buffer over to the engine thread instead of copying it there.
const TRANSFER_MIN_BYTES = 64 * 1024;
function ownedBuffer(data: Uint8Array): ArrayBuffer[] {
  const buf = data.buffer;
  if (!(buf instanceof ArrayBuffer) || data.byteLength < TRANSFER_MIN_BYTES || buf.byteLength > data.byteLength + 4096) return [];
  return [buf];
}

export class EngineError extends Error {
  constructor(message: string, readonly kind: FailureKind) {
    super(message);
  }
}

export interface PrefillResult {
  firstToken: SampledToken;
  queueMs: number;
  prefillMs: number;
  transferTailMs: number;
  /** Leading prompt tokens served by the prefix cache (not computed). */
  cachedTokens: number;
  /** Set when the blocks went to another worker over gRPC. */
  transfer?: { bytes: number; rawBytes: number; ms: number };
}

export interface DecodeHandlers {
  /** `admitMs` and `cachedTokens` come with the first token only. */
  tokens(tokens: SampledToken[], admitMs?: number, cachedTokens?: number): void;
  finished(reason: 'stop' | 'length', stopTokenId: number | undefined, generated: number): void;
  failed(err: EngineError): void;
  /** A KV chunk for this request arrived (the KV wait restarts). */
  kvProgress?(): void;
}

/** A decode request the engine thread holds: its stream handlers and its KV receive state. */
interface DecodeEntry {
  handlers: DecodeHandlers;
  kv: KvReceiveState;
  /** KV bytes posted to the engine thread and not yet applied there. */
  kvBacklog: number;
  /** PushKv streams paused on the backlog, resumed as the engine applies it. */
  kvWaiters: Array<() => void>;
}

export type KvPushOutcome =
  | { ok: true; drained?: Promise<void> }
  | { ok: false; kind: 'not_found' | 'invalid' | 'precondition' | 'checksum'; message: string };

interface PendingPrefill {
  resolve(r: PrefillResult): void;
  reject(e: EngineError): void;
  push?: KvPush;
}

export class EngineHost {
  load: WorkerLoad & Record<string, unknown>;
  onStep?: (s: { phase: 'prefill' | 'decode'; ms: number; tokens: number; batch: number }) => void;
  onPrefixEvents?: (e: Extract<FromEngine, { type: 'prefixEvents' }>) => void;
  private readonly prefills = new Map<string, PendingPrefill>();
  private readonly reservations = new Map<string, { resolve(): void; reject(e: EngineError): void; handlers: DecodeHandlers; promptLen: number }>();
  private readonly decodes = new Map<string, DecodeEntry>();
  private stopped?: () => void;
  /** performance.now() of the last message from the engine thread (it reports its load every 200 ms). */
  lastProgressAt = performance.now();

  /** Bytes of one block on the wire per dtype, for checking received chunks. */
  private readonly wireBlockBytes: Record<KvWireDtype, number>;
  /** How this worker's prefills push KV to decode peers (kv-transport.ts); set by the worker. */
  kvTransport: KvTransport = 'tcp';
  /** KV message buffers shared with the engine thread (kv-buffers.ts). */
  readonly sendPool: SharedSlots;
  readonly receivePool: SharedSlots;

  private constructor(private readonly worker: Worker, readonly info: EngineInfo) {
    this.sendPool = new SharedSlots(info.kvPools.send);
    this.receivePool = new SharedSlots(info.kvPools.receive);
    this.wireBlockBytes = Object.fromEntries(KV_WIRE_DTYPES.map((d) => [d, wireBlockBytes(info.kvShape, d)])) as Record<KvWireDtype, number>;
    this.load = { queue_len: 0, running: 0, waiting: 0, free_kv_blocks: 0, total_kv_blocks: 0, kv_block_tokens: info.blockTokens };
    worker.on('message', (m: FromEngine) => { this.lastProgressAt = performance.now(); this.onMessage(m); });
    // A dead engine thread leaves a worker that can only lie about its health: fail loudly and exit
    // so `pdserve up` (or the container runtime) sees it.
    worker.on('error', (err) => {
      process.stderr.write(`pdserve worker: engine thread failed: ${err.stack ?? err.message}\n`);
      process.exit(70);
    });
  }

  static start(data: EngineThreadData): Promise<EngineHost> {
    const worker = new Worker(new URL('./engine-thread-boot.mjs', import.meta.url), { workerData: data });
    return new Promise((resolve, reject) => {
      const onMessage = (m: FromEngine) => {
        if (m.type === 'ready') {
          worker.off('message', onMessage);
          resolve(new EngineHost(worker, m.info));
        } else if (m.type === 'loadFailed') {
          void worker.terminate();
          reject(new Error(m.message));
        }
      };
      worker.on('message', onMessage);
      worker.once('error', reject);
    });
  }

  private send(m: ToEngine, transfer: ArrayBuffer[] = []): void {
    this.worker.postMessage(m, transfer);
  }

  get idle(): boolean {
    return this.load.queue_len === 0 && this.load.running === 0 && this.load.waiting === 0 && this.prefills.size === 0 && this.decodes.size === 0;
  }

  /** Prefills this worker has taken and not yet answered. */
  get heldPrefills(): number {
    return this.prefills.size;
  }

  /** Decodes (running or reserved) this worker has taken and not yet finished. */
  get heldDecodes(): number {
    return this.decodes.size + this.reservations.size;
  }

  hasDecode(requestId: string): boolean {
    return this.decodes.has(requestId);
  }

  /** Work the engine thread owes an answer for (the watchdog only judges a busy engine). */
  get busy(): boolean {
    return this.prefills.size > 0 || this.reservations.size > 0 || this.decodes.size > 0;
  }

  /** True while this id has a prefill here, or a decode side (reserved or waiting for room). */
  hasPrefill(requestId: string): boolean {
    return this.prefills.has(requestId);
  }

  hasDecodeOrReservation(requestId: string): boolean {
    return this.decodes.has(requestId) || this.reservations.has(requestId);
  }

  /** Queues a prompt; its KV goes to `decodeAddress` over gRPC, or stays here when `local`. */
  prefill(requestId: string, promptIds: number[], sampling: SamplingParamsMsg, target: { local: true } | { local: false; address: string }): Promise<PrefillResult> {
    return new Promise((resolve, reject) => {
      // Two prefills under one id would share every map entry: refuse the second.
      if (this.prefills.has(requestId)) return reject(new EngineError(`request ${requestId} is already being prefilled here`, 'exists'));
      const pending: PendingPrefill = { resolve, reject };
      if (!target.local) {
        pending.push = createKvPush(this.kvTransport, requestId, target.address, (error) => this.send({ type: 'kvAck', requestId, error }));
      }
      this.prefills.set(requestId, pending);
      this.send({ type: 'prefill', requestId, promptIds, sampling, local: target.local });
    });
  }

  /** Holds KV room for a request whose cache will arrive; resolves once held. */
  reserve(requestId: string, promptLen: number, sampling: SamplingParamsMsg, handlers: DecodeHandlers, promptIds?: number[]): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.hasDecodeOrReservation(requestId)) return reject(new EngineError(`request ${requestId} is already decoding here`, 'exists'));
      this.reservations.set(requestId, { resolve, reject, handlers, promptLen });
      this.send({ type: 'reserve', requestId, promptLen, sampling, ...(promptIds?.length ? { promptIds } : {}) });
    });
  }

  /**
   * Hands a received KV chunk to the engine after checking it against the request's transfer so
   * far (order, range, done). A refused chunk fails that request only. `drained`, when set, resolves
   * once the engine has worked off the request's backlog: the caller pauses its stream until then.
   */
  pushKv(requestId: string, chunk: KvChunkMsg, received: ReceivedPayload = {}): KvPushOutcome {
    const d = this.decodes.get(requestId);
    const refuse = (kind: 'invalid' | 'precondition' | 'checksum', message: string): KvPushOutcome => {
      if (received.slot !== undefined) this.receivePool.give(received.slot);
      // The request fails here and now (its Generate stream ends with the reason); its slot is
      // freed on the engine thread.
      this.cancelDecode(requestId);
      this.dropDecode(requestId)?.handlers.failed(new EngineError(message, kind));
      return { ok: false, kind, message };
    };
    if (!d) {
      if (received.slot !== undefined) this.receivePool.give(received.slot);
      return { ok: false, kind: 'not_found', message: `no sequence ${requestId} is waiting for KV here` };
    }
    const problem = kvChunkProblem(d.kv, chunk, this.info.vocabSize);
    if (problem) return refuse(/first_token/.test(problem) ? 'invalid' : 'precondition', problem);
    // Every block's CRC-32 and (fp32) every float, here, before the engine thread sees the chunk:
    // a corrupted block is refused by number and nothing of it reaches the arena. The TCP data
    // channel computed both as the bytes arrived; gRPC's payloads are checked now.
    const dtype = (chunk.wire_dtype || 'fp32') as KvWireDtype;
    const perBlock = this.wireBlockBytes[dtype];
    if (chunk.checksums.length !== chunk.block_count) return refuse('precondition', `KV chunk of ${chunk.block_count} blocks carries ${chunk.checksums.length} checksums`);
    const crcs = received.crcs?.length === chunk.block_count ? received.crcs : checksumBlocks(chunk.data, perBlock);
    for (let i = 0; i < chunk.block_count; i++) {
      if (crcs[i] !== chunk.checksums[i]) {
        return refuse('checksum', `KV block ${chunk.first_block + i} failed its checksum (expected ${(chunk.checksums[i] ?? 0).toString(16)}, got ${crcs[i].toString(16)})`);
      }
    }
    let finite = false;
    if (dtype === 'fp32' && chunk.block_count > 0) {
      const bad = received.firstNonFinite ?? firstNonFinite(chunk.data);
      if (bad >= 0) return refuse('invalid', `KV block ${chunk.first_block + Math.floor((bad * 4) / perBlock)} holds a NaN or infinite value; refused`);
      finite = true;
    }
    d.kv.nextBlock += chunk.block_count;
    d.kv.wireDtype = chunk.wire_dtype || 'fp32';
    d.kv.done = chunk.done;
    d.kvBacklog += chunk.data.byteLength;
    d.handlers.kvProgress?.();
    this.send({ type: 'kv', requestId, chunk, verified: true, finite, slot: received.slot }, received.slot === undefined ? ownedBuffer(chunk.data) : []);
    if (d.kvBacklog <= KV_BACKLOG_BYTES) return { ok: true };
    return { ok: true, drained: new Promise((resolve) => d.kvWaiters.push(resolve)) };
  }

  /** Fails a decode whose KV transfer broke (its data connection was closed); its slot is freed. */
  failKv(requestId: string, message: string): void {
    if (!this.decodes.has(requestId)) return;
    this.cancelDecode(requestId);
    this.dropDecode(requestId)?.handlers.failed(new EngineError(message, 'precondition'));
  }

  /** Stops (paused) or resumes decode steps of a request whose client is not reading. */
  pauseDecode(requestId: string, paused: boolean): void {
    this.send({ type: 'pause', requestId, paused });
  }

  private dropDecode(requestId: string): DecodeEntry | undefined {
    const d = this.decodes.get(requestId);
    this.decodes.delete(requestId);
    for (const w of d?.kvWaiters.splice(0) ?? []) w();
    return d;
  }

  cancelPrefill(requestId: string): void {
    this.send({ type: 'cancel', requestId, scope: 'prefill' });
  }

  cancelDecode(requestId: string): void {
    this.send({ type: 'cancel', requestId, scope: 'decode' });
  }

  stop(): Promise<void> {
    return new Promise((resolve) => {
      this.stopped = () => { void this.worker.terminate().then(() => resolve()); };
      this.send({ type: 'stop' });
    });
  }

  private onMessage(m: FromEngine): void {
    switch (m.type) {
      case 'kvOut': {
        const slots = m.slots.filter((s) => s >= 0);
        let given = false;
        // The pooled buffers go back once the push is done with them (sent, copied or dropped).
        const sent = () => { if (given) return; given = true; for (const s of slots) this.sendPool.give(s); };
        const push = this.prefills.get(m.requestId)?.push;
        if (push) push.write(m.chunks, m.final, slots.length > 0 ? sent : undefined);
        else sent();
        break;
      }
      case 'kvAbort':
        this.prefills.get(m.requestId)?.push?.cancel();
        break;
      case 'prefillDone': {
        const p = this.prefills.get(m.requestId);
        this.prefills.delete(m.requestId);
        const push = p?.push;
        p?.resolve({
          firstToken: m.firstToken, queueMs: m.queueMs, prefillMs: m.prefillMs, transferTailMs: m.transferTailMs, cachedTokens: m.cachedTokens,
          transfer: push ? { bytes: push.bytes, rawBytes: push.rawBytes, ms: (push.finishedAt ?? performance.now()) - (push.startedAt ?? performance.now()) } : undefined,
        });
        break;
      }
      case 'prefillFailed': {
        const p = this.prefills.get(m.requestId);
        this.prefills.delete(m.requestId);
        p?.push?.cancel();
        p?.reject(new EngineError(m.message, m.kind));
        break;
      }
      case 'reserved': {
        const r = this.reservations.get(m.requestId);
        this.reservations.delete(m.requestId);
        if (!r) break;
        this.decodes.set(m.requestId, {
          handlers: r.handlers, kvBacklog: 0, kvWaiters: [],
          kv: { promptLen: r.promptLen, blockTokens: this.info.blockTokens, blockBytes: this.info.blockBytes, wireBlockBytes: this.wireBlockBytes, nextBlock: 0, done: false },
        });
        r.resolve();
        break;
      }
      case 'reserveFailed': {
        const r = this.reservations.get(m.requestId);
        this.reservations.delete(m.requestId);
        r?.reject(new EngineError(m.message, m.kind));
        break;
      }
      case 'tokens':
        this.decodes.get(m.requestId)?.handlers.tokens(m.tokens, m.admitMs, m.cachedTokens);
        break;
      case 'kvApplied': {
        const d = this.decodes.get(m.requestId);
        if (!d) break;
        d.kvBacklog -= m.bytes;
        if (d.kvBacklog <= KV_BACKLOG_BYTES) for (const w of d.kvWaiters.splice(0)) w();
        break;
      }
      case 'kvProgress':
        this.decodes.get(m.requestId)?.handlers.kvProgress?.();
        break;
      case 'finished':
        this.dropDecode(m.requestId)?.handlers.finished(m.reason, m.stopTokenId, m.generated);
        break;
      case 'decodeFailed':
        this.dropDecode(m.requestId)?.handlers.failed(new EngineError(m.message, m.kind));
        break;
      case 'step':
        this.onStep?.(m);
        break;
      case 'load':
        this.load = m.load;
        break;
      case 'prefixEvents':
        this.onPrefixEvents?.(m);
        break;
      case 'stopped':
        this.stopped?.();
        break;
    }
  }

  /** Forgets a request the client gave up on (its engine-side state is cancelled separately). */
  forget(requestId: string): void {
    this.dropDecode(requestId);
    this.reservations.delete(requestId);
  }
}
