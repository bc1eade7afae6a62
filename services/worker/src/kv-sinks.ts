// Where a prefill's KV blocks go.
//  - ThreadKvSink (engine thread): gathers blocks into `pdserve-kv/1` messages of at most
//    KV_MESSAGE_BYTES on the wire, encoded in the worker's KV wire dtype (kv/wire.ts), each block
//    with the CRC-32 of its wire bytes, and hands them to the main thread, whose GrpcKvPush streams
//    them to the decode worker (Decode.PushKv).
//  - LocalKvSink (engine thread): a unified worker's own decode batch takes the sequence as it is;
//    nothing is copied.
import { checksumBlocks, encodeKvBlocks, KV_LAYOUT, wireBlockBytes, type KvSequence, type KvWireDtype, type ModelRunner, type SampledToken } from '@pdserve/engine';
import { boundConnect, decodeClient, grpc, PEER_CONNECT_TIMEOUT_MS, KV_MESSAGE_BYTES, kvTrace, requestMetadata, type KvChunkMsg, type TokenMsg } from '@pdserve/common';
import type { DecodeRequest, KvSink } from './requests.ts';
import { ClientPool } from './client-pool.ts';
import type { SharedSlots } from './kv-buffers.ts';

export function toTokenMsg(t: SampledToken): TokenMsg {
  return { id: t.id, logprob: t.logprob ?? 0, top_logprobs: t.topLogprobs ?? [] };
}

export class ThreadKvSink implements KvSink {
  private ack?: { resolve(): void; reject(e: Error): void };
  /**
   * Set when the push ended in failure before the last chunk was handed over (the decode side
   * refused or vanished mid-prompt): later chunks are not sent, and finish() fails at once instead
   * of waiting for an acknowledgement that can no longer come.
   */
  private pushError?: Error;

  constructor(
    private readonly runner: ModelRunner,
    private readonly requestId: string,
    private readonly wireDtype: KvWireDtype,
    private readonly to: { out(chunks: KvChunkMsg[], final: boolean, slots: number[]): void; abort(): void },
    /** Buffers shared with the main thread (kv-buffers.ts); without one, or with none free, each message gets a new buffer. */
    private readonly pool?: SharedSlots,
  ) {}

  /** Reused for the gather of a message that is then encoded into a buffer of its own (fp16, bf16, int8). */
  private static scratch?: Uint8Array;

  send(seq: KvSequence, first: number, count: number, tokenCount: number): void {
    if (this.pushError) return;
    kvTrace('p.sink', this.requestId, { first, count });
    this.messages(seq, first, count, tokenCount, undefined, (m, _last, slot) => this.to.out([m], false, [slot]));
    kvTrace('p.posted', this.requestId);
  }

  finish(seq: KvSequence, first: number, count: number, firstToken: SampledToken, cachedTokens: number): Promise<void> {
    if (this.pushError) return Promise.reject(this.pushError);
    const done = new Promise<void>((resolve, reject) => { this.ack = { resolve, reject }; });
    kvTrace('p.sink', this.requestId, { first, count, final: true });
    this.messages(seq, first, count, seq.length, firstToken, (m, last, slot) => {
      if (last) m.cached_tokens = cachedTokens;
      this.to.out([m], last, [slot]);
    });
    kvTrace('p.posted', this.requestId);
    return done;
  }

  abort(): void {
    this.to.abort();
    this.ack?.reject(new Error('cancelled'));
  }

  /** The decode worker has every block (or the push failed). */
  acknowledged(error?: string): void {
    if (error) {
      this.pushError = new Error(error);
      this.ack?.reject(this.pushError);
    } else this.ack?.resolve();
  }

  /**
   * Reads the blocks now: the scheduler may free the sequence as soon as this returns. Each message
   * is handed over as soon as it is built (gathered, encoded, checksummed), so the main thread puts
   * the first on the wire while the engine thread builds the next (measured: BENCHMARKS.md, issue 9).
   */
  private messages(seq: KvSequence, first: number, count: number, tokenCount: number, firstToken: SampledToken | undefined, emit: (m: KvChunkMsg, last: boolean, slot: number) => void): void {
    const blockBytes = this.runner.blockBytes;
    const shape = this.runner.kvShape;
    const wireBytes = wireBlockBytes(shape, this.wireDtype);
    const perMessage = Math.max(1, Math.floor(KV_MESSAGE_BYTES / wireBytes));
    let b = first;
    do {
      const n = Math.min(perMessage, first + count - b);
      let data: Uint8Array;
      let slot = -1;
      if (n === 0) data = new Uint8Array(0);
      else if (this.wireDtype === 'fp32') {
        // Gathered straight into a buffer the main thread writes to the socket from.
        const taken = this.pool?.take(n * blockBytes);
        if (taken) slot = taken.slot;
        data = this.runner.readBlocks(seq, b, n, taken?.view);
      } else {
        const need = n * blockBytes;
        if (!ThreadKvSink.scratch || ThreadKvSink.scratch.byteLength < need) ThreadKvSink.scratch = new Uint8Array(need);
        data = encodeKvBlocks(this.runner.readBlocks(seq, b, n, ThreadKvSink.scratch), shape, this.wireDtype);
      }
      kvTrace('p.gathered', this.requestId, { block: b });
      const checksums = checksumBlocks(data, wireBytes);
      kvTrace('p.summed', this.requestId, { block: b });
      const last = b + n >= first + count;
      emit({
        request_id: this.requestId, first_block: b, block_count: n,
        token_count: Math.min(tokenCount, (b + n) * shape.blockTokens), data, checksums,
        done: last && firstToken !== undefined, first_token: last && firstToken ? toTokenMsg(firstToken) : null,
        block_tokens: shape.blockTokens, block_bytes: blockBytes, layout: KV_LAYOUT, wire_dtype: this.wireDtype,
      }, last, slot);
      b += n;
    } while (b < first + count);
  }
}

