// Whether the router takes a request (policy): the one place that refuses. It judges the placement
// placement.ts chose (its TTFT and TPOT estimates, from measured numbers) against the request's SLO,
// and the cluster-wide state an operator or controller sets in Redis (`{prefix}:admission`).
// A refusal is a 503 with Retry-After and an OpenAI error code, decided before any gRPC call, so it
// answers in well under a few milliseconds; a request the estimate says cannot meet its SLO on the
// best placement is refused rather than queued (queueing it would make it, and those behind it,
// miss).
//
//   admission_closed     the cluster is closed (`{prefix}:admission` state closed)
//   admission_throttled  throttled: only onto an idle prefill worker
//   overloaded           the request has an SLO and the decode worker's sequence slots are all
//                        taken: it would wait for one with no bound on its TTFT
//   slo_ttft             the estimated TTFT, corrected by the estimates' measured error
//                        (estimate-calibration.ts), exceeds the SLO
//   slo_tpot             the decode worker's step time at the batch it would have exceeds the TPOT SLO,
//                        or prefilling the prompt there would stall a request already decoding past
//                        its own TPOT SLO (its slack: decode-budget.ts), or that batch is past
//                        batchLimit() of the largest the worker has measured a step at (twice it,
//                        or 2 past it after a refusal) and its estimated step is over
//                        BATCH_LIMIT_FROM_SLO_SHARE of the SLO
//
// Never refuses onto an idle cluster (nothing queued, nothing running): whatever the estimate says,
// waiting cannot make that request faster, and refusing everything would be a collapse.
import type { Admission } from '@pdserve/common';
import type { LatencySlo } from './backend.ts';
import type { Placement } from './placement.ts';

export const REFUSAL_CODES = ['admission_closed', 'admission_throttled', 'overloaded', 'slo_ttft', 'slo_tpot'] as const;
export type RefusalCode = (typeof REFUSAL_CODES)[number];

export interface Refusal {
  code: RefusalCode;
  message: string;
  retryAfterS: number;
}

export interface AdmissionInput {
  slo?: LatencySlo;
  placement: Placement;
  /** `{prefix}:admission`, when set. */
  cluster?: Admission;
  /** Prompt tokens ahead on the prefilling worker, and sequences decoding on the decode worker. */
  queuedPrefillTokens: number;
  decodeBatch: number;
  /** Sequences the decode worker can hold; undefined when it has not reported it. */
  decodeSeats?: number;
  /**
   * Measured over estimated TTFT of the recent admitted requests placed the same way
   * (estimate-calibration.ts); the estimate is judged times this. Default 1.
   */
  ttftCorrection?: number;
  /**
   * The tightest TPOT slack of the requests on the decode worker (decode-budget.ts: ms of stall the
   * most constrained one can still take within its SLO, SLACK_MARGIN on the time to come) and how many it was
   * taken over; undefined when none there has a TPOT SLO. A local placement's prefill
   * (placement.localPrefillMs) stalls all of them.
   */
  decodeSlack?: { slackMs: number; requests: number };
  /**
   * The largest batch the decode worker has measured a step at (0: none yet); undefined when it
   * does not report its steps by batch size.
   */
  largestMeasuredBatch?: number;
  /** This router refused a request within the last RECENT_REFUSAL_MS (the batch limit then grows by 2, not 2x). */
  refusedRecently?: boolean;
}

export interface AdmissionConfig {
  /** false: only the cluster-wide state in Redis refuses (--admission off). */
  sloAdmission: boolean;
}

const MAX_RETRY_AFTER_S = 30;
/**
 * An estimate must stay within this fraction of the SLO: estimates are averages of recent
 * measurements, and a request admitted at the edge misses on any noise (or on the requests
 * admitted after it, which grow the batch it decodes in).
 */
export const ADMISSION_MARGIN = 0.9;
/**
 * The same margin for the time still to come in a running request's TPOT slack (decode-budget.ts).
 * Looser than ADMISSION_MARGIN because it multiplies a request's whole remaining decode (100 steps
 * of 100 ms: 0.9 holds back 1.1 s, more than the stall of any chat prompt, so a batch stepping at
 * 87% of the SLO could take no prompt at all) and because the time already spent is measured.
 */
export const SLACK_MARGIN = 0.95;
/**
 * How far past the largest batch its worker has measured a step at admission lets a batch grow
 * (batchLimit). A step's time at a size never run there is an extrapolation, and on a busy machine
 * the cost per sequence is steeper than at the sizes measured while it was quiet: a burst onto a
 * fresh cluster was admitted to batch 7-10 per worker within 2 s, on a line through the warmup's
 * batch of 1 (40-60 ms predicted), and those requests then stepped at 100-200 ms. Each prompt a
 * worker prefills is followed by a step at its new batch, so the limit rises as fast as the worker
 * takes prompts.
 *
 * As TCP grows its window: by doubling (to twice the largest measured) while the router has refused
 * nothing for RECENT_REFUSAL_MS, and by MIN_BATCH_GROWTH once it has (a refusal, like a lost packet,
 * says the cluster is at its limit). Measured (BENCHMARKS.md, issue 8): a fixed step of 2 refused
 * requests of Poisson bunches at a sustainable 1.5 req/s (batch 7 on a worker that had measured 4,
 * batch 11 on one that had measured 8, where steps cost 40 + 4 ms per sequence up to batch 11);
 * doubling always cost the 9 req/s burst onto a fresh cluster its attainment (admitted requests
 * meeting the SLOs 84-95.5% in five runs, against 96-100% with the fixed step).
 */
