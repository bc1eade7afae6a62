// gRPC handlers of a worker: Prefill (queue a prompt, push its KV to the chosen decode worker) and
// Decode (reserve KV room, take the cache in, stream tokens back). Both forward to the engine
// thread through the EngineHost.
import {
  grpc, type GenerateEventMsg, type GenerateRequestMsg, type KvChunkMsg, type PrefillRequestMsg, type PrefillResponseMsg,
} from '@pdserve/common';
import type { Logger } from 'pino';
import { EngineError, type EngineHost } from './engine-host.ts';
import { toTokenMsg } from './kv-sinks.ts';

export interface ServiceContext {
  host: EngineHost;
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
  const kind = err instanceof EngineError ? err.kind : 'internal';
  const code = {
    queue_full: grpc.status.RESOURCE_EXHAUSTED, too_long: grpc.status.INVALID_ARGUMENT, invalid: grpc.status.INVALID_ARGUMENT,
    cancelled: grpc.status.CANCELLED, checksum: grpc.status.DATA_LOSS, internal: grpc.status.INTERNAL,
  }[kind];
  return status(code, err.message);
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
      if (req.prompt_ids.length > ctx.host.info.maxModelLen) {
        return callback(status(grpc.status.INVALID_ARGUMENT, `prompt of ${req.prompt_ids.length} tokens exceeds the context of ${ctx.host.info.maxModelLen} tokens`));
      }
      const local = req.decode_address === ctx.selfAddress && ctx.host.hasDecode(req.request_id);
      call.on('cancelled', () => ctx.host.cancelPrefill(req.request_id));
      ctx.host.prefill(req.request_id, req.prompt_ids, req.sampling, local ? { local: true } : { local: false, address: req.decode_address }).then(
        (r) => {
          if (r.transfer) ctx.onKvTransfer?.({ seconds: r.transfer.ms / 1000, bytes: r.transfer.bytes });
          log.info({
            prompt_tokens: req.prompt_ids.length, queue_ms: round(r.queueMs), prefill_ms: round(r.prefillMs), transfer_tail_ms: round(r.transferTailMs),
            kv_bytes: r.transfer?.bytes ?? 0, kv_transfer_ms: round(r.transfer?.ms ?? 0), decode: local ? 'local' : req.decode_address,
          }, 'prefill done');
          callback(null, {
            first_token: toTokenMsg(r.firstToken), queue_ms: r.queueMs, prefill_ms: r.prefillMs,
            transfer_tail_ms: r.transferTailMs, kv_bytes: r.transfer?.bytes ?? 0,
          });
        },
        (err: EngineError) => {
          if (!local && err.kind === 'internal' && /KV push/.test(err.message)) ctx.onKvFailure?.('peer_lost');
          if (err.kind !== 'cancelled') log.warn({ err: err.message }, 'prefill failed');
          callback(errorStatus(err));
        },
      );
    },
    Cancel(call: grpc.ServerUnaryCall<{ request_id: string }, { found: boolean }>, callback: grpc.sendUnaryData<{ found: boolean }>) {
      ctx.host.cancelPrefill(call.request.request_id);
      callback(null, { found: true });
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
      if (r.prompt_len + 1 > ctx.host.info.maxModelLen) {
        call.emit('error', status(grpc.status.INVALID_ARGUMENT, `prompt of ${r.prompt_len} tokens leaves no room in the context of ${ctx.host.info.maxModelLen} tokens`));
        return;
      }
      let ended = false;
      let kvTimer: NodeJS.Timeout | undefined;
      let waitingKv = true;
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
        ctx.host.cancelDecode(r.request_id);
        ctx.host.forget(r.request_id);
      });
      ctx.host.reserve(r.request_id, r.prompt_len, r.sampling, {
        tokens: (tokens, admitMs) => {
          waitingKv = false;
          if (!ended) call.write({ tokens: { tokens: tokens.map(toTokenMsg), admit_ms: admitMs ?? 0 } });
        },
        finished: (reason, stopTokenId, generated) => {
          log.info({ reason, generated, prompt_tokens: r.prompt_len }, 'decode finished');
          if (ended) return;
          call.write({ finished: { reason, stop_token_id: stopTokenId ?? 0, has_stop_token: stopTokenId !== undefined } });
          end();
        },
        failed: (err) => {
          if (err.kind === 'checksum') ctx.onKvFailure?.('checksum');
          log.warn({ err: err.message }, 'decode failed');
          end(err);
        },
      }).then(
        () => {
          if (ended) {
            // The caller left while we waited for room: give it back.
            ctx.host.cancelDecode(r.request_id);
            ctx.host.forget(r.request_id);
            return;
          }
          kvTimer = setTimeout(() => {
            if (!waitingKv) return;
            ctx.onKvFailure?.('timeout');
            ctx.host.cancelDecode(r.request_id);
            ctx.host.forget(r.request_id);
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
      const { blockBytes, blockTokens } = ctx.host.info;
      call.on('data', (chunk: KvChunkMsg) => {
        if (failed) return;
        if (chunk.block_bytes !== blockBytes || chunk.block_tokens !== blockTokens) {
          ctx.onKvFailure?.('rejected');
          ctx.host.cancelDecode(chunk.request_id);
          return fail(status(grpc.status.FAILED_PRECONDITION, `KV layout mismatch: sender blocks are ${chunk.block_tokens} tokens/${chunk.block_bytes} bytes, here ${blockTokens}/${blockBytes}`));
        }
        if (!ctx.host.pushKv(chunk.request_id, chunk)) return fail(status(grpc.status.NOT_FOUND, `no sequence ${chunk.request_id} is waiting for KV here`));
        bytes += chunk.data.byteLength;
        chunks++;
        firstAt ??= performance.now();
      });
      call.on('end', () => {
        if (failed) return;
        ctx.log.debug({ request_id: requestIdOf(call, ''), kv_bytes: bytes, kv_chunks: chunks, kv_receive_ms: round(performance.now() - (firstAt ?? performance.now())) }, 'KV received');
        callback(null, { bytes, chunks });
      });
      call.on('error', () => fail(status(grpc.status.CANCELLED, 'KV push broken off')));
    },
    Cancel(call: grpc.ServerUnaryCall<{ request_id: string }, { found: boolean }>, callback: grpc.sendUnaryData<{ found: boolean }>) {
      const found = ctx.host.hasDecode(call.request.request_id);
      ctx.host.cancelDecode(call.request.request_id);
      callback(null, { found });
    },
    Health: healthHandler(ctx),
  };
}

function healthHandler(ctx: ServiceContext) {
  return (_call: unknown, callback: grpc.sendUnaryData<{ worker_id: string; role: string; ready: boolean }>) =>
    callback(null, { worker_id: ctx.workerId, role: ctx.role, ready: !ctx.isDraining() });
}
