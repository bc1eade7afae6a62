// Where a request's prompt is prefilled: the one place that decides it (policy). The mechanism —
// the gRPC calls, the KV transfer — is cluster-backend.ts; admission (whether to take the request at
// all) is admission.ts, which judges the estimates made here.
//
//   remote: a dedicated prefill worker runs the prompt and streams its KV blocks to the decode worker
//           (no prefill work lands on the decode worker's running batch; the transfer costs time).
//   local:  the decode worker prefills the prompt itself, in chunks between the decode steps of its
//           running batch (no transfer; every chunk stalls that batch for the chunk's duration).
//
// `auto` (the default) compares the two on measured numbers, the way llm-d's P/D decider and
// DistServe's placement reason:
//   TTFT(remote on p) = (queued prompt tokens on p + n) / p's prefill rate + transfer(last chunk) + one decode step
//   TTFT(local)       = (queued prompt tokens on d + n) / d's prefill rate + one decode step per chunk
//   TPOT(d)           = d's step time at the batch it would have (its table's line, at the level
//                       of its latest steps: decodeStepMs)
// and takes the faster, unless the prompt is longer than the local threshold or a local prefill
// would push the running batch's TPOT, step / (1 - share of d's time spent prefilling locally),
// past its SLO (the headroom check: where this router follows requests with a TPOT SLO on d,
// whether every one of them can take this prompt's stall within its SLO, decode-budget.ts; else
// the share below). The share of time is counted over a window about one
// request's decode lifetime long (localShareWindowMs: its output tokens at the step time, within
// LOCAL_SHARE_WINDOW_MS..MAX_LOCAL_SHARE_WINDOW_MS), since TPOT is an average over that lifetime.
//
// Prefix-aware: `n` above is the prompt tokens a worker must still compute, i.e. less the leading
// tokens its prefix cache is expected to hold (WorkerView.cachedTokens, from the workers' block-hash
// events: prefix-index.ts). So a prefill worker holding the prompt's system prompt wins unless its
// queue costs more time than the hit saves: cached tokens are weighed against load in one unit,
// milliseconds of TTFT. The decode worker is chosen first (decodeScore): by load, and for a unified
// worker, which prefills its own prompts, a hit counts as load taken off (a whole prompt cached is
// worth PREFIX_HIT_WEIGHT requests less: on CPU a prompt's prefill costs its TTFT far more than
// sharing decode steps with a running request does). The index is a hint; workers verify the tokens of every reused block.
import type { WorkerRole } from '@pdserve/common';

export const PLACEMENT_MODES = ['auto', 'remote', 'local'] as const;
export type PlacementMode = (typeof PLACEMENT_MODES)[number];
export type PlacementWhere = 'remote' | 'local';

/**
 * Why a placement was chosen (the `reason` label of pdserve_prefill_placement_total):
 *   forced            --prefill-placement remote|local
 *   no_prefill_worker no healthy dedicated prefill worker: the decode worker prefills
 *   unified           the decode worker is unified and no dedicated prefill worker exists
 *   over_threshold    the prompt is longer than --local-prefill-max-tokens
 *   tpot_headroom     a local prefill would push the decode worker's TPOT past the SLO
 *   faster            the estimated TTFT is lower here
 */
export const PLACEMENT_REASONS = ['forced', 'no_prefill_worker', 'unified', 'over_threshold', 'tpot_headroom', 'faster'] as const;
export type PlacementReason = (typeof PLACEMENT_REASONS)[number];

/** Shortest window over which a decode worker's local prefill share is counted, ms. */
export const LOCAL_SHARE_WINDOW_MS = 4000;
/** Longest such window, ms (and how long the ledger keeps local prefill work). */
export const MAX_LOCAL_SHARE_WINDOW_MS = 30_000;

/**
 * The window over which a local prefill's stall is weighed against the running batch's TPOT: one
 * request's decode lifetime (its output tokens at the batch's step time). TPOT is the mean gap over
 * a request's whole output, so a prompt's stall is spread over that lifetime. A 4 s window
 * counted a chat prompt's ~0.4 s stall against ~40 tokens where the requests it stalled decode ~100
 * (measured: 10 of 44 chat prompts at 4-10 req/s sent remote for TPOT headroom while the decode
 * worker's TPOT p99 stayed under the SLO).
 */
