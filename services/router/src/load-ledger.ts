// What this router knows about each worker's load beyond its last report (mechanism, no policy):
// load reports lag by up to a heartbeat, so the router counts what it sent since — requests in
// flight, prompt tokens not yet prefilled, recent local prefill work — and measures the KV
// transfer cost from the prefill replies. placement.ts and admission.ts read it through views.
// Discounting what finished after a report compares the report's stamp (the worker's clock) with
// this router's clock: a skew between hosts only shifts how much is discounted, and the router's
// own count of what it has in flight stays a floor.
import type { WorkerInfo } from '@pdserve/common';
import { LOCAL_SHARE_WINDOW_MS, MAX_LOCAL_SHARE_WINDOW_MS, theilSen, type WorkerView } from './placement.ts';

/**
 * The decode steps placement anchors its step-time line to: the mean over the worker's last ~10 s
 * (about one request's decode lifetime, the span its TPOT averages over), else, from a worker that
 * does not report it, the median of its last 16 steps.
 */
function recentDecodeStep(l: WorkerInfo['load']): { batch: number; ms: number } | undefined {
  if (l.decode_step_ms_window !== undefined && l.decode_batch_window !== undefined) return { batch: l.decode_batch_window, ms: l.decode_step_ms_window };
  return latestDecodeStep(l);
}

/** The worker's last 16 decode steps: their median time and mean batch. */
function latestDecodeStep(l: WorkerInfo['load']): { batch: number; ms: number } | undefined {
  if (l.decode_step_ms !== undefined && l.decode_batch !== undefined) return { batch: l.decode_batch, ms: l.decode_step_ms };
  return undefined;
}

/** Remote prefills the transfer cost is fitted over. */
const TRANSFER_SAMPLES = 32;
const DEFAULT_PREFILL_CHUNK = 256;
/**
 * A heartbeat carries the load the worker's main thread last heard from its engine thread (which
 * reports at least every 200 ms): a report stamped at t describes the worker as of t - 200 ms or later.
 */
const REPORT_SLACK_MS = 250;

export class LoadLedger {
  /** Requests this router has in flight per worker id (either phase). */
  private readonly inflight = new Map<string, number>();
  /** Of those, the ones decoding there. */
  private readonly decoding = new Map<string, number>();
  /** Prompt tokens this router sent per worker whose prefill has not replied yet. */
  private readonly pendingPrefill = new Map<string, number>();
  /**
   * What finished here since recently (decodes ended, prompt tokens prefilled), with when: a load
   * report older than those still counts them, so a view subtracts what finished after the report.
   */
  private readonly finished = new Map<string, Array<{ at: number; decodes: number; tokens: number }>>();
  /** Local prefills placed per decode worker: when, and their estimated milliseconds of work. */
  private readonly localWork = new Map<string, Array<{ at: number; ms: number }>>();
  private outputMean: number | undefined;
  /**
   * The KV transfer time not hidden behind the prefill (the last chunk's blocks and their
   * messages, as the router measures it on the TTFT path) of the last TRANSFER_SAMPLES remote
   * prefills, as (last chunk's tokens, ms), and the line fitted through them (observeTransfer).
   */
  private readonly transfers: Array<[number, number]> = [];
  private transferFit: { fixedMs: number; msPerToken: number } = { fixedMs: 0, msPerToken: 0 };

  /** `now` is epoch milliseconds (load reports carry the worker's epoch time of the heartbeat). */
  constructor(private readonly now: () => number = () => Date.now()) {}

  private noteFinished(id: string, decodes: number, tokens: number): void {
    const list = this.finished.get(id) ?? [];
    list.push({ at: this.now(), decodes, tokens });
    if (list.length > 1024) list.shift();
    this.finished.set(id, list);
  }

  /** What finished on `id` after epoch ms `since`; forgets what is older than that. */
  private finishedSince(id: string, since: number): { decodes: number; tokens: number } {
    const list = this.finished.get(id);
    let decodes = 0;
    let tokens = 0;
    if (!list) return { decodes, tokens };
    while (list.length > 0 && list[0].at < since - REPORT_SLACK_MS) list.shift();
    for (const f of list) if (f.at >= since) { decodes += f.decodes; tokens += f.tokens; }
    return { decodes, tokens };
  }

  private add(m: Map<string, number>, id: string, d: number): void {
    const v = (m.get(id) ?? 0) + d;
    if (v <= 0) m.delete(id);
    else m.set(id, v);
  }

  /** Forgets workers that left the registry (what is still in flight on them is kept until it ends). */
  retain(ids: ReadonlySet<string>): void {
    for (const m of [this.finished, this.localWork]) for (const id of m.keys()) if (!ids.has(id)) m.delete(id);
  }

  /** Workers with any bookkeeping here (it must follow the registry, not grow forever). */
  get size(): number {
    return new Set([...this.inflight.keys(), ...this.pendingPrefill.keys(), ...this.finished.keys(), ...this.localWork.keys()]).size;
  }

  inflightOn(id: string): number {
    return this.inflight.get(id) ?? 0;
  }

  /** Workers with requests in flight from here (bookkeeping that must drain to 0). */
  get inflightWorkers(): number {
    return this.inflight.size;
  }

