// gRPC handlers of a worker: Prefill (queue a prompt, push its KV to the chosen decode worker) and
// Decode (reserve KV room, take the cache in, stream tokens back). Both forward to the engine
// thread through the EngineHost.
import {
  grpc, kvTrace, type GenerateEventMsg, type GenerateRequestMsg, type KvChunkMsg, type PrefillRequestMsg, type PrefillResponseMsg,
} from '@pdserve/common';
import type { Logger } from 'pino';
import { EngineError, type EngineHost } from './engine-host.ts';
import { toTokenMsg } from './kv-sinks.ts';
import { receiveKvChunk } from './kv-receive.ts';
import { generateProblem, kvTimeoutMs, prefillProblem } from './validate.ts';

export interface ServiceContext {
  host: EngineHost;
  log: Logger;
  /** This worker's advertised gRPC address: a prefill whose decode_address is this stays local. */
  selfAddress: string;
  /** Whether new work of this kind is taken now (the role can change while the worker runs). */
  accepts(kind: 'prefill' | 'decode'): boolean;
  isDraining(): boolean;
  /**
   * Whether a prefill may push KV to this address: a decode-capable worker of this cluster's
   * registry. Without it (tests of one worker) any address is dialled.
   */
  isDecodeAddress?(address: string): Promise<boolean>;
  workerId: string;
  role(): string;
  /** The TCP KV data channel's address (kv-data/server.ts), advertised in Health; none: gRPC only. */
  kvDataAddress?(): string;
  onKvTransfer?(t: { seconds: number; bytes: number; rawBytes: number }): void;
  onKvFailure?(reason: 'checksum' | 'timeout' | 'peer_lost' | 'rejected'): void;
  /** KV room freed because its deadline passed (pdserve_kv_leases_expired_total). */
  onLeaseExpired?(reason: 'kv_never_arrived' | 'kv_push_stalled', requestId: string): void;
}

const round = (ms: number) => Math.round(ms * 100) / 100;

/**
 * Status details travel in an HTTP/2 trailer: one that echoes a huge client-supplied value (a
 * 100 KB request id) overflows the peer's header-list limit and the caller never sees the status.
 */
const MAX_STATUS_DETAILS = 1024;

function status(code: grpc.status, details: string): Partial<grpc.StatusObject> {
  return { code, details: details.length > MAX_STATUS_DETAILS ? `${details.slice(0, MAX_STATUS_DETAILS)}...` : details };
}