export class LocalKvSink implements KvSink {
  constructor(private readonly req: DecodeRequest, private readonly onReady: () => void, private readonly onProgress: () => void = () => {}) {}

  /** Nothing to copy; the decode side only hears that its KV is progressing (its KV wait restarts). */
  send(): void {
    this.onProgress();
  }

  finish(_seq: KvSequence, _first: number, _count: number, firstToken: SampledToken, cachedTokens: number): Promise<void> {
    this.req.lastToken = firstToken;
    this.req.cachedTokens = cachedTokens;
    this.req.kvDoneAt = performance.now();
    this.req.status = 'ready';
    this.onReady();
    return Promise.resolve();
  }

  abort(): void {}
}

/** Decode clients by address, closed 30 s after their last push ended. */
export const decodeClients = new ClientPool<grpc.Client>(decodeClient);

/**
 * Test hook: with PDSERVE_TEST_CORRUPT_KV_BLOCK=N a prefill worker flips one byte of block N of
 * every transfer after its checksum was taken, as a bad link would, so tests can watch the decode
 * worker refuse that block by number.
 */
const CORRUPT_BLOCK = process.env.PDSERVE_TEST_CORRUPT_KV_BLOCK === undefined ? undefined : Number(process.env.PDSERVE_TEST_CORRUPT_KV_BLOCK);
export function corruptForTest(c: KvChunkMsg): void {
  if (CORRUPT_BLOCK === undefined || CORRUPT_BLOCK < c.first_block || CORRUPT_BLOCK >= c.first_block + c.block_count) return;
  const wireBytes = c.data.byteLength / c.block_count;
  c.data[(CORRUPT_BLOCK - c.first_block) * wireBytes + Math.floor(wireBytes / 2)] ^= 0x10;
}

/** Main thread: one sequence's blocks on their way to the decode worker, by whichever transport. */
export interface KvPush {
  /**
   * Sends chunks. `sent`, when given, is called exactly once, when the chunks' data buffers are no
   * longer needed (handed to the kernel or copied, or dropped because the push ended): pooled
   * buffers (kv-buffers.ts) are reused after that.
   */
  write(chunks: KvChunkMsg[], final: boolean, sent?: () => void): void;
  cancel(): void;
  /** Bytes on the wire (encoded), and the fp32 bytes they stand for. */
  readonly bytes: number;
  readonly rawBytes: number;
  /** When the first block was handed over, and when the decode worker acknowledged the last. */
  readonly startedAt?: number;
  readonly finishedAt?: number;
}

/** Main thread: one Decode.PushKv call carrying one sequence's blocks to the decode worker. */
export class GrpcKvPush implements KvPush {
  private readonly call: grpc.ClientWritableStream<KvChunkMsg>;
  /** Chunks not yet handed to gRPC: written one at a time, waiting for 'drain' when gRPC's buffer is full. */
  private readonly queue: KvChunkMsg[] = [];
  private waitingDrain = false;
  private ending = false;
  /** Bytes on the wire (encoded), and the fp32 bytes they stand for. */
  bytes = 0;
  rawBytes = 0;
  /** When the first block went to gRPC, and when the decode worker acknowledged the last. */
  startedAt?: number;
  finishedAt?: number;

  constructor(requestId: string, address: string, onEnd: (error?: string) => void) {
    const client = decodeClients.acquire(address) as grpc.Client & { PushKv: Function };
    // A decode worker that vanished (host gone, process frozen) fails the push in seconds, not at
    // the prefill call's deadline; the prefill's KV room is then freed by the usual error path.
    let unreachable = false;
    const disarm = boundConnect(client, () => { unreachable = true; this.call.cancel(); });
    this.call = client.PushKv(requestMetadata(requestId), (err: grpc.ServiceError | null) => {
      disarm();
      this.finishedAt = performance.now();
      if (unreachable) {
        onEnd(`KV push to ${address} failed: decode worker unreachable (no connection within ${PEER_CONNECT_TIMEOUT_MS / 1000} s)`);
        this.queue.length = 0;
        decodeClients.release(address);
        return;
      }
      this.queue.length = 0;
      decodeClients.release(address);
      kvTrace('p.ack', requestId);
      onEnd(err ? `KV push to ${address} failed: ${err.details || err.message}` : undefined);
    });
  }

  write(chunks: KvChunkMsg[], final: boolean, sent?: () => void): void {
    this.startedAt ??= performance.now();
    kvTrace('p.main_recv', chunks[0]?.request_id ?? '', { messages: chunks.length });
    for (const c of chunks) {
      this.bytes += c.data.byteLength;
      this.rawBytes += c.block_count * c.block_bytes;
      corruptForTest(c);
      // grpc-js may serialize a message after write() returns: a pooled (shared) buffer is copied.
      this.queue.push(c.data.buffer instanceof SharedArrayBuffer ? { ...c, data: c.data.slice() } : c);
    }
    sent?.();
    if (final) this.ending = true;
    this.flush();
    kvTrace('p.written', chunks[0]?.request_id ?? '', { final });
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