export function localShareWindowMs(outputTokens: number | undefined, stepMs: number | undefined): number {
  if (!(outputTokens! > 0) || !(stepMs! > 0)) return LOCAL_SHARE_WINDOW_MS;
  return Math.min(MAX_LOCAL_SHARE_WINDOW_MS, Math.max(LOCAL_SHARE_WINDOW_MS, outputTokens! * stepMs!));
}
/** Without a TPOT SLO, local prefills may take at most this share of a busy decode worker's time. */
export const MAX_LOCAL_SHARE_WITHOUT_SLO = 0.5;
/** Fraction of the TPOT SLO a local prefill may use up (the rest is margin for the estimate's error). */
export const TPOT_HEADROOM_MARGIN = 0.8;
/** Rate assumed for a comparison before any worker has measured one (never used to refuse a request). */
const ASSUMED_PREFILL_TOKENS_PER_S = 1000;

/** What the policy needs to know of one worker: its reports plus what this router sent it since. */
export interface WorkerView {
  id: string;
  role: WorkerRole;
  /** Prompt tokens ahead of a new prompt here. */
  queuedPrefillTokens: number;
  /** Measured prefill rate, tokens/s; undefined before its first prefill. */
  prefillTokensPerS?: number;
  /** Sequences decoding (or about to) here. */
  batch: number;
  /** Measured decode step time, ms, by batch size. */
  decodeStepMsByBatch: ReadonlyMap<number, number>;
  /**
   * The worker's recent decode steps: their mean time and batch over its last ~10 s (from an older
   * worker, the median of its last 16 steps). Fresher than the table, whose entry for a size only
   * moves while the batch is that size (decodeStepMs).
   */
  recentDecodeStep?: { batch: number; ms: number };
  /**
   * Its last 16 decode steps: their median time and mean batch. A second anchor for decodeStepMs,
   * seconds fresher than recentDecodeStep when a burst starts (the 10 s window then still holds the
   * quiet steps before it).
   */
  latestDecodeStep?: { batch: number; ms: number };
  prefillChunkTokens: number;
  /** Share (0..1) of this worker's recent time taken by local prefills this router placed on it, over `localShareWindowMs`. */
  localPrefillShare: number;
  /** The window that share was counted over, ms (LOCAL_SHARE_WINDOW_MS when absent). */
  localShareWindowMs?: number;
  /** Leading prompt tokens this worker's prefix cache is expected to hold for this request (0 unknown). */
  cachedTokens?: number;
  /**
   * Ms of stall the most constrained request decoding here can still take within its TPOT SLO
   * (decode-budget.ts); undefined when no request here has a TPOT SLO.
   */
  tpotSlackMs?: number;
}

export interface PlacementInput {
  promptTokens: number;
  /** The decode worker this request will decode on (chosen before placement). */
  decode: WorkerView;
  /** Healthy dedicated prefill workers (never the decode worker itself). */
  prefillers: readonly WorkerView[];
  /**
   * Measured KV transfer time not hidden behind the prefill: a fixed part plus a cost per token of
   * the prompt's last chunk (earlier chunks' blocks stream while later chunks compute).
   */
  transfer: { fixedMs: number; msPerToken: number };
  /** The request's TPOT SLO, ms. */
  tpotSloMs?: number;
}

export interface PlacementConfig {
  mode: PlacementMode;
  /** Prompts longer than this are never prefilled locally in auto mode (undefined: no limit). */
  localMaxTokens?: number;
}

export interface Placement {
  where: PlacementWhere;
  /** The worker that prefills: a dedicated prefill worker (remote) or the decode worker (local). */
  prefillWorker: string;
  reason: PlacementReason;
  /** Estimated time to first token, ms; undefined when nothing needed for it has been measured yet. */
  ttftMs?: number;
  /** Estimated TPOT of this request: the decode worker's step time at the batch it would have, ms; undefined when unmeasured. */
  tpotMs?: number;
  /** Estimated milliseconds of the decode worker's time this prefill takes (local only). */
  localPrefillMs?: number;
  /** Prompt tokens the chosen prefilling worker is expected to serve from its prefix cache (0 when unset). */
  expectedCachedTokens?: number;
  /** What the TTFT estimate was built from (for the refusal message and logs): the prefill rate and the transfer, ms. */
  ttftBasis?: { prefillTokensPerS: number; transferMs: number };
}

/** Requests of load a whole prompt found in a unified worker's prefix cache is worth (decodeScore). */
export const PREFIX_HIT_WEIGHT = 2;