function errorStatus(err: Error): Partial<grpc.StatusObject> {
  const kind = err instanceof EngineError ? err.kind : 'internal';
  const code = {
    queue_full: grpc.status.RESOURCE_EXHAUSTED, too_long: grpc.status.INVALID_ARGUMENT, invalid: grpc.status.INVALID_ARGUMENT,
    cancelled: grpc.status.CANCELLED, checksum: grpc.status.DATA_LOSS, exists: grpc.status.ALREADY_EXISTS,
    precondition: grpc.status.FAILED_PRECONDITION, internal: grpc.status.INTERNAL,
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
      // Local: the prompt of a sequence this worker reserved for decoding. Every decode-capable worker
      // prefills its own requests (the router's placement decides when), chunked between decode steps.
      const local = req.decode_address === ctx.selfAddress;
      // A local prefill belongs to a decode this worker already holds: it is finished even while
      // the worker moves away from prefilling (a live role change).
      const held = local && ctx.host.hasDecode(req.request_id);
      if (!(ctx.accepts('prefill') || held) || ctx.isDraining()) return callback(status(grpc.status.UNAVAILABLE, `worker ${ctx.workerId} takes no prefill work`));
      const problem = prefillProblem(req, ctx.host.info);
      if (problem) return callback(status(grpc.status.INVALID_ARGUMENT, problem));
      if (ctx.host.hasPrefill(req.request_id)) return callback(status(grpc.status.ALREADY_EXISTS, `request ${req.request_id} is already being prefilled here`));
      if (local && !ctx.host.hasDecode(req.request_id)) {
        return callback(status(grpc.status.FAILED_PRECONDITION, `no decode side of request ${req.request_id} is waiting here (cancelled, timed out, or never reserved)`));
      }
      let answered = false;
      const answer = (err: Partial<grpc.StatusObject> | null, value?: PrefillResponseMsg) => {
        if (answered) return;
        answered = true;
        callback(err, value);
      };
      const start = () => {
        if (call.cancelled) return answer(status(grpc.status.CANCELLED, 'cancelled by the caller'));
        // The call has no say over another request's prefill: only cancel what this call started.
        call.on('cancelled', () => ctx.host.cancelPrefill(req.request_id));
        run();
      };
      if (local || !ctx.isDecodeAddress) return start();
      ctx.isDecodeAddress(req.decode_address).then(
        (ok) => {
          if (!ok) return answer(status(grpc.status.FAILED_PRECONDITION, `decode_address ${req.decode_address} is not a decode worker of this cluster`));
          if (ctx.host.hasPrefill(req.request_id)) return answer(status(grpc.status.ALREADY_EXISTS, `request ${req.request_id} is already being prefilled here`));
          start();
        },
        (err: Error) => answer(status(grpc.status.UNAVAILABLE, `cannot check decode_address: ${err.message}`)),
      );
      function run(): void {
      ctx.host.prefill(req.request_id, req.prompt_ids, req.sampling, local ? { local: true } : { local: false, address: req.decode_address }).then(
        (r) => {
          if (r.transfer) ctx.onKvTransfer?.({ seconds: r.transfer.ms / 1000, bytes: r.transfer.bytes, rawBytes: r.transfer.rawBytes });
          log.info({
            prompt_tokens: req.prompt_ids.length, cached_tokens: r.cachedTokens, queue_ms: round(r.queueMs), prefill_ms: round(r.prefillMs), transfer_tail_ms: round(r.transferTailMs),
            kv_bytes: r.transfer?.bytes ?? 0, kv_transfer_ms: round(r.transfer?.ms ?? 0), decode: local ? 'local' : req.decode_address,
          }, 'prefill done');
          answer(null, {
            first_token: toTokenMsg(r.firstToken), queue_ms: r.queueMs, prefill_ms: r.prefillMs,
            transfer_tail_ms: r.transferTailMs, kv_bytes: r.transfer?.bytes ?? 0, cached_tokens: r.cachedTokens,
          });
        },
        (err: EngineError) => {
          if (!local && err.kind === 'internal' && /KV push/.test(err.message)) ctx.onKvFailure?.('peer_lost');
          if (err.kind !== 'cancelled') log.warn({ err: err.message }, 'prefill failed');
          answer(errorStatus(err));
        },
      );
      }
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
      if (!ctx.accepts('decode') || ctx.isDraining()) {
        call.emit('error', status(grpc.status.UNAVAILABLE, `worker ${ctx.workerId} takes no decode work`));
        return;
      }
      const problem = generateProblem(r, ctx.host.info);
      if (problem) {
        call.emit('error', status(grpc.status.INVALID_ARGUMENT, problem));
        return;
      }
      if (ctx.host.hasDecodeOrReservation(r.request_id)) {
        call.emit('error', status(grpc.status.ALREADY_EXISTS, `request ${r.request_id} is already decoding here`));
        return;
      }
      let ended = false;
      let kvTimer: NodeJS.Timeout | undefined;
      let waitingKv = true;
      let paused = false;
      const end = (err?: Error) => {
        if (ended) return;
        ended = true;
        clearTimeout(kvTimer);
        if (err) call.emit('error', errorStatus(err));
        else call.end();
      };
      call.on('cancelled', () => {
        if (ended) return; // this call's request is over (or never was: refused as a duplicate)
        ended = true;
        clearTimeout(kvTimer);
        ctx.host.cancelDecode(r.request_id);
        ctx.host.forget(r.request_id);
      });
      // The KV wait is an inactivity bound: armed at the reservation, re-armed whenever KV data (or,
      // on a unified worker, a local prefill chunk) arrives, stopped at the first token. A long
      // prompt whose blocks keep streaming never times out; a prefill that never starts does
      // (its queue wait counts until the first chunk).
      const waitMs = kvTimeoutMs(r.kv_timeout_ms);
      let kvSeen = false;
      const armKvTimer = () => {
        clearTimeout(kvTimer);
        kvTimer = setTimeout(() => {
          if (!waitingKv || ended) return;
          ctx.onKvFailure?.('timeout');
          const reason = kvSeen ? 'kv_push_stalled' : 'kv_never_arrived';
          log.warn({ reason, wait_ms: waitMs, prompt_tokens: r.prompt_len }, 'KV lease expired: reservation freed');
          ctx.onLeaseExpired?.(reason, r.request_id);
          ctx.host.cancelDecode(r.request_id);
          ctx.host.forget(r.request_id);
          end(new Error(`no KV data arrived for ${waitMs} ms`));
        }, waitMs);
      };
      ctx.host.reserve(r.request_id, r.prompt_len, r.sampling, {
        kvProgress: () => { kvSeen = true; if (waitingKv && !ended && kvTimer) armKvTimer(); },
        tokens: (tokens, admitMs, cachedTokens) => {
          waitingKv = false;
          clearTimeout(kvTimer);
          if (admitMs !== undefined) kvTrace('d.token_main', r.request_id);
          if (ended) return;
          // A client that does not read: stop decoding this sequence until the stream drains, so
          // its buffer stays bounded (a few steps in flight at most).
          if (!call.write({ tokens: { tokens: tokens.map(toTokenMsg), admit_ms: admitMs ?? 0, cached_tokens: cachedTokens ?? 0 } }) && !paused) {
            paused = true;
            ctx.host.pauseDecode(r.request_id, true);
            call.once('drain', () => {
              paused = false;
              if (!ended) ctx.host.pauseDecode(r.request_id, false);
            });
          }
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
      }, r.prompt_ids).then(
        () => {
          if (ended) {
            // The caller left while we waited for room: give it back.
            ctx.host.cancelDecode(r.request_id);
            ctx.host.forget(r.request_id);
            return;
          }
          if (waitingKv) armKvTimer();
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
      call.on('data', (chunk: KvChunkMsg) => {
        if (failed) return;
        // Measured first: pushKv hands the payload's buffer over to the engine thread.
        const received = chunk.data.byteLength;
        const outcome = receiveKvChunk(ctx.host, chunk, ctx.onKvFailure);
        if (!outcome.ok) {
          const code = { not_found: grpc.status.NOT_FOUND, invalid: grpc.status.INVALID_ARGUMENT, precondition: grpc.status.FAILED_PRECONDITION, unsupported: grpc.status.FAILED_PRECONDITION, layout: grpc.status.FAILED_PRECONDITION, checksum: grpc.status.DATA_LOSS }[outcome.kind];
          return fail(status(code, outcome.message));
        }
        bytes += received;
        chunks++;
        kvTrace('d.data', chunk.request_id, { bytes: received, done: chunk.done });
        firstAt ??= performance.now();
        if (outcome.drained) {
          // The engine has not written this request's earlier chunks yet: stop reading (HTTP/2 flow
          // control holds the sender) until it has.
          call.pause();
          void outcome.drained.then(() => call.resume());
        }
      });
      call.on('end', () => {
        kvTrace('d.end', requestIdOf(call, ''));
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
  return (_call: unknown, callback: grpc.sendUnaryData<{ worker_id: string; role: string; ready: boolean; kv_data_address: string }>) =>
    callback(null, { worker_id: ctx.workerId, role: ctx.role(), ready: !ctx.isDraining(), kv_data_address: ctx.kvDataAddress?.() ?? '' });
}
