// The worker's one loop over its engine: prefill chunks for queued prompts and decode steps for the
// running batch, interleaved (a unified worker does both; a prefill or decode worker only has one
// kind of work). Every change to the KV cache happens here, between forward passes, so a cache
// window handed to ONNX Runtime never moves under it.
import { blockBytes, blocksFor, decodeKvBlocks, firstNonFinite, Sampler, verifyBlocks, wireBlockBytes, type Engine, type KvSequence, type KvWireDtype, type SampledToken } from '@pdserve/engine';
import { kvTrace, type SamplingParamsMsg } from '@pdserve/common';
import { RequestFailure, type DecodeRequest, type PrefillJob } from './requests.ts';

export interface SchedulerOptions {
  /** Prompts waiting for prefill at most; more are refused (the router tries elsewhere). */
  maxPrefillQueue: number;
  /** Decode reservations waiting for a free KV slot at most. */
  maxReserveQueue: number;
  /** How long a decode reservation may wait for a slot. */
  reserveTimeoutMs: number;
  onStep?: (s: { phase: 'prefill' | 'decode'; ms: number; tokens: number; batch: number; assembleMs: number }) => void;
  /** TEST-ONLY (engine-thread.ts, PDSERVE_TEST_DECODE_GATE): while true, no decode step runs (sequences still join and send their first token). */
  holdDecode?: () => boolean;
}

/** The span decodeStepMean averages over, ms (about one request's decode lifetime), and its bound in steps. */
export const DECODE_STEP_WINDOW_MS = 10_000;
const DECODE_STEP_WINDOW_MAX = 1024;

export class QueueFullError extends Error {}

interface ReserveWaiter {
  requestId: string;
  resolve(seq: KvSequence): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

export function samplerFor(p: SamplingParamsMsg): Sampler {
  const sampler = new Sampler({ temperature: p.temperature, topP: p.top_p || 1, topK: p.top_k, seed: p.seed, logprobs: p.logprobs >= 0 ? p.logprobs : undefined });
  // A migrated request continues another worker's random stream (proto: sample_offset).
  sampler.skip(p.sample_offset ?? 0);
  return sampler;
}

export class Scheduler {
  readonly prefillQueue: PrefillJob[] = [];
  readonly decodes = new Map<string, DecodeRequest>();
  private readonly reserveQueue: ReserveWaiter[] = [];
  private wake?: () => void;
  /**
   * Set by notify() and cleared as a pass begins: work that arrives while a pass runs (in a
   * microtask between its awaits, when no waker is set yet) makes the loop go round again instead
   * of sleeping on a wake-up that already happened.
   */
  private kicked = false;
  private stopped = false;
  private loopDone?: Promise<void>;
  readonly recentStepMs: number[] = [];
  /** The last few decode steps alone (the planner's step-time model needs them apart from prefill chunks). */
  readonly recentDecodeSteps: Array<{ ms: number; batch: number }> = [];
  /** Decode steps of the last DECODE_STEP_WINDOW_MS (decodeStepMean). */
  private readonly decodeStepWindow: Array<{ at: number; ms: number; batch: number }> = [];
  /** Tokens and milliseconds of the last prefill passes, for a throughput that matches this worker's mix of prompts. */
  private readonly recentPrefill: Array<{ tokens: number; ms: number }> = [];
  /** Moving average of the decode step time per batch size (what a router needs to predict TPOT). */
  readonly decodeStepMsByBatch = new Map<number, number>();

  constructor(readonly engine: Engine, private readonly opts: SchedulerOptions) {}

  start(): void {
    this.loopDone = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.notify();
    await this.loopDone;
  }