  /** A request starts: its decode worker and (when different) its prefill worker. Returns the release. */
  begin(decodeId: string, prefillId: string, promptTokens: number, localPrefillMs?: number): { prefilled(): void; ended(outputTokens?: number): void } {
    this.add(this.inflight, decodeId, 1);
    if (prefillId !== decodeId) this.add(this.inflight, prefillId, 1);
    this.add(this.decoding, decodeId, 1);
    this.add(this.pendingPrefill, prefillId, promptTokens);
    if (localPrefillMs !== undefined) {
      const list = this.localWork.get(decodeId) ?? [];
      list.push({ at: this.now(), ms: localPrefillMs });
      this.localWork.set(decodeId, list);
    }
    let prefilled = false;
    let ended = false;
    const prefilledOnce = () => {
      if (prefilled) return;
      prefilled = true;
      this.add(this.pendingPrefill, prefillId, -promptTokens);
      this.noteFinished(prefillId, 0, promptTokens);
    };
    return {
      prefilled: prefilledOnce,
      ended: (outputTokens?: number) => {
        if (ended) return;
        ended = true;
        if (outputTokens !== undefined) this.observeOutput(outputTokens);
        prefilledOnce();
        this.add(this.inflight, decodeId, -1);
        if (prefillId !== decodeId) this.add(this.inflight, prefillId, -1);
        this.add(this.decoding, decodeId, -1);
        this.noteFinished(decodeId, 1, 0);
      },
    };
  }

  /** A request finished with `tokens` output tokens (a moving average: how long requests decode here). */
  observeOutput(tokens: number): void {
    if (!(tokens >= 0) || !Number.isFinite(tokens)) return;
    this.outputMean = this.outputMean === undefined ? tokens : this.outputMean + 0.1 * (tokens - this.outputMean);
  }

  /** Mean output tokens of the requests finished recently; undefined before the first. */
  meanOutputTokens(): number | undefined {
    return this.outputMean;
  }

  /** A remote prefill's first token came `tailMs` after its compute ended; its last chunk held `lastChunkTokens`. */
  observeTransfer(lastChunkTokens: number, tailMs: number): void {
    if (!(lastChunkTokens > 0) || !(tailMs >= 0) || !Number.isFinite(tailMs)) return;
    this.transfers.push([lastChunkTokens, tailMs]);
    if (this.transfers.length > TRANSFER_SAMPLES) this.transfers.shift();
    // A robust line (Theil-Sen): the residual this measures also holds waits that have nothing to do
    // with the bytes (the decode worker finishing a local prefill chunk before it takes the KV), and
    // a least-squares line through a few such points put 250-1450 ms on a 150-token transfer whose
    // bytes take 30-80 ms here.
    const line = theilSen(this.transfers)!;
    this.transferFit = { fixedMs: Math.max(0, line.intercept), msPerToken: line.slope };
  }

  /** The fitted transfer cost: a fixed part (ms) and a part per token of the last chunk (ms/token); zeros before any sample. */
  transferCost(): { fixedMs: number; msPerToken: number } {
    return this.transferFit;
  }

  /** Share (0..1) of the decode worker's recent time taken by local prefills placed on it. */
  localShare(id: string, windowMs = LOCAL_SHARE_WINDOW_MS): number {
    const list = this.localWork.get(id);
    if (!list) return 0;
    const now = this.now();
    while (list.length > 0 && list[0].at < now - MAX_LOCAL_SHARE_WINDOW_MS) list.shift();
    if (list.length === 0) {
      this.localWork.delete(id);
      return 0;
    }
    const w = Math.min(windowMs, MAX_LOCAL_SHARE_WINDOW_MS);
    return Math.min(0.95, list.reduce((s, x) => s + (x.at >= now - w ? x.ms : 0), 0) / w);
  }

  /** The worker as the policies see it: its report, raised to what this router knows it sent since. */
  view(w: WorkerInfo): WorkerView {
    const l = w.load;
    const byBatch = new Map<number, number>();
    for (const [b, ms] of Object.entries(l.decode_step_ms_by_batch ?? {})) byBatch.set(Number(b), ms);
    // An older worker reports prompts, not tokens: count each queued prompt as a chunk.
    const reportedTokens = l.queued_prefill_tokens ?? l.queue_len * (l.prefill_chunk_tokens ?? DEFAULT_PREFILL_CHUNK);
    // The report still counts what this router saw finish after it was taken.
    const since = this.finishedSince(w.id, w.last_heartbeat_ms - REPORT_SLACK_MS);
    return {
      id: w.id,
      role: w.role,
      queuedPrefillTokens: Math.max(reportedTokens - since.tokens, this.pendingPrefill.get(w.id) ?? 0),
      prefillTokensPerS: l.prefill_tokens_per_s,
      batch: Math.max(l.running + l.waiting - since.decodes, this.decoding.get(w.id) ?? 0),
      decodeStepMsByBatch: byBatch,
      recentDecodeStep: recentDecodeStep(l),
      latestDecodeStep: latestDecodeStep(l),
      prefillChunkTokens: l.prefill_chunk_tokens ?? DEFAULT_PREFILL_CHUNK,
      localPrefillShare: this.localShare(w.id),
    };
  }
}
