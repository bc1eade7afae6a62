// Drives the worker's Scheduler (src/scheduler.ts) on a fake engine, for unit tests of that one
// module: no model, no threads. The fake holds `maxSequences` KV slots, decodes a token chosen by a
// per-request script (greedy sampling over one-hot logits picks it), and can hold each decode step
// until the test lets it go, so a test decides exactly what happens between two steps.
import { checksumBlocks, type Engine, type KvSequence, type KvShape, type SampledToken } from '../../../../packages/engine/src/index.ts';
import type { KvChunkMsg, SamplingParamsMsg } from '../../../../packages/common/src/index.ts';
import { Scheduler, samplerFor, type SchedulerOptions } from '../../src/scheduler.ts';
import type { DecodeRequest, KvSink, PrefillJob } from '../../src/requests.ts';
import { LocalKvSink } from '../../src/kv-sinks.ts';

export const VOCAB = 32;
export const EOS = 2;
export const SHAPE: KvShape = { layers: 1, kvHeads: 1, headDim: 2, blockTokens: 4 };
/** fp32 bytes of one block of SHAPE. */
export const BLOCK_BYTES = SHAPE.layers * 2 * SHAPE.kvHeads * SHAPE.blockTokens * SHAPE.headDim * 4;

export function sampling(p: Partial<SamplingParamsMsg> = {}): SamplingParamsMsg {
  return { temperature: 0, top_p: 1, top_k: -1, seed: 1, max_tokens: 4, min_tokens: 0, stop_token_ids: [], ignore_eos: false, logprobs: -1, ...p };
}

/** The token a request decodes at its n-th decode step (0-based); default: 10 + n, never EOS. */
export type Script = (n: number) => number;

export class FakeEngine {
  readonly config = { generation: { eos_token_ids: [EOS] }, vocab_size: VOCAB };
  readonly vocabSize = VOCAB;
  readonly prefillChunk: number;
  readonly maxModelLen: number;
  private readonly slots: Array<string | undefined>;
  readonly scripts = new Map<string, Script>();
  private readonly decoded = new Map<string, number>();
  /** Request ids of each decode step's batch, in order. */
  readonly steps: string[][] = [];
  /** Every prefill forward pass: request ids and chunk lengths. */
  readonly prefills: Array<Array<{ id: string; tokens: number }>> = [];
  /** Prefill passes and decode steps in the order they ran: `prefill:ID,...` and `step:ID,...`. */
  readonly passes: string[] = [];
  /** Every writeBlocks call. */
  readonly writes: Array<{ id: string; first: number; count: number; tokenCount: number }> = [];
  /** writeBlocks (`write:ID:FIRST+COUNT`) and reserveTokens (`reserve:TOKENS`) calls, in order. */
  readonly kvCalls: string[] = [];
  /** When set, each decode step waits for release() (one step per call). */
  gated = false;
  private gate: Array<() => void> = [];
  private waiting: Array<() => void> = [];
  /** Thrown by the next decode step, once. */
  failNext?: Error;

  readonly runner: any;

  constructor(opts: { maxSequences?: number; prefillChunk?: number; maxModelLen?: number } = {}) {
    this.slots = new Array(opts.maxSequences ?? 4).fill(undefined);
    this.prefillChunk = opts.prefillChunk ?? 8;
    this.maxModelLen = opts.maxModelLen ?? 256;
    const self = this;
    this.runner = {
      kvShape: SHAPE,
      blockBytes: BLOCK_BYTES,
      lastTimings: { assembleMs: 0, runMs: 0, writebackMs: 0 },
      writeBlocks(seq: KvSequence, first: number, data: Uint8Array, tokenCount: number) {
        const count = data.byteLength / BLOCK_BYTES;
        if (tokenCount > (first + count) * SHAPE.blockTokens || tokenCount <= first * SHAPE.blockTokens) throw new Error(`KV blocks ${first}..${first + count - 1} cannot hold a length of ${tokenCount}`);
        self.writes.push({ id: seq.id, first, count, tokenCount });
        self.kvCalls.push(`write:${seq.id}:${first}+${count}`);
        seq.length = tokenCount; // as the real cache does: the write sets the sequence's length
      },
      reserveTokens(tokens: number) {
        self.kvCalls.push(`reserve:${tokens}`);
      },
      async forward(items: Array<{ seq: KvSequence; tokens: number[] }>): Promise<Float32Array> {
        self.prefills.push(items.map((i) => ({ id: i.seq.id, tokens: i.tokens.length })));
        self.passes.push(`prefill:${items.map((i) => i.seq.id).join(',')}`);
        for (const i of items) i.seq.length += i.tokens.length;
        return self.logits(items.map((i) => self.scriptFor(i.seq.id)(0)));
      },
    };
  }

