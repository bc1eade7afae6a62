// The main thread's handle on the engine thread: starts it, turns its messages back into promises
// and callbacks per request, and owns the gRPC side of KV pushes (GrpcKvPush).
import { Worker } from 'node:worker_threads';
import type { SampledToken } from '@pdserve/engine';
import type { SamplingParamsMsg, WorkerLoad } from '@pdserve/common';
import type { EngineInfo, EngineThreadData, FailureKind, FromEngine, ToEngine } from './engine-protocol.ts';
import { GrpcKvPush } from './kv-sinks.ts';

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
  /** Set when the blocks went to another worker over gRPC. */
  transfer?: { bytes: number; ms: number };
}

export interface DecodeHandlers {
  tokens(tokens: SampledToken[], admitMs?: number): void;
  finished(reason: 'stop' | 'length', stopTokenId: number | undefined, generated: number): void;
  failed(err: EngineError): void;
}

interface PendingPrefill {
  resolve(r: PrefillResult): void;
  reject(e: EngineError): void;
  push?: GrpcKvPush;
}

export class EngineHost {
  load: WorkerLoad & Record<string, unknown>;
  onStep?: (s: { phase: 'prefill' | 'decode'; ms: number; tokens: number; batch: number }) => void;
  private readonly prefills = new Map<string, PendingPrefill>();
  private readonly reservations = new Map<string, { resolve(): void; reject(e: EngineError): void; handlers: DecodeHandlers }>();
  private readonly decodes = new Map<string, DecodeHandlers>();
  private stopped?: () => void;

  private constructor(private readonly worker: Worker, readonly info: EngineInfo) {
    this.load = { queue_len: 0, running: 0, waiting: 0, free_kv_blocks: 0, total_kv_blocks: 0, kv_block_tokens: info.blockTokens };
    worker.on('message', (m: FromEngine) => this.onMessage(m));
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

  private send(m: ToEngine): void {
    this.worker.postMessage(m);
  }

  get idle(): boolean {
    return this.load.queue_len === 0 && this.load.running === 0 && this.load.waiting === 0 && this.prefills.size === 0 && this.decodes.size === 0;
  }

  hasDecode(requestId: string): boolean {
    return this.decodes.has(requestId);
  }

  /** Queues a prompt; its KV goes to `decodeAddress` over gRPC, or stays here when `local`. */
  prefill(requestId: string, promptIds: number[], sampling: SamplingParamsMsg, target: { local: true } | { local: false; address: string }): Promise<PrefillResult> {
    return new Promise((resolve, reject) => {
      const pending: PendingPrefill = { resolve, reject };
      if (!target.local) {
        pending.push = new GrpcKvPush(requestId, target.address, (error) => this.send({ type: 'kvAck', requestId, error }));
      }
      this.prefills.set(requestId, pending);
      this.send({ type: 'prefill', requestId, promptIds, sampling, local: target.local });
    });
  }

  /** Holds KV room for a request whose cache will arrive; resolves once held. */
  reserve(requestId: string, promptLen: number, sampling: SamplingParamsMsg, handlers: DecodeHandlers): Promise<void> {
    return new Promise((resolve, reject) => {
      this.reservations.set(requestId, { resolve, reject, handlers });
      this.send({ type: 'reserve', requestId, promptLen, sampling });
    });
  }

  /** Hands a received KV chunk to the engine; false when no sequence here waits for it. */
  pushKv(requestId: string, chunk: import('@pdserve/common').KvChunkMsg): boolean {
    if (!this.decodes.has(requestId)) return false;
    this.send({ type: 'kv', requestId, chunk });
    return true;
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
      case 'kvOut':
        this.prefills.get(m.requestId)?.push?.write(m.chunks, m.final);
        break;
      case 'kvAbort':
        this.prefills.get(m.requestId)?.push?.cancel();
        break;
      case 'prefillDone': {
        const p = this.prefills.get(m.requestId);
        this.prefills.delete(m.requestId);
        const push = p?.push;
        p?.resolve({
          firstToken: m.firstToken, queueMs: m.queueMs, prefillMs: m.prefillMs, transferTailMs: m.transferTailMs,
          transfer: push ? { bytes: push.bytes, ms: (push.finishedAt ?? performance.now()) - (push.startedAt ?? performance.now()) } : undefined,
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
        this.decodes.set(m.requestId, r.handlers);
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
        this.decodes.get(m.requestId)?.tokens(m.tokens, m.admitMs);
        break;
      case 'finished': {
        const h = this.decodes.get(m.requestId);
        this.decodes.delete(m.requestId);
        h?.finished(m.reason, m.stopTokenId, m.generated);
        break;
      }
      case 'decodeFailed': {
        const h = this.decodes.get(m.requestId);
        this.decodes.delete(m.requestId);
        h?.failed(new EngineError(m.message, m.kind));
        break;
      }
      case 'step':
        this.onStep?.(m);
        break;
      case 'load':
        this.load = m.load;
        break;
      case 'stopped':
        this.stopped?.();
        break;
    }
  }

  /** Forgets a request the client gave up on (its engine-side state is cancelled separately). */
  forget(requestId: string): void {
    this.decodes.delete(requestId);
    this.reservations.delete(requestId);
  }
}