/** What decodeScore needs of a candidate decode worker. */
export interface DecodeCandidate {
  role: WorkerRole;
  load: { queue_len: number; running: number; waiting: number; free_kv_blocks: number; total_kv_blocks: number; prefix_cache_blocks?: number };
  /** Blocks its prefix cache holds by the latest events (fresher than load.prefix_cache_blocks, a heartbeat old). */
  heldBlocks?: number;
  /** Requests this router has in flight there beyond its last report. */
  inflight: number;
  /** Leading prompt tokens its prefix cache is expected to hold for this request. */
  cachedTokens: number;
  /**
   * A decode worker that may prefill this prompt itself (placement auto or local): its hit counts
   * as for a unified worker. A decode worker keeps the transferred KV of the prompts it decoded,
   * answers included, so a conversation's next turn finds its history there.
   */
  mayPrefillLocally?: boolean;
}

/**
 * The decode worker's score, lower is better: queued and running requests (reported plus in flight
 * from here), less its free KV share, less, when it would prefill the prompt itself (unified),
 * PREFIX_HIT_WEIGHT times the share of the prompt its prefix cache is expected to hold (a decode worker too when
 * the prompt may be prefilled locally). Among equals the worker holding fewer cached blocks
 * wins, so that new prefixes spread over the workers instead of evicting each other on one.
 */
export function decodeScore(c: DecodeCandidate, promptTokens: number): number {
  const l = c.load;
  const base = l.queue_len + l.running + l.waiting + c.inflight - l.free_kv_blocks / Math.max(1, l.total_kv_blocks);
  const prefillsHere = c.role === 'unified' || (c.role === 'decode' && c.mayPrefillLocally === true);
  const hit = prefillsHere && promptTokens > 0 ? PREFIX_HIT_WEIGHT * Math.min(1, c.cachedTokens / promptTokens) : 0;
  const spread = 1e-3 * Math.min(1, (c.heldBlocks ?? l.prefix_cache_blocks ?? 0) / Math.max(1, l.total_kv_blocks));
  return base - hit + spread;
}

/**
 * Step time at `batch`, from the worker's table of average step time per batch size: a robust
 * line through every size measured (Theil-Sen: the median of the pairwise slopes, never negative,
 * and the median intercept), since a CPU decode step is a fixed cost plus a cost per sequence.
 * Not the table's own entry at that size: one slow reading (a step that shared its core with a
 * prefill, a first run of a new shape) would make that size look slow for as long as admission,
 * refusing on it, kept the batch from reaching that size again. A negative slope (noise between
 * neighbouring small sizes) is not extrapolated into bigger batches looking faster, and no slope is
 * taken below `minSlope` (minStepSlopeMs).
 */
export function stepMsAt(table: ReadonlyMap<number, number>, batch: number, minSlope = 0): number | undefined {
  return atBatch(stepLine(table, minSlope), batch);
}

/** stepMsAt's line: Theil-Sen through the table's measured sizes, its slope at least `minSlope`. */
function stepLine(table: ReadonlyMap<number, number>, minSlope: number): { slope: number; intercept: number } | undefined {
  return theilSen([...table].filter(([b, ms]) => b >= 1 && ms > 0), minSlope);
}

function atBatch(line: { slope: number; intercept: number } | undefined, batch: number): number | undefined {
  return line && Math.max(0, line.intercept + line.slope * batch);
}

/**
 * The least a decode step can grow per sequence, ms: one more sequence in a step computes one more
 * token, and a prefill pass (many tokens through the same weights at once) is the cheapest way this
 * worker computes a token, so its measured per-token time is a floor (0 before it prefilled). It
 * matters where the table cannot say: a fresh worker's table holds the warmup's batch of 1, whose
 * flat line priced a burst's batch of 8 at the batch-1 step (measured: 40 ms predicted, 85-105 ms
 * between tokens).
 */
export function minStepSlopeMs(prefillTokensPerS: number | undefined): number {
  return prefillTokensPerS !== undefined && prefillTokensPerS > 0 ? 1000 / prefillTokensPerS : 0;
}

/**
 * A robust line through (x, y) points: the slope is the median of the pairwise slopes (never
 * negative), the intercept the median of y - slope * x. One wild point moves neither, where a
 * least-squares fit over a handful of noisy points can take any slope. undefined without points.
 */
