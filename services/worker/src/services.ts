// gRPC handlers of a worker: Prefill (queue a prompt, push its KV to the chosen decode worker) and
// Decode (reserve KV room, take the cache in, stream tokens back). Both talk to the one Scheduler.
import { PromptTooLongError, type SampledToken } from '@pdserve/engine';
import {
  grpc, type GenerateEventMsg, type GenerateRequestMsg, type KvChunkMsg, type PrefillRequestMsg, type PrefillResponseMsg,
} from '@pdserve/common';
import type { Logger } from 'pino';
import { LocalKvSink, RemoteKvSink, toTokenMsg } from './kv-sinks.ts';
import type { DecodeRequest, PrefillJob } from './requests.ts';
import { QueueFullError, samplerFor, type Scheduler } from './scheduler.ts';

export interface ServiceContext {
  scheduler: Scheduler;
  log: Logger;
  /** This worker's advertised gRPC address: a prefill whose decode_address is this stays local. */
  selfAddress: string;
  canPrefill: boolean;
  canDecode: boolean;
  isDraining(): boolean;
  workerId: string;
  role: string;
  onKvTransfer?(t: { seconds: number; bytes: number }): void;
  onKvFailure?(reason: 'checksum' | 'timeout' | 'peer_lost' | 'rejected'): void;
}

const round = (ms: number) => Math.round(ms * 100) / 100;

function status(code: grpc.status, details: string): Partial<grpc.StatusObject> {
  return { code, details };
}

function errorStatus(err: Error): Partial<grpc.StatusObject> {
  if (err instanceof QueueFullError) return status(grpc.status.RESOURCE_EXHAUSTED, err.message);
  if (err instanceof PromptTooLongError) return status(grpc.status.INVALID_ARGUMENT, err.message);
  if (err.message === 'cancelled') return status(grpc.status.CANCELLED, 'cancelled');
  if (/checksum/.test(err.message)) return status(grpc.status.DATA_LOSS, err.message);
  return status(grpc.status.INTERNAL, err.message);
}

function requestIdOf(call: { metadata: grpc.Metadata }, fallback: string): string {
  return String(call.metadata.get('x-request-id')[0] ?? fallback);
}

export function prefillHandlers(ctx: ServiceContext): grpc.UntypedServiceImplementation {
  return {
    Prefill(call: grpc.ServerUnaryCall<PrefillRequestMsg, PrefillResponseMsg>, callback: grpc.sendUnaryData<PrefillResponseMsg>) {
      const req = call.request;
      const log = ctx.log.child({ request_id: requestIdOf(call, req.request_id) });
      if (!ctx.canPrefill || ctx.isDraining()) return callback(status(grpc.status.UNAVAILABLE, `worker ${ctx.workerId} takes no prefill work`));
      if (req.prompt_ids.length === 0) return callback(status(grpc.status.INVALID_ARGUMENT, 'empty prompt'));
      const local = req.decode_address === ctx.selfAddress ? ctx.scheduler.decodes.get(req.request_id) : undefined;
      let remote: RemoteKvSink | undefined;
      const sink = local
        ? new LocalKvSink(local, () => ctx.scheduler.notify())
        : (remote = new RemoteKvSink(ctx.scheduler.engine.runner, req.request_id, req.decode_address));
      const job: PrefillJob = {
        requestId: req.request_id, promptIds: req.prompt_ids, sampling: req.sampling, sink,
        enqueuedAt: performance.now(), computeMs: 0, sentBlocks: 0, cancelled: false,
        done: (r) => {
          if (remote) ctx.onKvTransfer?.({ seconds: ((remote.stats.finishedAt ?? performance.now()) - (remote.stats.startedAt ?? performance.now())) / 1000, bytes: remote.stats.bytes });
          log.info({ prompt_tokens: req.prompt_ids.length, queue_ms: round(r.queueMs), prefill_ms: round(r.prefillMs), transfer_tail_ms: round(r.transferTailMs), kv_bytes: remote?.stats.bytes ?? 0, kv_prepare_ms: round(remote?.stats.prepareMs ?? 0), kv_transfer_ms: remote ? round((remote.stats.finishedAt ?? 0) - (remote.stats.startedAt ?? 0)) : 0, decode: req.decode_address }, 'prefill done');
          callback(null, {
            first_token: toTokenMsg(r.firstToken), queue_ms: r.queueMs, prefill_ms: r.prefillMs,
            transfer_tail_ms: r.transferTailMs, kv_bytes: remote?.stats.bytes ?? 0,
          });
        },
        fail: (err) => {
          if (remote && err.message !== 'cancelled') ctx.onKvFailure?.('peer_lost');
          log.warn({ err: err.message }, 'prefill failed');
          callback(errorStatus(err));
        },
      };
      call.on('cancelled', () => ctx.scheduler.cancelPrefill(req.request_id));
      try {
        ctx.scheduler.enqueuePrefill(job);
      } catch (err) {
        sink.abort();
        callback(errorStatus(err as Error));
      }
    },
    Cancel(call: grpc.ServerUnaryCall<{ request_id: string }, { found: boolean }>, callback: grpc.sendUnaryData<{ found: boolean }>) {
      callback(null, { found: ctx.scheduler.cancelPrefill(call.request.request_id) });
    },
    Health: healthHandler(ctx),
  };
}