  get freeSlots(): number {
    return this.slots.filter((s) => s === undefined).length;
  }

  private scriptFor(id: string): Script {
    return this.scripts.get(id) ?? ((n) => 10 + (n % 16));
  }

  private logits(tokens: number[]): Float32Array {
    const out = new Float32Array(tokens.length * VOCAB);
    tokens.forEach((t, row) => { out[row * VOCAB + t] = 10; });
    return out;
  }

  private allocate(id: string): KvSequence | null {
    const slot = this.slots.indexOf(undefined);
    if (slot < 0) return null;
    this.slots[slot] = id;
    return { id, slot, length: 0 };
  }

  reserveSequence(id: string): KvSequence | null { return this.allocate(id); }
  startPrompt(id: string): { seq: KvSequence; cachedTokens: number } | null {
    const seq = this.allocate(id);
    return seq ? { seq, cachedTokens: 0 } : null;
  }
  attachPrompt(seq: KvSequence): { seq: KvSequence; cachedTokens: number } { return { seq, cachedTokens: 0 }; }
  release(seq: KvSequence): void {
    if (this.slots[seq.slot] !== seq.id) throw new Error(`slot ${seq.slot} released twice (${seq.id})`);
    this.slots[seq.slot] = undefined;
  }
  checkLength(n: number): void {
    if (n > this.maxModelLen) throw new Error(`prompt of ${n} tokens exceeds the context of ${this.maxModelLen} tokens`);
  }
  checkTokenIds(ids: readonly number[]): void {
    for (const id of ids) if (!Number.isInteger(id) || id < 0 || id >= VOCAB) throw new Error(`token id ${id} is outside the model's vocabulary`);
  }

  async decode(batch: Array<{ seq: KvSequence; token: number }>): Promise<Float32Array> {
    this.steps.push(batch.map((b) => b.seq.id));
    this.passes.push(`step:${batch.map((b) => b.seq.id).join(',')}`);
    if (this.gated) {
      await new Promise<void>((resolve) => { this.gate.push(resolve); for (const w of this.waiting.splice(0)) w(); });
    }
    if (this.failNext) { const e = this.failNext; this.failNext = undefined; throw e; }
    return this.logits(batch.map((b) => {
      b.seq.length += 1;
      const n = this.decoded.get(b.seq.id) ?? 0;
      this.decoded.set(b.seq.id, n + 1);
      return this.scriptFor(b.seq.id)(n);
    }));
  }