  notify(): void {
    this.kicked = true;
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  get idle(): boolean {
    return this.prefillQueue.length === 0 && this.decodes.size === 0;
  }

  // ---- prefill side ----

  enqueuePrefill(job: PrefillJob): void {
    if (this.hasPrefill(job.requestId)) throw new RequestFailure(`request ${job.requestId} is already being prefilled here`, 'exists');
    if (this.prefillQueue.length >= this.opts.maxPrefillQueue) throw new QueueFullError(`prefill queue full (${this.opts.maxPrefillQueue} prompts waiting)`);
    this.engine.checkLength(job.promptIds.length);
    this.prefillQueue.push(job);
    this.notify();
  }

  hasPrefill(requestId: string): boolean {
    return this.prefillQueue.some((j) => j.requestId === requestId);
  }

  /** A decode side under this id exists: registered, or waiting for a slot. */
  hasDecodeOrWaiter(requestId: string): boolean {
    return this.decodes.has(requestId) || this.reserveQueue.some((w) => w.requestId === requestId);
  }

  cancelPrefill(requestId: string): boolean {
    const job = this.prefillQueue.find((j) => j.requestId === requestId);
    if (!job) return false;
    job.cancelled = true;
    this.notify();
    return true;
  }

  // ---- decode side ----

  /** Holds a KV slot for a request whose cache is about to arrive; waits (bounded) when none is free. */
  reserve(requestId: string): Promise<KvSequence> {
    const seq = this.engine.reserveSequence(requestId);
    if (seq) return Promise.resolve(seq);
    if (this.reserveQueue.length >= this.opts.maxReserveQueue) {
      return Promise.reject(new QueueFullError(`no KV room and ${this.reserveQueue.length} requests already waiting`));
    }
    return new Promise((resolve, reject) => {
      const waiter: ReserveWaiter = {
        requestId, resolve, reject,
        timer: setTimeout(() => {
          this.dropWaiter(waiter);
          reject(new QueueFullError(`no KV room freed within ${this.opts.reserveTimeoutMs} ms`));
        }, this.opts.reserveTimeoutMs),
      };
      this.reserveQueue.push(waiter);
    });
  }

  cancelReservation(requestId: string): boolean {
    const w = this.reserveQueue.find((x) => x.requestId === requestId);
    if (!w) return false;
    this.dropWaiter(w);
    w.reject(new Error('cancelled'));
    return true;
  }

  addDecode(req: DecodeRequest): void {
    if (this.decodes.has(req.requestId)) throw new RequestFailure(`request ${req.requestId} is already decoding here`, 'exists');
    this.decodes.set(req.requestId, req);
    this.notify();
  }

  cancelDecode(requestId: string): boolean {
    const req = this.decodes.get(requestId);
    if (!req) return false;
    req.cancelled = true;
    this.notify();
    return true;
  }

  /** Frees a slot that was reserved but never registered (its request failed on the way). */
  giveBack(seq: KvSequence): void {
    this.releaseSeq(seq);
  }

  pauseDecode(requestId: string, paused: boolean): void {
    const req = this.decodes.get(requestId);
    if (!req) return;
    req.paused = paused;
    if (!paused) this.notify();
  }

  /** Prompt tokens not yet prefilled: queued prompts and the unfinished part of those under way. */
  get queuedPrefillTokens(): number {
    let n = 0;
    for (const job of this.prefillQueue) if (!job.cancelled) n += job.promptIds.length - (job.seq?.length ?? 0);
    return n;
  }

  get waitingCount(): number {
    let n = this.reserveQueue.length;
    for (const r of this.decodes.values()) if (r.status !== 'running') n++;
    return n;
  }

  /** Prefill tokens per second over the recent passes; 0 before the first. */
  get prefillTokensPerS(): number {
    let tokens = 0;
    let ms = 0;
    for (const p of this.recentPrefill) { tokens += p.tokens; ms += p.ms; }
    return ms > 0 ? (tokens / ms) * 1000 : 0;
  }

  get runningCount(): number {
    let n = 0;
    for (const r of this.decodes.values()) if (r.status === 'running') n++;
    return n;
  }

  private dropWaiter(w: ReserveWaiter): void {
    clearTimeout(w.timer);
    const i = this.reserveQueue.indexOf(w);
    if (i >= 0) this.reserveQueue.splice(i, 1);
  }

  private releaseSeq(seq: KvSequence): void {
    this.engine.release(seq);
    // Hand the freed slot to the oldest waiting reservation.
    while (this.reserveQueue.length > 0) {
      const next = this.engine.reserveSequence(this.reserveQueue[0].requestId);
      if (!next) break;
      const w = this.reserveQueue.shift()!;
      clearTimeout(w.timer);
      w.resolve(next);
    }
  }

  // ---- the loop ----

  private async loop(): Promise<void> {
    while (!this.stopped) {
      let worked = false;
      this.kicked = false;
      try {
        this.reap();
        this.applyKv();
        if (await this.prefillStep()) worked = true;
        if (await this.decodeStep()) worked = true;
      } catch (err) {
        // A failed step must not kill the worker: fail what was in it and go on.
        this.failAll(err as Error);
      }
      if (!worked && !this.kicked) await new Promise<void>((resolve) => { this.wake = resolve; if (this.stopped) resolve(); });
      else await new Promise<void>((resolve) => setImmediate(resolve)); // let gRPC I/O run between steps
    }
  }

  /** Removes cancelled work and frees its KV room. */
  private reap(): void {
    for (const [id, req] of this.decodes) {
      if (!req.cancelled) continue;
      this.decodes.delete(id);
      for (const rest of req.pendingKv.splice(0)) rest.release?.();
      this.releaseSeq(req.seq);
      // Its stream ends (CANCELLED) unless it already ended with a reason; fail() reports once.
      req.fail(new RequestFailure('cancelled', 'cancelled'));
      // On a unified worker the request's own prefill may be mid-prompt in that very sequence: it
      // must stop writing there (the slot may go to another request at once) and fail.
      const local = this.prefillQueue.find((j) => j.requestId === id && j.local);
      if (local) {
        local.cancelled = true;
        if (local.sharesDecodeSeq) local.seq = undefined;
      }
    }
    for (let i = this.prefillQueue.length - 1; i >= 0; i--) {
      const job = this.prefillQueue[i];
      if (!job.cancelled) continue;
      this.prefillQueue.splice(i, 1);
      if (job.seq && !job.sharesDecodeSeq) this.releaseSeq(job.seq);
      job.seq = undefined;
      job.sink.abort();
      job.fail(new Error('cancelled'));
    }
  }

  /** Writes received KV chunks into their sequences; a sequence whose transfer completed becomes ready. */
  private applyKv(): void {
    const shape = this.engine.runner.kvShape;
    for (const req of this.decodes.values()) {
      while (req.pendingKv.length > 0 && !req.cancelled) {
        const chunk = req.pendingKv.shift()!;
        req.kvApplied?.(chunk.data.byteLength);
        try {
          // validate.ts refuses chunks after `done` on the main thread; here, as the last line, such a
          // chunk would rewrite a running sequence and admit it again (a second first token).
          if (req.status !== 'waiting_kv') throw new RequestFailure(`KV chunk for ${req.requestId} after its transfer ended`, 'precondition');
          if (chunk.block_count > 0) {
            // The gRPC layer refused unknown dtypes and layouts before the chunk got here.
            const dtype = (chunk.wire_dtype || 'fp32') as KvWireDtype;
            // A worker's main thread verifies every received chunk before it gets here (kv-receive.ts),
            // the TCP data channel as the bytes arrive; a chunk not marked so is verified here.
            if (!chunk.verified) verifyBlocks({ firstBlock: chunk.first_block, blockCount: chunk.block_count, tokenCount: chunk.token_count, data: chunk.data, checksums: chunk.checksums }, wireBlockBytes(shape, dtype));
            // The stride grows once to the whole prompt (at the first chunk; later calls find the room),
            // not block by block: each growth moves every held sequence's rows (measured: writes of
            // 0.9 ms among 0.15 ms ones, BENCHMARKS.md, issue 9).
            this.engine.runner.reserveTokens?.(req.promptLen);
            const floats = decodeKvBlocks(chunk.data, shape, dtype);
            const bad = chunk.finite && dtype === 'fp32' ? -1 : firstNonFinite(floats);
            if (bad >= 0) {
              const block = chunk.first_block + Math.floor((bad * 4) / blockBytes(shape));
              throw new RequestFailure(`KV block ${block} holds a NaN or infinite value; refused`, 'invalid');
            }
            this.engine.runner.writeBlocks(req.seq, chunk.first_block, floats, chunk.token_count);
            kvTrace('d.applied', req.requestId, { blocks: chunk.block_count });
          }
          // The main thread checks chunks as they arrive (validate.ts); this is the last line, so a
          // bad first token fails its own request rather than the next decode step of the batch.
          if (chunk.done && !chunk.first_token) throw new RequestFailure('KV chunk with done carries no first_token', 'invalid');
          if (chunk.done) this.engine.checkTokenIds([chunk.first_token!.id]);
        } catch (err) {
          chunk.release?.();
          for (const rest of req.pendingKv.splice(0)) { req.kvApplied?.(rest.data.byteLength); rest.release?.(); }
          req.fail(err as Error);
          req.cancelled = true;
          break;
        }
        chunk.release?.();
        if (chunk.done) {
          if (req.seq.length !== req.promptLen) {
            req.fail(new RequestFailure(`KV transfer ended with ${req.seq.length} of ${req.promptLen} positions`, 'precondition'));
            req.cancelled = true;
            break;
          }
          req.lastToken = { id: chunk.first_token!.id, logprob: chunk.first_token!.logprob, topLogprobs: chunk.first_token!.top_logprobs };
          // The sender's word, only reported: bounded by the prompt so a bad peer cannot inflate it.
          req.cachedTokens = Math.min(chunk.cached_tokens ?? 0, req.promptLen);
          req.kvDoneAt = performance.now();
          req.status = 'ready';
          // The router sent the prompt's ids: keep the transferred KV reusable under them.
          if (req.promptIds) this.engine.rememberPrompt(req.seq, req.promptIds);
        }
      }
    }
    this.reap();
  }

  /**
   * Runs prompt work: one chunk of the oldest prompt, or, when several short prompts wait and this
   * worker holds no decode sequences, those prompts together in one padded forward pass (their
   * matrix products then share one read of the weights).
   */
  private async prefillStep(): Promise<boolean> {
    const jobs = this.pickPrefillJobs();
    if (jobs.length === 0) return false;
    const chunks = jobs.map((job) => job.promptIds.slice(job.seq!.length, job.seq!.length + this.engine.prefillChunk));
    const t0 = performance.now();
    const logits = await this.engine.runner.forward(jobs.map((job, i) => ({ seq: job.seq!, tokens: chunks[i] })));
    const ms = performance.now() - t0;
    for (const job of jobs) kvTrace('p.chunk_done', job.requestId, { ms });
    this.recordStep('prefill', ms, chunks.reduce((n, c) => n + c.length, 0), jobs.length);
    jobs.forEach((job, row) => {
      job.computeMs += ms;
      this.afterPrefillChunk(job, logits.subarray(row * this.engine.vocabSize, (row + 1) * this.engine.vocabSize));
    });
    return true;
  }

  /** The head of the queue, plus whole short prompts behind it that fit one pass together. */
  private pickPrefillJobs(): PrefillJob[] {
    const head = this.prefillQueue[0];
    if (!head || !this.startJob(head)) return [];
    const budget = this.engine.prefillChunk;
    // A prompt not yet started, or started (perhaps after a cached prefix) without a chunk run yet.
    const whole = (j: PrefillJob) => j.promptIds.length - (j.seq?.length ?? 0) <= budget && (j.seq === undefined || j.seq.length === j.cachedTokens);
    if (this.decodes.size > 0 || !whole(head)) return [head];
    const jobs = [head];
    let longest = head.promptIds.length;
    for (const job of this.prefillQueue.slice(1)) {
      if (!whole(job)) break;
      const padded = Math.max(longest, job.promptIds.length) * (jobs.length + 1);
      if (padded > budget * 2 || !this.startJob(job)) break;
      longest = Math.max(longest, job.promptIds.length);
      jobs.push(job);
    }
    return jobs;
  }

  /**
   * Gives a job its KV sequence (the local decode sequence on a unified worker), holding as much of
   * the prompt as the prefix cache has; false when the cache is full.
   */
  private startJob(job: PrefillJob): boolean {
    if (job.seq) return true;
    const local = job.local ? this.decodes.get(job.requestId) : undefined;
    if (job.local && !local) {
      // Its decode side left before the prompt started: nothing to prefill for.
      job.cancelled = true;
      this.notify();
      return false;
    }
    const hit = local ? this.engine.attachPrompt(local.seq, job.promptIds) : this.engine.startPrompt(job.requestId, job.promptIds);
    if (!hit) return false; // no room yet: decode steps or finished transfers will free some
    job.seq = hit.seq;
    job.cachedTokens = hit.cachedTokens;
    job.sharesDecodeSeq = !!local;
    job.startedAt = performance.now();
    return true;
  }

  /** Streams the blocks a chunk completed; after the last chunk, samples the first token and hands over. */
  private afterPrefillChunk(job: PrefillJob, logits: Float32Array): void {
    const seq = job.seq!;
    const B = this.engine.runner.kvShape.blockTokens;
    if (seq.length < job.promptIds.length) {
      const full = Math.floor(seq.length / B);
      if (full > job.sentBlocks) {
        job.sink.send(seq, job.sentBlocks, full - job.sentBlocks, seq.length);
        job.sentBlocks = full;
      }
      return;
    }
    this.prefillQueue.splice(this.prefillQueue.indexOf(job), 1);
    const firstToken = job.sampler.sample(logits, 0, this.engine.vocabSize);
    const total = blocksFor(seq.length, B);
    const prefillEnd = performance.now();
    const queueMs = job.startedAt! - job.enqueuedAt;
    const finishing = job.sink.finish(seq, job.sentBlocks, total - job.sentBlocks, firstToken, job.cachedTokens);
    if (!job.sharesDecodeSeq) this.releaseSeq(seq); // blocks are read; a remote sink owns the bytes now
    finishing.then(
      () => job.done({ firstToken, queueMs, prefillMs: job.computeMs, transferTailMs: performance.now() - prefillEnd, cachedTokens: job.cachedTokens }),
      (err: Error) => job.fail(err),
    );
  }

  /** One decode step over every running sequence (ready ones join first). */
  private async decodeStep(): Promise<boolean> {
    const now = performance.now();
    for (const req of this.decodes.values()) {
      if (req.status !== 'ready') continue;
      req.status = 'running';
      // The first token (from the prefill) goes out as the sequence joins the batch: posted to the
      // main thread at once, so the step below does not hold it back. The step is not skipped for
      // it either: on a unified worker every local prompt that completes admits a request, and a
      // loop that skipped the step whenever one joined ran a burst's queued prompts back to back
      // while the running batch waited (measured: 4-6 s between a request's first and second
      // token at a 9 req/s burst).
      if (this.accept(req, req.lastToken!, now - (req.kvDoneAt ?? now))) this.decodes.delete(req.requestId);
    }
    const batch = [...this.decodes.values()].filter((r) => r.status === 'running' && !r.cancelled && !r.paused);
    if (batch.length === 0) return false;
    if (this.opts.holdDecode?.()) {
      await new Promise<void>((resolve) => setTimeout(resolve, 10)); // asleep, not blocked: messages and the watchdog go on
      return true;
    }
    const t0 = performance.now();
    const logits = await this.engine.decode(batch.map((r) => ({ seq: r.seq, token: r.lastToken!.id })));
    const ms = performance.now() - t0;
    this.recordStep('decode', ms, batch.length, batch.length);
    const V = this.engine.vocabSize;
    batch.forEach((req, row) => {
      if (req.cancelled) return;
      const token = req.sampler.sample(logits, row * V, V);
      if (this.accept(req, token)) this.decodes.delete(req.requestId);
    });
    return true;
  }

  /** Applies the stop rules to a sampled token; emits it or finishes. Returns true when the request ended. */
  private accept(req: DecodeRequest, token: SampledToken, admitMs?: number): boolean {
    const p = req.sampling;
    const n = req.generated + 1;
    const eos = !p.ignore_eos && this.engine.config.generation.eos_token_ids.includes(token.id);
    if ((eos || p.stop_token_ids.includes(token.id)) && n > p.min_tokens) {
      req.finish('stop', token.id);
      this.releaseSeq(req.seq);
      return true;
    }
    req.generated = n;
    req.lastToken = token;
    req.emit([token], admitMs);
    if (n >= p.max_tokens || req.seq.length >= this.engine.maxModelLen) {
      req.finish('length');
      this.releaseSeq(req.seq);
      return true;
    }
    return false;
  }

  private recordStep(phase: 'prefill' | 'decode', ms: number, tokens: number, batch: number): void {
    this.recentStepMs.push(ms);
    if (this.recentStepMs.length > 32) this.recentStepMs.shift();
    if (phase === 'prefill') {
      this.recentPrefill.push({ tokens, ms });
      if (this.recentPrefill.length > 16) this.recentPrefill.shift();
    } else {
      this.recentDecodeSteps.push({ ms, batch });
      if (this.recentDecodeSteps.length > 16) this.recentDecodeSteps.shift();
      this.decodeStepWindow.push({ at: performance.now(), ms, batch });
      if (this.decodeStepWindow.length > DECODE_STEP_WINDOW_MAX) this.decodeStepWindow.shift();
      const prev = this.decodeStepMsByBatch.get(batch);
      this.decodeStepMsByBatch.set(batch, prev === undefined ? ms : prev + 0.2 * (ms - prev));
    }
    this.opts.onStep?.({ phase, ms, tokens, batch, assembleMs: this.engine.runner.lastTimings.assembleMs });
  }

  /**
   * Mean decode step time and batch over the last DECODE_STEP_WINDOW_MS: about one request's decode
   * lifetime, the span a TPOT (a mean per request) is taken over. The last 16 steps follow a burst
   * of the other worker's prefill passes on shared cores; a request decoding for 10 s sees them
   * come and go.
   */
  decodeStepMean(now = performance.now()): { ms: number; batch: number } | undefined {
    const w = this.decodeStepWindow;
    while (w.length > 0 && w[0].at < now - DECODE_STEP_WINDOW_MS) w.shift();
    if (w.length === 0) return undefined;
    return { ms: w.reduce((s, x) => s + x.ms, 0) / w.length, batch: w.reduce((s, x) => s + x.batch, 0) / w.length };
  }

  private failAll(err: Error): void {
    for (const job of this.prefillQueue.splice(0)) {
      job.sink.abort();
      job.fail(err);
      if (job.seq && !job.sharesDecodeSeq) this.releaseSeq(job.seq);
    }
    for (const [id, req] of this.decodes) {
      req.fail(err);
      this.decodes.delete(id);
      this.releaseSeq(req.seq);
    }
  }
}

