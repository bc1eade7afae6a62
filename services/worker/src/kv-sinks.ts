// Where a prefill's KV blocks go.
//  - ThreadKvSink (engine thread): gathers blocks into `pdserve-kv/1` messages of at most
//    KV_MESSAGE_BYTES, each block with its CRC-32, and hands them to the main thread, whose
//    GrpcKvPush streams them to the decode worker (Decode.PushKv).
//  - LocalKvSink (engine thread): a unified worker's own decode batch takes the sequence as it is;
//    nothing is copied.
import { checksumBlocks, type KvSequence, type ModelRunner, type SampledToken } from '@pdserve/engine';
import { decodeClient, grpc, KV_MESSAGE_BYTES, requestMetadata, type KvChunkMsg, type TokenMsg } from '@pdserve/common';
import type { DecodeRequest, KvSink } from './requests.ts';
import { ClientPool } from './client-pool.ts';

export function toTokenMsg(t: SampledToken): TokenMsg {
  return { id: t.id, logprob: t.logprob ?? 0, top_logprobs: t.topLogprobs ?? [] };
}

export class ThreadKvSink implements KvSink {
  private ack?: { resolve(): void; reject(e: Error): void };

  constructor(
    private readonly runner: ModelRunner,
    private readonly requestId: string,
    private readonly to: { out(chunks: KvChunkMsg[], final: boolean): void; abort(): void },
  ) {}

  send(seq: KvSequence, first: number, count: number, tokenCount: number): void {
    this.to.out(this.messages(seq, first, count, tokenCount, undefined), false);
  }

  finish(seq: KvSequence, first: number, count: number, firstToken: SampledToken): Promise<void> {
    const done = new Promise<void>((resolve, reject) => { this.ack = { resolve, reject }; });
    this.to.out(this.messages(seq, first, count, seq.length, firstToken), true);
    return done;
  }

  abort(): void {
    this.to.abort();
    this.ack?.reject(new Error('cancelled'));
  }

  /** The decode worker has every block (or the push failed). */
  acknowledged(error?: string): void {
    if (error) this.ack?.reject(new Error(error));
    else this.ack?.resolve();
  }

  /** Reads the blocks now: the scheduler may free the sequence as soon as this returns. */
  private messages(seq: KvSequence, first: number, count: number, tokenCount: number, firstToken: SampledToken | undefined): KvChunkMsg[] {
    const blockBytes = this.runner.blockBytes;
    const blockTokens = this.runner.kvShape.blockTokens;
    const perMessage = Math.max(1, Math.floor(KV_MESSAGE_BYTES / blockBytes));
    const out: KvChunkMsg[] = [];
    let b = first;
    do {
      const n = Math.min(perMessage, first + count - b);
      const data = n > 0 ? this.runner.readBlocks(seq, b, n) : new Uint8Array(0);
      const last = b + n >= first + count;
      out.push({
        request_id: this.requestId, first_block: b, block_count: n,
        token_count: Math.min(tokenCount, (b + n) * blockTokens), data, checksums: checksumBlocks(data, blockBytes),
        done: last && firstToken !== undefined, first_token: last && firstToken ? toTokenMsg(firstToken) : null,
        block_tokens: blockTokens, block_bytes: blockBytes,
      });
      b += n;
    } while (b < first + count);
    return out;
  }
}

export class LocalKvSink implements KvSink {
  constructor(private readonly req: DecodeRequest, private readonly onReady: () => void, private readonly onProgress: () => void = () => {}) {}

  /** Nothing to copy; the decode side only hears that its KV is progressing (its KV wait restarts). */
  send(): void {
    this.onProgress();
  }

  finish(_seq: KvSequence, _first: number, _count: number, firstToken: SampledToken): Promise<void> {
    this.req.lastToken = firstToken;
    this.req.kvDoneAt = performance.now();
    this.req.status = 'ready';
    this.onReady();
    return Promise.resolve();
  }

  abort(): void {}
}

/** Decode clients by address, closed 30 s after their last push ended. */
export const decodeClients = new ClientPool<grpc.Client>(decodeClient);

/** Main thread: one Decode.PushKv call carrying one sequence's blocks to the decode worker. */
export class GrpcKvPush {
  private readonly call: grpc.ClientWritableStream<KvChunkMsg>;
  /** Chunks not yet handed to gRPC: written one at a time, waiting for 'drain' when gRPC's buffer is full. */
  private readonly queue: KvChunkMsg[] = [];
  private waitingDrain = false;
  private ending = false;
  bytes = 0;
  /** When the first block went to gRPC, and when the decode worker acknowledged the last. */
  startedAt?: number;
  finishedAt?: number;

  constructor(requestId: string, address: string, onEnd: (error?: string) => void) {
    const client = decodeClients.acquire(address) as grpc.Client & { PushKv: Function };
    this.call = client.PushKv(requestMetadata(requestId), (err: grpc.ServiceError | null) => {
      this.finishedAt = performance.now();
      this.queue.length = 0;
      decodeClients.release(address);
      onEnd(err ? `KV push to ${address} failed: ${err.details || err.message}` : undefined);
    });
  }

  write(chunks: KvChunkMsg[], final: boolean): void {
    this.startedAt ??= performance.now();
    for (const c of chunks) {
      this.bytes += c.data.byteLength;
      this.queue.push(c);
    }
    if (final) this.ending = true;
    this.flush();
  }

  private flush(): void {
    while (!this.waitingDrain && this.queue.length > 0) {
      if (!this.call.write(this.queue.shift()!)) {
        this.waitingDrain = true;
        this.call.once('drain', () => { this.waitingDrain = false; this.flush(); });
      }
    }
    if (this.ending && !this.waitingDrain && this.queue.length === 0) {
      this.ending = false;
      this.call.end();
    }
  }

  cancel(): void {
    this.call.cancel();
  }
}