export function theilSen(points: ReadonlyArray<readonly [number, number]>, minSlope = 0): { slope: number; intercept: number } | undefined {
  if (points.length === 0) return undefined;
  const slopes: number[] = [];
  for (let i = 0; i < points.length; i++) {
    for (let j = i + 1; j < points.length; j++) {
      const [xi, yi] = points[i]!;
      const [xj, yj] = points[j]!;
      if (xi !== xj) slopes.push((yj - yi) / (xj - xi));
    }
  }
  const slope = Math.max(minSlope, 0, slopes.length ? median(slopes) : 0);
  return { slope, intercept: median(points.map(([x, y]) => y - slope * x)) };
}

/** How far the recent steps may move the level from the table's line (a guard against a report of one odd step). */
const ANCHOR_SCALE_BOUNDS = [0.25, 4] as const;

/**
 * The worker's decode step time at `batch`: the level of its recent steps, plus the slope of
 * stepMsAt's line through its table for each sequence more (or less) than they ran with. The
 * table's entry for a batch size changes only while the batch is that size, so an entry measured
 * while the machine was slower (a first pass at a new shape, a burst of other work on the core)
 * stays until the batch returns to that size, and admission, refusing on it, keeps the batch from
 * ever returning (measured: 144 ms predicted at batch 6 while the admitted requests decoded at
 * 67 ms per token). Taking the level from the recent steps ages such entries out within a few
 * steps, in both directions. (Scaling the whole line by recent / line instead multiplied a line
 * that a few slow readings had tilted by a level they had raised: 1025 ms predicted at batch 7.)
 *
 * Two sets of recent steps give a level, and the slower wins: the last ~10 s (what a request's
 * TPOT averages over) and the last 16 steps. When a burst starts, the 10 s window is still mostly
 * the quiet steps before it (measured: batch 1.25 at 38 ms while the batch stood at 10 and its
 * steps took 100-130 ms), and admission priced the burst's batches at that level.
 */
