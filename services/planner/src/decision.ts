// The planner's decision, as a pure function: measured load and speeds in, the prefill:decode
// split that maximizes goodput (requests per second served within the SLOs) out, with its reason.
// No I/O, no clock: the mechanism (planner.ts) gathers the inputs and carries the result out.
//
// The model, DistServe-style (each number below is measured; nothing is assumed about the model
// or the machine):
//
//   λ   arrival rate (req/s), Lp / Lo mean prompt / output tokens      (router statistics)
//   Rp  prefill tokens/s of one worker                                 (worker load reports)
//   step(b) = base + perSeq·b, decode step time at batch b, ms         (fitted to decode reports)
//
//   dedicated prefill worker  sustains  ρ·Rp/Lp req/s (ρ = target utilization, so prompts do
//                             not queue past the TTFT SLO); 0 when one prompt alone misses TTFT.
//   dedicated decode worker   runs at most B = max b with step(b) <= TPOT (capped by its
//                             sequence limit) and sustains B·1000/step(B)/Lo req/s.
//   unified worker            time-shares: at λu req/s it spends f = λu·Lp/Rp of its time on
//                             prompts, and a decode step then waits behind prefill chunks, so
//                             its effective TPOT is step(b)/(1-f). It sustains the largest λu with
//                             f <= ρ, enough decode throughput in the remaining time within the
//                             TPOT SLO, and a TTFT (prefill + one decode step of the batch that
//                             load keeps running per prefill chunk) within TTFT.
//
//   A split's capacity λmax: with dedicated prefill workers, they prefill every prompt and every
//   decode-capable worker decodes: min(prefill side, decode side); with no dedicated prefill
//   worker the unified ones prefill too. Demand = λ plus the prompt backlog queued on the workers
//   as the rate that clears it within one TTFT (queued tokens / Lp / TTFT). score = min(demand ·
//   (1+headroom), λmax): among splits that all serve the load, the one with room to spare wins.
//
// Anti-flapping: the split changes only when the best split's score beats the current one's by
// more than `hysteresis` (relative), never within `minDwellMs` of the last change, and never on
// fewer than `minRequests` observed requests or without speed measurements.
import type { WorkerRole } from '@pdserve/common';

export interface PlannerWorker {
  id: string;
  role: WorkerRole;
  /** Pinned workers keep their role; the planner counts them but never moves them. */
  pinned: boolean;
  /** Most sequences this worker holds at once. */
  maxSequences?: number;
}

export interface LoadStats {
  /** Requests per second arriving at the routers (summed over routers). */
  arrivalRate: number;
  promptTokens: number;
  outputTokens: number;
  /** Requests the statistics are based on. */
  requests: number;
  /** Fraction that met their SLOs, when known (reported in the reason only). */
  attainment?: number;
  /** Prompt tokens queued on the workers right now (a backlog the split must also clear). */
  queuedPrefillTokens?: number;
}

export interface PerfModel {
  /** Prompt tokens per second one worker prefills. */
  prefillTokensPerS?: number;
  /** Decode step time model, ms: step(b) = baseMs + perSeqMs·b. */
  decodeStep?: { baseMs: number; perSeqMs: number };
  /** Prompt tokens per prefill chunk (unified workers interleave one decode step per chunk). */
  prefillChunk: number;
}

export interface Slo {
  ttftMs: number;
  tpotMs: number;
}

export interface PlannerConfig {
  /** Relative score gain a new split must show before the planner moves (e.g. 0.15). */
  hysteresis: number;
  /** No change within this long after the last one. */
  minDwellMs: number;
  /** Fewer observed requests than this: keep the split. */
  minRequests: number;
  /** Prefill utilization the plan aims at (queueing before TTFT explodes), 0..1. */
  utilization: number;
  /** Spare capacity a split is credited for, relative to the load (0.25 = 25%). */
  headroom: number;
  /** Default sequence limit when a worker does not report one. */
  maxSequences: number;
}

export const DEFAULT_PLANNER_CONFIG: PlannerConfig = {
  hysteresis: 0.15, minDwellMs: 30_000, minRequests: 8, utilization: 0.8, headroom: 0.25, maxSequences: 16,
};

export interface PlannerInput {
  now: number;
  workers: PlannerWorker[];
  stats?: LoadStats;
  perf: PerfModel;
  slo: Slo;
  /** Epoch ms of the last change this planner (or its predecessor) made. */
  lastChangeMs?: number;
  config?: Partial<PlannerConfig>;
}

export interface RoleCounts {
  prefill: number;
  decode: number;
  unified: number;
}

export interface SplitEstimate {
  counts: RoleCounts;
  /** Requests/s the split serves within the SLOs (the model's estimate). */
  capacity: number;
  score: number;
}

export interface Decision {
  action: 'keep' | 'change';
  /** Role per worker in the target (every worker listed, pinned ones unchanged). */
  roles: Record<string, WorkerRole>;
  counts: RoleCounts;
  /** Workers whose role the decision changes. */
  changes: Array<{ id: string; from: WorkerRole; to: WorkerRole }>;
  reason: string;
  current?: SplitEstimate;
  best?: SplitEstimate;
}