export function decodeHandlers(ctx: ServiceContext): grpc.UntypedServiceImplementation {
  return {
    Generate(call: grpc.ServerWritableStream<GenerateRequestMsg, GenerateEventMsg>) {
      const r = call.request;
      const log = ctx.log.child({ request_id: requestIdOf(call, r.request_id) });
      if (!ctx.canDecode || ctx.isDraining()) {
        call.emit('error', status(grpc.status.UNAVAILABLE, `worker ${ctx.workerId} takes no decode work`));
        return;
      }
      let ended = false;
      let kvTimer: NodeJS.Timeout | undefined;
      const end = (err?: Error) => {
        if (ended) return;
        ended = true;
        clearTimeout(kvTimer);
        if (err) call.emit('error', errorStatus(err));
        else call.end();
      };
      call.on('cancelled', () => {
        ended = true;
        clearTimeout(kvTimer);
        if (!ctx.scheduler.cancelDecode(r.request_id)) ctx.scheduler.cancelReservation(r.request_id);
      });
      try {
        ctx.scheduler.engine.checkLength(r.prompt_len, 1);
      } catch (err) {
        return end(err as Error);
      }
      ctx.scheduler.reserve(r.request_id).then(
        (seq) => {
          if (ended) {
            ctx.scheduler.addDecode(cancelledRequest(seq, r));
            return;
          }
          const sampler = samplerFor(r.sampling);
          sampler.skip(1); // the prefill worker drew the first token from the same stream
          const req: DecodeRequest = {
            requestId: r.request_id, seq, sampling: r.sampling, sampler, promptLen: r.prompt_len,
            status: 'waiting_kv', pendingKv: [], generated: 0, cancelled: false,
            emit: (tokens: SampledToken[], admitMs?: number) => {
              if (!ended) call.write({ tokens: { tokens: tokens.map(toTokenMsg), admit_ms: admitMs ?? 0 } });
            },
            finish: (reason, stopTokenId) => {
              if (ended) return;
              log.info({ reason, generated: req.generated, prompt_tokens: r.prompt_len }, 'decode finished');
              call.write({ finished: { reason, stop_token_id: stopTokenId ?? 0, has_stop_token: stopTokenId !== undefined } });
              end();
            },
            fail: (err) => {
              if (/checksum/.test(err.message)) ctx.onKvFailure?.('checksum');
              log.warn({ err: err.message }, 'decode failed');
              end(err);
            },
          };
          ctx.scheduler.addDecode(req);
          kvTimer = setTimeout(() => {
            if (req.status !== 'waiting_kv') return;
            ctx.onKvFailure?.('timeout');
            req.cancelled = true;
            ctx.scheduler.notify();
            end(new Error(`KV cache did not arrive within ${r.kv_timeout_ms} ms`));
          }, r.kv_timeout_ms || 60_000);
          call.write({ reserved: true });
        },
        (err: Error) => end(err),
      );
    },
    PushKv(call: grpc.ServerReadableStream<KvChunkMsg, { bytes: number; chunks: number }>, callback: grpc.sendUnaryData<{ bytes: number; chunks: number }>) {
      let bytes = 0;
      let chunks = 0;
      let failed = false;
      let firstAt: number | undefined;
      const fail = (s: Partial<grpc.StatusObject>) => {
        if (failed) return;
        failed = true;
        callback(s);
      };
      const blockBytes = ctx.scheduler.engine.runner.blockBytes;
      const blockTokens = ctx.scheduler.engine.runner.kvShape.blockTokens;
      call.on('data', (chunk: KvChunkMsg) => {
        if (failed) return;
        const req = ctx.scheduler.decodes.get(chunk.request_id);
        if (!req || req.status !== 'waiting_kv') return fail(status(grpc.status.NOT_FOUND, `no sequence ${chunk.request_id} is waiting for KV here`));
        if (chunk.block_bytes !== blockBytes || chunk.block_tokens !== blockTokens) {
          ctx.onKvFailure?.('rejected');
          req.fail(new Error(`KV layout mismatch: sender blocks are ${chunk.block_tokens} tokens/${chunk.block_bytes} bytes, here ${blockTokens}/${blockBytes}`));
          req.cancelled = true;
          ctx.scheduler.notify();
          return fail(status(grpc.status.FAILED_PRECONDITION, 'KV block layout mismatch'));
        }
        bytes += chunk.data.byteLength;
        chunks++;
        firstAt ??= performance.now();
        req.pendingKv.push(chunk);
        ctx.scheduler.notify();
      });
      call.on('end', () => {
        if (failed) return;
        ctx.log.debug({ request_id: requestIdOf(call, ''), kv_bytes: bytes, kv_chunks: chunks, kv_receive_ms: round(performance.now() - (firstAt ?? performance.now())) }, 'KV received');
        callback(null, { bytes, chunks });
      });
      call.on('error', () => fail(status(grpc.status.CANCELLED, 'KV push broken off')));
    },
    Cancel(call: grpc.ServerUnaryCall<{ request_id: string }, { found: boolean }>, callback: grpc.sendUnaryData<{ found: boolean }>) {
      const id = call.request.request_id;
      callback(null, { found: ctx.scheduler.cancelDecode(id) || ctx.scheduler.cancelReservation(id) });
    },
    Health: healthHandler(ctx),
  };
}

function cancelledRequest(seq: DecodeRequest['seq'], r: GenerateRequestMsg): DecodeRequest {
  // A reservation granted after its caller left: registered as cancelled so the loop frees it.
  const noop = () => {};
  return {
    requestId: r.request_id, seq, sampling: r.sampling, sampler: samplerFor({ ...r.sampling, temperature: 0 }), promptLen: r.prompt_len,
    status: 'waiting_kv', pendingKv: [], generated: 0, cancelled: true, emit: noop, finish: noop, fail: noop,
  };
}

function healthHandler(ctx: ServiceContext) {
  return (_call: unknown, callback: grpc.sendUnaryData<{ worker_id: string; role: string; ready: boolean }>) =>
    callback(null, { worker_id: ctx.workerId, role: ctx.role, ready: !ctx.isDraining() });
}