  /** Resolves once a gated decode step is waiting. */
  async stepWaiting(): Promise<void> {
    if (this.gate.length > 0) return;
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  /** Ungates: every waiting step runs, and later ones run at once. */
  ungate(): void {
    this.gated = false;
    for (const g of this.gate.splice(0)) g();
  }

  /** Lets the waiting gated step run. */
  step(): void {
    const g = this.gate.shift();
    if (!g) throw new Error('no decode step is waiting');
    g();
  }
}

/** What a decode request's stream saw. */
export interface DecodeOutcome {
  tokens: number[];
  firstAdmitMs?: number;
  finished?: { reason: 'stop' | 'length'; stopTokenId?: number };
  failed?: Error;
  /** Calls to finish() and fail() together (must end at most once). */
  ends: number;
  /** Resolves at the first finish or fail. */
  ended: Promise<void>;
}

export interface Harness {
  engine: FakeEngine;
  sched: Scheduler;
  /** A decode request, registered with a slot of its own; `ready` gives it its KV and first token at once. */
  decode(id: string, opts?: { promptLen?: number; sampling?: Partial<SamplingParamsMsg>; ready?: boolean; firstToken?: number; seq?: KvSequence }): { req: DecodeRequest; out: DecodeOutcome };
  /**
   * A unified worker's request: its decode side (slot reserved, waiting for its KV) and its prompt,
   * prefilled locally into the same sequence (LocalKvSink makes it ready with its first token).
   */
  local(id: string, promptLen: number, sampling?: Partial<SamplingParamsMsg>): { req: DecodeRequest; out: DecodeOutcome };
  /** A prefill job towards a recording sink. */
  prefill(id: string, promptLen: number): { job: PrefillJob; sent: Array<{ first: number; count: number; tokenCount: number }>; result: Promise<{ firstToken: SampledToken }> };
  stop(): Promise<void>;
}

export function harness(engineOpts: ConstructorParameters<typeof FakeEngine>[0] = {}, opts: Partial<SchedulerOptions> = {}): Harness {
  const engine = new FakeEngine(engineOpts);
  const sched = new Scheduler(engine as unknown as Engine, { maxPrefillQueue: 8, maxReserveQueue: 2, reserveTimeoutMs: 5_000, ...opts });
  sched.start();
  const h: Harness = {
    engine, sched,
    decode(id, o = {}) {
      const seq = o.seq ?? engine.reserveSequence(id);
      if (!seq) throw new Error(`no free slot for ${id}`);
      const s = sampling(o.sampling);
      let onEnd!: () => void;
      const out: DecodeOutcome = { tokens: [], ends: 0, ended: new Promise<void>((r) => { onEnd = r; }) };
      const promptLen = o.promptLen ?? 4;
      const req: DecodeRequest = {
        requestId: id, seq, sampling: s, sampler: samplerFor(s), promptLen, status: 'waiting_kv', pendingKv: [], generated: 0, cancelled: false,
        emit(tokens, admitMs) { out.tokens.push(...tokens.map((t) => t.id)); if (admitMs !== undefined) out.firstAdmitMs = admitMs; },
        finish(reason, stopTokenId) { out.ends++; out.finished ??= { reason, stopTokenId }; onEnd(); },
        fail(err) { out.ends++; if (!out.finished) out.failed ??= err; onEnd(); },
      };
      if (o.ready) {
        seq.length = promptLen;
        req.lastToken = { id: o.firstToken ?? 5, logprob: 0, topLogprobs: [] };
        req.status = 'ready';
      }
      sched.addDecode(req);
      return { req, out };
    },
    local(id, promptLen, sampling) {
      const d = h.decode(id, { promptLen, sampling });
      const s = d.req.sampling;
      const job: PrefillJob = {
        requestId: id, promptIds: promptOf(promptLen), sampling: s, sampler: samplerFor(s),
        sink: new LocalKvSink(d.req, () => sched.notify()), local: true,
        enqueuedAt: performance.now(), computeMs: 0, cachedTokens: 0, sentBlocks: 0, cancelled: false, done: () => {}, fail: () => {},
      };
      sched.enqueuePrefill(job);
      return d;
    },
    prefill(id, promptLen) {
      const sent: Array<{ first: number; count: number; tokenCount: number }> = [];
      let done!: (r: { firstToken: SampledToken }) => void;
      let failed!: (e: Error) => void;
      const result = new Promise<{ firstToken: SampledToken }>((res, rej) => { done = res; failed = rej; });
      result.catch(() => {});
      const sink: KvSink = {
        send(_seq, first, count, tokenCount) { sent.push({ first, count, tokenCount }); },
        finish(seq, first, count) { sent.push({ first, count, tokenCount: seq.length }); return Promise.resolve(); },
        abort() {},
      };
      const s = sampling();
      const job: PrefillJob = {
        requestId: id, promptIds: promptOf(promptLen), sampling: s, sampler: samplerFor(s), sink, local: false,
        enqueuedAt: performance.now(), computeMs: 0, cachedTokens: 0, sentBlocks: 0, cancelled: false, done, fail: failed,
      };
      sched.enqueuePrefill(job);
      return { job, sent, result };
    },
    stop: () => sched.stop(),
  };
  return h;
}

/** A prompt of `promptLen` token ids, all in the fake vocabulary and none of them EOS. */
function promptOf(promptLen: number): number[] {
  return Array.from({ length: promptLen }, (_, i) => 3 + (i % 20));
}

/** A KV chunk of blocks [first, first + count) of a promptLen-token prompt, zero-valued, with good checksums. */
export function kvChunk(requestId: string, promptLen: number, first: number, count: number, done: boolean, firstToken = 5): KvChunkMsg {
  const data = new Uint8Array(count * BLOCK_BYTES);
  return {
    request_id: requestId, first_block: first, block_count: count, token_count: Math.min(promptLen, (first + count) * SHAPE.blockTokens),
    data, checksums: checksumBlocks(data, BLOCK_BYTES), done, first_token: done ? { id: firstToken, logprob: 0, top_logprobs: [] } : null,
    block_tokens: SHAPE.blockTokens, block_bytes: BLOCK_BYTES,
  } as KvChunkMsg;
}

/** Polls `cond` (every macrotask turn) until it holds; fails naming `what` after `timeoutMs`. */
export async function until(cond: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}