export function countRoles(roles: Iterable<WorkerRole>): RoleCounts {
  const c: RoleCounts = { prefill: 0, decode: 0, unified: 0 };
  for (const r of roles) c[r]++;
  return c;
}

export function formatCounts(c: RoleCounts): string {
  const parts: string[] = [];
  if (c.prefill) parts.push(`${c.prefill}P`);
  if (c.decode) parts.push(`${c.decode}D`);
  if (c.unified) parts.push(`${c.unified}U`);
  return parts.join('+') || 'none';
}

const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

/** Decode: the largest batch within a step-time budget, and the tokens/s it yields. */
function decodeAtBudget(step: { baseMs: number; perSeqMs: number }, budgetMs: number, maxSeq: number): { batch: number; tokPerS: number } {
  const b = step.perSeqMs > 0 ? Math.floor((budgetMs - step.baseMs) / step.perSeqMs) : maxSeq;
  const batch = Math.min(maxSeq, b);
  if (batch < 1) return { batch: 0, tokPerS: 0 };
  return { batch, tokPerS: (batch * 1000) / (step.baseMs + step.perSeqMs * batch) };
}

interface Model {
  lp: number;
  lo: number;
  rp: number;
  step: { baseMs: number; perSeqMs: number };
  chunk: number;
  slo: Slo;
  rho: number;
}

function dedicatedPrefill(m: Model): number {
  if (m.lp / m.rp * 1000 > m.slo.ttftMs) return 0;
  return (m.rho * m.rp) / m.lp;
}

function dedicatedDecode(m: Model, maxSeq: number): number {
  return decodeAtBudget(m.step, m.slo.tpotMs, maxSeq).tokPerS / m.lo;
}

/** Requests/s one unified worker sustains within both SLOs (bisection over its prefill share). */
function unified(m: Model, maxSeq: number): number {
  const ok = (lambda: number): boolean => {
    const f = (lambda * m.lp) / m.rp;
    if (f > m.rho) return false;
    const d = decodeAtBudget(m.step, m.slo.tpotMs * (1 - f), maxSeq);
    if (d.tokPerS * (1 - f) < lambda * m.lo) return false;
    // The batch this load keeps running (Little's law at the stalled step time), and the decode
    // step that follows each prefill chunk of a new prompt.
    const stepAt = (b: number) => m.step.baseMs + m.step.perSeqMs * b;
    const need = Math.min(d.batch, Math.max(1, Math.ceil((lambda * m.lo * stepAt(d.batch)) / (1000 * (1 - f)))));
    const ttft = (m.lp / m.rp) * 1000 + Math.ceil(m.lp / m.chunk) * stepAt(need);
    return ttft <= m.slo.ttftMs;
  };
  let lo = 0;
  let hi = (m.rho * m.rp) / m.lp;
  if (!ok(lo + 1e-9)) return 0;
  for (let i = 0; i < 40; i++) {
    const mid = (lo + hi) / 2;
    if (ok(mid)) lo = mid;
    else hi = mid;
  }
  return lo;
}

/** Requests/s a split sustains within the SLOs, by the model above. */
export function splitCapacity(c: RoleCounts, m: Model, maxSeq: number): number {
  if (c.prefill + c.unified === 0 || c.decode + c.unified === 0) return 0;
  if (c.prefill > 0) {
    // Dedicated prefill workers take every prompt; unified ones then only decode.
    return Math.min(c.prefill * dedicatedPrefill(m), (c.decode + c.unified) * dedicatedDecode(m, maxSeq));
  }
  // Unified workers prefill (and decode); decode workers only decode.
  // (A unified worker that cannot meet the SLOs at any load fails every prompt it prefills.)
  const one = unified(m, maxSeq);
  if (one === 0) return 0;
  return c.decode > 0 ? Math.min(c.unified * one + c.decode * dedicatedDecode(m, maxSeq), c.unified * dedicatedPrefill(m)) : c.unified * one;
}

/** Every split of n movable workers into the three roles. */
function* splits(n: number): Generator<RoleCounts> {
  for (let p = 0; p <= n; p++) for (let d = 0; d <= n - p; d++) yield { prefill: p, decode: d, unified: n - p - d };
}

const add = (a: RoleCounts, b: RoleCounts): RoleCounts => ({ prefill: a.prefill + b.prefill, decode: a.decode + b.decode, unified: a.unified + b.unified });
const same = (a: RoleCounts, b: RoleCounts) => a.prefill === b.prefill && a.decode === b.decode && a.unified === b.unified;

/** Movable workers keep their role where the target allows; the rest take what is left (by id). */
export function assignRoles(workers: PlannerWorker[], target: RoleCounts): Record<string, WorkerRole> {
  const roles: Record<string, WorkerRole> = {};
  const left: RoleCounts = { ...target };
  const movable = workers.filter((w) => !w.pinned).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  for (const w of workers) if (w.pinned) roles[w.id] = w.role;
  const unplaced: PlannerWorker[] = [];
  for (const w of movable) {
    if (left[w.role] > 0) {
      roles[w.id] = w.role;
      left[w.role]--;
    } else unplaced.push(w);
  }
  for (const w of unplaced) {
    const role = (['prefill', 'decode', 'unified'] as const).find((r) => left[r] > 0)!;
    roles[w.id] = role;
    left[role]--;
  }
  return roles;
}

