// The engine thread of a worker: the Engine (ONNX Runtime and the KV cache) and its Scheduler.
// It talks to the main thread only through messages (engine-protocol.ts): requests in; tokens, KV
// blocks to send and step statistics out.
import { parentPort, workerData } from 'node:worker_threads';
import { setPriority } from 'node:os';
import { existsSync } from 'node:fs';
import { Engine, InvalidSamplingParamsError, InvalidTokenError, KvChecksumError, PromptTooLongError, type SampledToken } from '@pdserve/engine';
import { kvTrace, type SamplingParamsMsg } from '@pdserve/common';
import type { EngineThreadData, FailureKind, FromEngine, ToEngine } from './engine-protocol.ts';
import { LocalKvSink, ThreadKvSink } from './kv-sinks.ts';
import { RequestFailure, type DecodeRequest, type PrefillJob } from './requests.ts';
import { QueueFullError, samplerFor, Scheduler } from './scheduler.ts';
import { KV_MESSAGE_BYTES } from '@pdserve/common';
import { KV_POOL_SLOTS, SharedSlots } from './kv-buffers.ts';

const port = parentPort!;
const data = workerData as EngineThreadData;
const post = (m: FromEngine, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);

// TEST-ONLY: PDSERVE_TEST_ENGINE_STALL_MS=N blocks this thread synchronously for N ms in its first
// step (as a forward pass that hangs would), once, so end-to-end tests can watch the worker's
// engine watchdog turn it unhealthy and back. Read only when set; never set it in production.
let testStallMs = process.env.PDSERVE_TEST_ENGINE_STALL_MS ? Number(process.env.PDSERVE_TEST_ENGINE_STALL_MS) : 0;
function testStall(): void {
  if (!(testStallMs > 0)) return;
  const ms = testStallMs;
  testStallMs = 0;
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

// TEST-ONLY: PDSERVE_TEST_DECODE_GATE=PATH holds every decode step while the file PATH exists
// (sequences still join the batch and send their first token, then wait), so end-to-end tests can
// fault a worker while its streams are certainly in flight, however fast the model decodes.
const decodeGate = process.env.PDSERVE_TEST_DECODE_GATE || undefined;

function kindOf(err: Error): FailureKind {
  if (err instanceof RequestFailure) return err.kind;
  if (err instanceof QueueFullError) return 'queue_full';
  if (err instanceof InvalidSamplingParamsError) return 'invalid';
  if (err instanceof PromptTooLongError) return 'too_long';
  if (err instanceof InvalidTokenError) return 'invalid';
  if (err instanceof KvChecksumError) return 'checksum';
  if (err.message === 'cancelled') return 'cancelled';
  return 'internal';
}

async function main(): Promise<void> {
  let engine: Engine;
  // Before the session exists: ONNX Runtime's pool threads, created with it, inherit the value.
  if (data.nice > 0) {
    try {
      setPriority(data.nice);
    } catch (err) {
      process.stderr.write(`pdserve worker: could not set the engine thread's nice value to ${data.nice}: ${(err as Error).message}\n`);
    }
  }
  try {
    engine = await Engine.load(data.model, data.engine);
  } catch (err) {
    post({ type: 'loadFailed', message: (err as Error).message });
    return;
  }
  const cap = engine.runner.capacity();
  const scheduler = new Scheduler(engine, {
    ...data.scheduler,
    holdDecode: decodeGate === undefined ? undefined : () => existsSync(decodeGate),
    onStep: (s) => {
      testStall();
      post({ type: 'step', phase: s.phase, ms: s.ms, tokens: s.tokens, batch: s.batch });
      postLoad();
    },
  });
  const sinks = new Map<string, ThreadKvSink>();
  // One message's bytes at most: KV_MESSAGE_BYTES, or one fp32 block where a block is larger.
  const slotBytes = Math.max(KV_MESSAGE_BYTES, engine.runner.blockBytes);
  const sendPool = SharedSlots.create(slotBytes, KV_POOL_SLOTS);
  const receivePool = SharedSlots.create(slotBytes, KV_POOL_SLOTS);
  const giveBack = (slot: number | undefined) => {
    if (slot === undefined) return undefined;
    let given = false;
    return () => { if (!given) { given = true; receivePool.give(slot); } };
  };

  function postLoad(): void {
    postPrefixEvents();
    const c = engine.runner.capacity();
    const recent = scheduler.recentStepMs.slice(-16);
    const sorted = [...recent].sort((a, b) => a - b);
    const decodes = scheduler.recentDecodeSteps;
    const decodeMs = decodes.map((d) => d.ms).sort((a, b) => a - b);
    post({
      type: 'load',
      load: {
        queue_len: scheduler.prefillQueue.length, running: scheduler.runningCount, waiting: scheduler.waitingCount,
        free_kv_blocks: c.totalBlocks - c.usedBlocks, total_kv_blocks: c.totalBlocks, kv_block_tokens: c.blockTokens,
        free_sequences: c.freeSequences, max_sequences: c.maxSequences,
        step_ms_p50: sorted.length ? sorted[Math.floor(sorted.length / 2)] : undefined,
        step_ms_recent: recent.map((x) => Math.round(x * 100) / 100),
        prefill_tokens_per_s: scheduler.prefillTokensPerS || undefined,
        decode_step_ms: decodeMs.length ? Math.round(decodeMs[Math.floor(decodeMs.length / 2)] * 100) / 100 : undefined,
        decode_batch: decodes.length ? Math.round((decodes.reduce((n, d) => n + d.batch, 0) / decodes.length) * 100) / 100 : undefined,
        ...windowLoad(scheduler.decodeStepMean()),
        queued_prefill_tokens: scheduler.queuedPrefillTokens,
        prefill_chunk_tokens: engine.prefillChunk,
        ...prefixLoad(),
        decode_step_ms_by_batch: Object.fromEntries([...scheduler.decodeStepMsByBatch].map(([b, ms]) => [String(b), Math.round(ms * 100) / 100])),
      },
    });
  }

  function windowLoad(mean: { ms: number; batch: number } | undefined): { decode_step_ms_window?: number; decode_batch_window?: number } {
    return mean ? { decode_step_ms_window: Math.round(mean.ms * 100) / 100, decode_batch_window: Math.round(mean.batch * 100) / 100 } : {};
  }

  function postPrefixEvents(): void {
    const pc = engine.prefixCache;
    if (!pc) return;
    const { events, resync } = pc.drainEvents();
    if (resync) post({ type: 'prefixEvents', events: [], resync, held: pc.heldHashes() });
    else if (events.length > 0) post({ type: 'prefixEvents', events, resync });
  }

  function prefixLoad(): Record<string, number> {
    const pc = engine.prefixCache;
    if (!pc) return {};
    const c = pc.counters;
    return { prefix_cache_queries: c.queries, prefix_cache_hits: c.hits, prefix_cache_blocks: pc.retainedBlocks };
  }

  // Everything a message handler does is about one request: an error in it fails that request
  // (its caller gets a status), never the thread (an uncaught error here would exit the worker).
  port.on('message', (m: ToEngine) => {
    try {
      handle(m);
    } catch (err) {
      failRequest(m, err as Error);
    }
  });

  function failRequest(m: ToEngine, err: Error): void {
    const failure = { message: err.message, kind: kindOf(err) };
    if (m.type === 'prefill') post({ type: 'prefillFailed', requestId: m.requestId, ...failure });
    else if (m.type === 'reserve') post({ type: 'reserveFailed', requestId: m.requestId, ...failure });
    else if (m.type === 'kv' || m.type === 'pause') {
      if (scheduler.cancelDecode(m.requestId)) post({ type: 'decodeFailed', requestId: m.requestId, ...failure });
    }
    postLoad();
  }

  function handle(m: ToEngine): void {
    switch (m.type) {
      case 'prefill': {
        if (m.local && !scheduler.decodes.has(m.requestId)) {
          // The decode side went away (cancelled, timed out) after the main thread looked.
          throw new RequestFailure(`the decode side of request ${m.requestId} is gone (cancelled or timed out)`, 'precondition');
        }
        if (scheduler.hasPrefill(m.requestId) || sinks.has(m.requestId)) throw new RequestFailure(`request ${m.requestId} is already being prefilled here`, 'exists');
        engine.checkTokenIds(m.promptIds);
        const sampler = samplerFor(m.sampling);
        const local = m.local ? scheduler.decodes.get(m.requestId) : undefined;
        const sink = local
          ? new LocalKvSink(local, () => scheduler.notify(), () => post({ type: 'kvProgress', requestId: m.requestId }))
          : new ThreadKvSink(engine.runner, m.requestId, data.kvWireDtype, {
            // A pooled chunk's view is shared, not transferred; any other buffer moves to the main thread.
            out: (chunks, final, slots) => post({ type: 'kvOut', requestId: m.requestId, chunks, final, slots }, chunks.filter((_, i) => slots[i] < 0).map((c) => c.data.buffer as ArrayBuffer)),
            abort: () => post({ type: 'kvAbort', requestId: m.requestId }),
          }, sendPool);
        const job: PrefillJob = {
          requestId: m.requestId, promptIds: m.promptIds, sampling: m.sampling, sampler, sink, local: m.local,
          enqueuedAt: performance.now(), computeMs: 0, sentBlocks: 0, cachedTokens: 0, cancelled: false,
          done: (r) => { sinks.delete(m.requestId); post({ type: 'prefillDone', requestId: m.requestId, ...r }); postLoad(); },
          fail: (err) => { sinks.delete(m.requestId); post({ type: 'prefillFailed', requestId: m.requestId, message: err.message, kind: kindOf(err) }); postLoad(); },
        };
        scheduler.enqueuePrefill(job);
        if (sink instanceof ThreadKvSink) sinks.set(m.requestId, sink);
        postLoad();
        break;
      }
      case 'reserve': {
        if (scheduler.hasDecodeOrWaiter(m.requestId)) throw new RequestFailure(`request ${m.requestId} is already decoding here`, 'exists');
        const sampler = samplerFor(m.sampling); // bad parameters fail before a slot is taken
        scheduler.reserve(m.requestId).then(
          (seq) => {
            try {
              // Registered at once, waiting for its cache, so a KV chunk or a cancel finds it.
              scheduler.addDecode(decodeRequest(m.requestId, seq, m.promptLen, m.sampling, sampler, m.promptIds));
            } catch (err) {
              scheduler.giveBack(seq);
              failRequest(m, err as Error);
              return;
            }
            post({ type: 'reserved', requestId: m.requestId });
            postLoad();
          },
          (err: Error) => post({ type: 'reserveFailed', requestId: m.requestId, message: err.message, kind: kindOf(err) }),
        );
        break;
      }
      case 'kv': {
        const req = scheduler.decodes.get(m.requestId);
        const release = giveBack(m.slot);
        if (!req || req.status !== 'waiting_kv') {
          release?.();
          post({ type: 'kvApplied', requestId: m.requestId, bytes: m.chunk.data.byteLength });
          break;
        }
        kvTrace('d.engine_recv', m.requestId, { bytes: m.chunk.data.byteLength });
        req.pendingKv.push(Object.assign(m.chunk, { verified: m.verified === true, finite: m.finite === true, release }));
        scheduler.notify();
        break;
      }
      case 'kvAck':
        sinks.get(m.requestId)?.acknowledged(m.error);
        break;
      case 'pause':
        scheduler.pauseDecode(m.requestId, m.paused);
        break;
      case 'cancel':
        if (m.scope === 'prefill') scheduler.cancelPrefill(m.requestId);
        else if (!scheduler.cancelDecode(m.requestId)) scheduler.cancelReservation(m.requestId);
        break;
      case 'stop':
        void scheduler.stop().then(() => post({ type: 'stopped' }));
        break;
    }
  }

  function decodeRequest(requestId: string, seq: DecodeRequest['seq'], promptLen: number, sampling: SamplingParamsMsg, sampler: DecodeRequest['sampler'], promptIds?: number[]): DecodeRequest {
    sampler.skip(1); // the prefill drew the first token from the same stream
    let over = false; // finished or failed: reported to the main thread once
    const req: DecodeRequest = {
      requestId, seq, sampling, sampler, promptLen, promptIds,
      status: 'waiting_kv', pendingKv: [], generated: 0, cancelled: false,
      kvApplied: (bytes) => post({ type: 'kvApplied', requestId, bytes }),
      emit: (tokens: SampledToken[], admitMs?: number) => {
        if (admitMs === undefined) return post({ type: 'tokens', requestId, tokens });
        kvTrace('d.token_posted', requestId);
        post({ type: 'tokens', requestId, tokens, admitMs, cachedTokens: req.cachedTokens ?? 0 });
      },
      finish: (reason, stopTokenId) => {
        if (over) return;
        over = true;
        post({ type: 'finished', requestId, reason, stopTokenId, generated: req.generated });
        postLoad();
      },
      fail: (err) => {
        if (over) return;
        over = true;
        post({ type: 'decodeFailed', requestId, message: err.message, kind: kindOf(err) });
        postLoad();
      },
    };
    return req;
  }

  scheduler.start();
  // Cancellations and finished transfers change the load between steps too; a cheap periodic
  // report keeps the main thread's copy (heartbeats, /health) fresh.
  setInterval(postLoad, 200).unref();
  post({
    type: 'ready',
    info: {
      config: engine.config, maxModelLen: engine.maxModelLen, vocabSize: engine.vocabSize,
      blockBytes: engine.runner.blockBytes, blockTokens: engine.runner.kvShape.blockTokens, kvShape: engine.runner.kvShape, kvBytes: cap.bytes, maxSequences: cap.maxSequences,
      prefixRoot: engine.prefixCache?.root,
      kvPools: { send: sendPool.handle, receive: receivePool.handle },
    },
  });
  postLoad();
}

void main();