export function decodeStepMs(w: Pick<WorkerView, 'decodeStepMsByBatch' | 'recentDecodeStep' | 'latestDecodeStep' | 'prefillTokensPerS'>, batch: number): number | undefined {
  const minSlope = minStepSlopeMs(w.prefillTokensPerS);
  const fit = stepLine(w.decodeStepMsByBatch, minSlope);
  const slope = fit?.slope ?? minSlope;
  const anchors = [w.recentDecodeStep, w.latestDecodeStep].filter((a): a is { batch: number; ms: number } => !!a && a.ms > 0 && a.batch >= 1);
  if (anchors.length === 0) return atBatch(fit, batch);
  return Math.max(...anchors.map((a) => {
    // One odd report cannot move the level by more than ANCHOR_SCALE_BOUNDS of the table's line.
    const onLine = atBatch(fit, a.batch);
    const level = onLine && onLine > 0 ? Math.min(ANCHOR_SCALE_BOUNDS[1] * onLine, Math.max(ANCHOR_SCALE_BOUNDS[0] * onLine, a.ms)) : a.ms;
    return Math.max(0, level + slope * (batch - a.batch));
  }));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function rateOf(w: WorkerView, fallback: number | undefined): { rate: number; measured: boolean } {
  if (w.prefillTokensPerS && w.prefillTokensPerS > 0) return { rate: w.prefillTokensPerS, measured: true };
  if (fallback && fallback > 0) return { rate: fallback, measured: true };
  return { rate: ASSUMED_PREFILL_TOKENS_PER_S, measured: false };
}

/** A placement with its TTFT estimate always filled in (from an assumed rate when nothing is measured). */
interface Option extends Placement {
  ttftMs: number;
  measured: boolean;
}

/** Expected cached prompt tokens on `w`, never the whole prompt (the last token is always computed). */
function cachedOf(w: WorkerView, n: number): number {
  return Math.max(0, Math.min(w.cachedTokens ?? 0, n - 1));
}

function transferMs(input: PlacementInput, p: WorkerView): number {
  const lastChunk = input.promptTokens - Math.floor((input.promptTokens - 1) / Math.max(1, p.prefillChunkTokens)) * p.prefillChunkTokens;
  return input.transfer.fixedMs + input.transfer.msPerToken * lastChunk;
}

/** Estimates for one prefill on a dedicated worker `p`. */
function remoteOption(input: PlacementInput, p: WorkerView): Option {
  const n = input.promptTokens;
  const d = input.decode;
  const { rate, measured } = rateOf(p, undefined);
  const step = decodeStepMs(d, d.batch + 1);
  const cached = cachedOf(p, n);
  const transfer = transferMs(input, p);
  return {
    where: 'remote', prefillWorker: p.id, reason: 'faster', measured, expectedCachedTokens: cached,
    ttftMs: ((p.queuedPrefillTokens + n - cached) / rate) * 1000 + transfer + (step ?? 0),
    ttftBasis: { prefillTokensPerS: rate, transferMs: transfer },
    tpotMs: step,
  };
}

/**
 * Share (0..0.95) of the decode worker's time its local prefills take over the window, this prompt's
 * included: what its running batch loses to them.
 */
function localShareWith(input: PlacementInput, localPrefillMs: number): number {
  return Math.min(0.95, input.decode.localPrefillShare + localPrefillMs / (input.decode.localShareWindowMs ?? LOCAL_SHARE_WINDOW_MS));
}

/** Estimates for a prefill on the decode worker itself. */
function localOption(input: PlacementInput): Option {
  const n = input.promptTokens;
  const d = input.decode;
  // Same model, same engine: before the decode worker measured a prefill of its own, a prefill
  // worker's rate is the best guess.
  const others = input.prefillers.map((p) => p.prefillTokensPerS).filter((r): r is number => !!r && r > 0);
  const { rate, measured } = rateOf(d, others.length ? Math.max(...others) : undefined);
  const step = decodeStepMs(d, d.batch + 1);
  const cached = cachedOf(d, n);
  const ahead = d.queuedPrefillTokens + n - cached;
  // The scheduler runs one decode step between prefill chunks while a batch is running.
  const chunks = Math.max(1, Math.ceil(ahead / Math.max(1, d.prefillChunkTokens)));
  const localPrefillMs = ((n - cached) / rate) * 1000;
  return {
    where: 'local', prefillWorker: d.id, reason: 'faster', measured, expectedCachedTokens: cached,
    ttftMs: (ahead / rate) * 1000 + (d.batch > 0 ? chunks : 1) * (step ?? 0),
    ttftBasis: { prefillTokensPerS: rate, transferMs: 0 },
    // This request's own prefill runs before its first token: it stalls the others, not itself
    // (the headroom check below keeps the others' TPOT). Dividing by the share of time the
    // worker's prompts take, as the headroom check does, made admission refuse chat requests at a
    // predicted 136-157 ms whose admitted peers decoded at p99 99-131 ms (BENCHMARKS.md, issue 8,
    // 2026-12-07, later): not kept.
    tpotMs: step,
    localPrefillMs,
  };
}

/**
 * Whether a local prefill leaves the decode worker's running batch within its TPOT SLO (with
 * margin): the batch decodes in the time the local prefills, this one included, leave it.
 */
function fitsTpotHeadroom(input: PlacementInput, local: Option): boolean {
  const d = input.decode;
  if (d.batch === 0) return true; // nothing running to stall
  // The running requests' own budgets, where known: the exact test (admission refuses on it).
  if (d.tpotSlackMs !== undefined) return (local.localPrefillMs ?? 0) <= d.tpotSlackMs;
  const share = localShareWith(input, local.localPrefillMs ?? 0);
  const step = decodeStepMs(d, d.batch + 1);
  if (input.tpotSloMs === undefined || step === undefined) return share <= MAX_LOCAL_SHARE_WITHOUT_SLO;
  return step / (1 - share) <= input.tpotSloMs * TPOT_HEADROOM_MARGIN;
}

/** Decides where the prompt is prefilled; see the header for the rules. */
export function decidePlacement(input: PlacementInput, config: PlacementConfig): Placement {
  const done = (o: Option, reason: PlacementReason): Placement => {
    const { measured, ttftMs, ...rest } = o;
    return { ...rest, reason, ttftMs: measured ? ttftMs : undefined };
  };
  if (input.prefillers.length === 0) return done(localOption(input), input.decode.role === 'unified' ? 'unified' : 'no_prefill_worker');
  // The remote prefill worker that would finish first.
  const bestRemote = input.prefillers.map((p) => remoteOption(input, p)).reduce((a, b) => (b.ttftMs < a.ttftMs ? b : a));
  if (config.mode === 'remote') return done(bestRemote, 'forced');
  const local = localOption(input);
  if (config.mode === 'local') return done(local, 'forced');
  if (config.localMaxTokens !== undefined && input.promptTokens > config.localMaxTokens) return done(bestRemote, 'over_threshold');
  if (!fitsTpotHeadroom(input, local)) return done(bestRemote, 'tpot_headroom');
  return done(local.ttftMs <= bestRemote.ttftMs ? local : bestRemote, 'faster');
}