export function decide(input: PlannerInput): Decision {
  const cfg = { ...DEFAULT_PLANNER_CONFIG, ...input.config };
  const currentRoles: Record<string, WorkerRole> = Object.fromEntries(input.workers.map((w) => [w.id, w.role]));
  const currentCounts = countRoles(input.workers.map((w) => w.role));
  const keep = (reason: string, extra: Partial<Decision> = {}): Decision => ({
    action: 'keep', roles: currentRoles, counts: currentCounts, changes: [], reason, ...extra,
  });
  const movable = input.workers.filter((w) => !w.pinned);
  if (input.workers.length === 0) return keep('no workers');
  if (movable.length === 0) return keep('every worker is pinned');
  const s = input.stats;
  if (!s || s.requests < cfg.minRequests) return keep(`too few requests observed (${s?.requests ?? 0} < ${cfg.minRequests})`);
  if (!(s.arrivalRate > 0) || !(s.promptTokens > 0) || !(s.outputTokens > 0)) return keep('no load');
  const rp = input.perf.prefillTokensPerS;
  const step = input.perf.decodeStep;
  if (!rp || !(rp > 0) || !step || !(step.baseMs >= 0) || !(step.perSeqMs >= 0) || step.baseMs + step.perSeqMs <= 0) {
    return keep('no prefill or decode speed measured yet');
  }
  const m: Model = { lp: s.promptTokens, lo: s.outputTokens, rp, step, chunk: Math.max(1, input.perf.prefillChunk), slo: input.slo, rho: cfg.utilization };
  const seqs = input.workers.map((w) => w.maxSequences ?? cfg.maxSequences);
  const maxSeq = Math.min(...seqs);
  const pinned = countRoles(input.workers.filter((w) => w.pinned).map((w) => w.role));
  const backlog = (s.queuedPrefillTokens ?? 0) / m.lp / (input.slo.ttftMs / 1000);
  const demand = s.arrivalRate + backlog;
  const estimate = (counts: RoleCounts): SplitEstimate => {
    const capacity = splitCapacity(counts, m, maxSeq);
    return { counts, capacity: round(capacity, 3), score: Math.min(demand * (1 + cfg.headroom), capacity) };
  };
  const current = estimate(currentCounts);
  // Moves a split needs from the current one; among equal scores the fewest moves win.
  const moves = (c: RoleCounts) => (['prefill', 'decode', 'unified'] as const).reduce((n, r) => n + Math.max(0, c[r] - currentCounts[r]), 0);
  let best = current;
  for (const free of splits(movable.length)) {
    const e = estimate(add(pinned, free));
    const eps = 1e-9 * Math.max(1, best.score);
    if (e.score > best.score + eps || (Math.abs(e.score - best.score) <= eps && moves(e.counts) < moves(best.counts))) best = e;
  }
  const load = `load ${round(s.arrivalRate)} req/s${backlog > 0 ? ` + backlog ${Math.round(s.queuedPrefillTokens!)} tokens (${round(backlog)} req/s)` : ''} x ${Math.round(m.lp)} prompt + ${Math.round(m.lo)} output tokens; prefill ${Math.round(rp)} tok/s/worker, decode step ${round(step.baseMs)}+${round(step.perSeqMs, 3)}*b ms; SLO TTFT ${input.slo.ttftMs} ms TPOT ${input.slo.tpotMs} ms` +
    (s.attainment !== undefined ? `; attainment ${round(s.attainment * 100, 1)}%` : '');
  const versus = `${formatCounts(current.counts)} serves ${round(current.capacity)} req/s, ${formatCounts(best.counts)} ${round(best.capacity)} req/s`;
  if (same(best.counts, current.counts) || best.score <= current.score * (1 + cfg.hysteresis)) {
    return keep(`the current split is within ${cfg.hysteresis * 100}% of the best (${versus}; ${load})`, { current, best });
  }
  if (input.lastChangeMs !== undefined && input.now - input.lastChangeMs < cfg.minDwellMs) {
    return keep(`dwell: last change ${Math.round((input.now - input.lastChangeMs) / 1000)} s ago, < ${cfg.minDwellMs / 1000} s (${versus})`, { current, best });
  }
  const roles = assignRoles(input.workers, best.counts);
  const changes = input.workers.filter((w) => roles[w.id] !== w.role).map((w) => ({ id: w.id, from: w.role, to: roles[w.id]! }));
  const bound = current.capacity < demand ? 'the current split is overloaded' : 'more headroom';
  return {
    action: 'change', roles, counts: best.counts, changes, current, best,
    reason: `${formatCounts(current.counts)} -> ${formatCounts(best.counts)}: ${bound} (${versus}; ${load})`,
  };
}