export const MIN_BATCH_GROWTH = 2;
/** How long after one of this router's refusals batches grow by MIN_BATCH_GROWTH instead of doubling. */
export const RECENT_REFUSAL_MS = 10_000;

/** The largest batch admission lets a worker reach that has measured a step at batch `measured` at most. */
export function batchLimit(measured: number, refusedRecently: boolean): number {
  return refusedRecently ? measured + MIN_BATCH_GROWTH : Math.max(measured + MIN_BATCH_GROWTH, 2 * measured);
}
/**
 * The limit above acts only where the extrapolation could break the SLO: when the estimated step
 * at the new batch is more than this share of the TPOT SLO. Under that burst the steps ran 2-4x
 * their estimates; an estimate under a quarter of the SLO stays within it even 4x off (a small or
 * fast model, whose steps are a few ms against a 150-200 ms SLO, is never limited). Without an
 * estimate (nothing measured yet) it does not act either: admission never refuses on nothing.
 */
export const BATCH_LIMIT_FROM_SLO_SHARE = 0.25;

/** Seconds a client should wait: about how much longer than the SLO the queue ahead would take. */
function retryAfter(excessMs: number): number {
  return Math.min(MAX_RETRY_AFTER_S, Math.max(1, Math.ceil(excessMs / 1000)));
}

/** ", prefilling at R tokens/s, transfer T ms": what the estimate assumed, so a refusal can be checked. */
function basis(p: Placement): string {
  const b = p.ttftBasis;
  if (!b) return '';
  return `, prefilling at ${Math.round(b.prefillTokensPerS)} tokens/s${p.where === 'remote' ? `, KV transfer ${Math.round(b.transferMs)} ms` : ''}`;
}

/** undefined: admit. Otherwise the refusal to send. */
export function judgeAdmission(input: AdmissionInput, config: AdmissionConfig): Refusal | undefined {
  const cluster = input.cluster;
  const why = cluster?.reason ? `: ${cluster.reason}` : '';
  if (cluster?.state === 'closed') return { code: 'admission_closed', message: `the cluster is not admitting requests${why}`, retryAfterS: 5 };
  if (cluster?.state === 'throttled' && input.queuedPrefillTokens > 0) {
    return { code: 'admission_throttled', message: `the cluster is throttling admissions${why}`, retryAfterS: 1 };
  }
  if (!config.sloAdmission) return undefined;
  const idle = input.queuedPrefillTokens === 0 && input.decodeBatch === 0;
  if (idle) return undefined;
  const slo = input.slo;
  if (!slo) return undefined; // no latency target: waiting (the decode worker's bounded reservation queue) is fine
  if (input.decodeSeats !== undefined && input.decodeBatch >= input.decodeSeats) {
    return { code: 'overloaded', message: `every one of the decode worker's ${input.decodeSeats} sequence slots is taken (${input.decodeBatch} sequences decoding or about to)`, retryAfterS: 1 };
  }
  const p = input.placement;
  const correction = input.ttftCorrection ?? 1;
  const ttftMs = p.ttftMs === undefined ? undefined : p.ttftMs * correction;
  if (slo.ttftMs !== undefined && ttftMs !== undefined && ttftMs > slo.ttftMs * ADMISSION_MARGIN) {
    const corrected = correction === 1 ? '' : `, the estimate times ${correction.toFixed(2)}, its measured error`;
    return {
      code: 'slo_ttft',
      message: `predicted time to first token ${Math.round(ttftMs)} ms (${input.queuedPrefillTokens} prompt tokens ahead on the ${p.where} prefill${basis(p)}${corrected}) leaves no margin within the SLO of ${slo.ttftMs} ms`,
      retryAfterS: retryAfter(ttftMs - slo.ttftMs * ADMISSION_MARGIN),
    };
  }
  const stallMs = p.where === 'local' ? p.localPrefillMs ?? 0 : 0;
  const slack = input.decodeSlack;
  if (slack && stallMs > 0 && stallMs > slack.slackMs) {
    return {
      code: 'slo_tpot',
      message: `prefilling this prompt (${Math.round(stallMs)} ms) on the worker that would decode it stalls its ${slack.requests} running requests, and the tightest of them has ${Math.max(0, Math.round(slack.slackMs))} ms left within its TPOT SLO`,
      retryAfterS: retryAfter(stallMs - slack.slackMs),
    };
  }
  const measured = input.largestMeasuredBatch;
  const limit = measured === undefined ? Infinity : batchLimit(measured, input.refusedRecently === true);
  const extrapolationMatters = slo.tpotMs !== undefined && p.tpotMs !== undefined && p.tpotMs > slo.tpotMs * BATCH_LIMIT_FROM_SLO_SHARE;
  if (extrapolationMatters && input.decodeBatch > 0 && input.decodeBatch + 1 > limit) {
    return {
      code: 'slo_tpot',
      message: `a batch of ${input.decodeBatch + 1} on the worker that would decode it is past ${limit}, the most admission lets it reach from the largest it has measured a step at (${measured}${input.refusedRecently ? ', after a refusal' : ''}): its time per output token there is unknown`,
      retryAfterS: 1,
    };
  }
  if (slo.tpotMs !== undefined && p.tpotMs !== undefined && input.decodeBatch > 0 && p.tpotMs > slo.tpotMs * ADMISSION_MARGIN) {
    return {
      code: 'slo_tpot',
      message: `predicted time per output token ${Math.round(p.tpotMs)} ms at a batch of ${input.decodeBatch + 1} leaves no margin within the SLO of ${slo.tpotMs} ms`,
      retryAfterS: 1,
    };
  }
  return undefined;
}
