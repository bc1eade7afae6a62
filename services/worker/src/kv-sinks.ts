// Where a prefill's KV blocks go. RemoteKvSink streams them to a decode worker over gRPC, cut into
// messages of at most KV_MESSAGE_BYTES, each block with its CRC-32; LocalKvSink hands the sequence
// to this worker's own decode batch (a unified worker prefills in place: nothing to copy).
import { checksumBlocks, type KvSequence, type ModelRunner, type SampledToken } from '@pdserve/engine';
import { decodeClient, grpc, KV_MESSAGE_BYTES, requestMetadata, type KvChunkMsg, type TokenMsg } from '@pdserve/common';
import type { DecodeRequest, KvSink } from './requests.ts';

const clients = new Map<string, grpc.Client>();
function clientFor(address: string): grpc.Client {
  let c = clients.get(address);
  if (!c) {
    c = decodeClient(address);
    clients.set(address, c);
  }
  return c;
}

export function toTokenMsg(t: SampledToken): TokenMsg {
  return { id: t.id, logprob: t.logprob ?? 0, top_logprobs: t.topLogprobs ?? [] };
}

export interface TransferStats {
  bytes: number;
  /** When the first block was handed to gRPC (transfer time runs from here, not from the request). */
  startedAt?: number;
  /** When the decode worker acknowledged the last block. */
  finishedAt?: number;
  /** Milliseconds spent gathering, checksumming and queueing blocks (on the scheduler's thread). */
  prepareMs: number;
}

export class RemoteKvSink implements KvSink {
  private readonly call: grpc.ClientWritableStream<KvChunkMsg>;
  private readonly result: Promise<void>;
  readonly stats: TransferStats = { bytes: 0, prepareMs: 0 };

  constructor(private readonly runner: ModelRunner, private readonly requestId: string, address: string) {
    let settle!: { resolve(): void; reject(e: Error): void };
    this.result = new Promise<void>((resolve, reject) => { settle = { resolve, reject }; });
    this.result.catch(() => {}); // observed through finish()
    const client = clientFor(address) as grpc.Client & { PushKv: Function };
    this.call = client.PushKv(requestMetadata(requestId), (err: grpc.ServiceError | null) => {
      this.stats.finishedAt = performance.now();
      if (err) settle.reject(new Error(`KV push to ${address} failed: ${err.details || err.message}`));
      else settle.resolve();
    });
  }

  send(seq: KvSequence, first: number, count: number, tokenCount: number): void {
    this.write(seq, first, count, tokenCount, undefined);
  }

  finish(seq: KvSequence, first: number, count: number, firstToken: SampledToken): Promise<void> {
    this.write(seq, first, count, seq.length, firstToken);
    this.call.end();
    return this.result;
  }

  abort(): void {
    this.call.cancel();
  }

  /** Reads the blocks now (the caller may free the sequence right after) and queues the messages. */
  private write(seq: KvSequence, first: number, count: number, tokenCount: number, firstToken: SampledToken | undefined): void {
    const t0 = performance.now();
    const blockBytes = this.runner.blockBytes;
    const blockTokens = this.runner.kvShape.blockTokens;
    const perMessage = Math.max(1, Math.floor(KV_MESSAGE_BYTES / blockBytes));
    let b = first;
    do {
      const n = Math.min(perMessage, first + count - b);
      const data = n > 0 ? this.runner.readBlocks(seq, b, n) : new Uint8Array(0);
      const last = b + n >= first + count;
      const msg: KvChunkMsg = {
        request_id: this.requestId, first_block: b, block_count: n,
        token_count: Math.min(tokenCount, (b + n) * blockTokens), data, checksums: checksumBlocks(data, blockBytes),
        done: last && firstToken !== undefined, first_token: last && firstToken ? toTokenMsg(firstToken) : null,
        block_tokens: blockTokens, block_bytes: blockBytes,
      };
      this.stats.bytes += data.byteLength;
      this.stats.startedAt ??= performance.now();
      this.call.write(msg);
      b += n;
    } while (b < first + count);
    this.stats.prepareMs += performance.now() - t0;
  }
}

export class LocalKvSink implements KvSink {
  constructor(private readonly req: DecodeRequest, private readonly onReady: () => void) {}

  send(): void {}

  finish(_seq: KvSequence, _first: number, _count: number, firstToken: SampledToken): Promise<void> {
    this.req.lastToken = firstToken;
    this.req.kvDoneAt = performance.now();
    this.req.status = 'ready';
    this.onReady();
    return Promise.resolve();
  }

  abort(): void {}
}
