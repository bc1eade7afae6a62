// How much each request decoding on a worker can still afford to wait (mechanism and arithmetic,
// no decision): the router follows every request it sent with a TPOT SLO, from admission through
// its first token to its last, and from that computes the tightest TPOT slack on each worker.
// admission.ts decides with it; placement.ts sends a prompt elsewhere with it.
//
// Why: a request's TPOT is (time from its first token to its last) / (tokens - 1), so it holds every
// stall its decode worker takes while it runs: each prompt the worker prefills locally stops the
// whole batch for the prompt's compute time. A TPOT estimate made at admission (the step time)
// cannot see the prompts admitted after it. What admission can see is the budget of the requests
// already running: request i, `elapsed` ms after its first token with `done` tokens of `expected`,
// meets its SLO if
//   elapsed + (stalls to come) + (expected - done) x step <= slo x (expected - 1)
// (the estimated terms, the stalls and the steps to come, judged with a margin for their error)
// so a new prompt that would stall the worker for `stall` ms fits if stall <= that slack for every
// request there (DistServe's and Sarathi's stall budget, judged per request). The slack is large
// at sustainable load (a chat request decoding at 80 ms per token against 150 ms has seconds of it)
// and runs out only when prompts arrive faster than the batch can absorb their stalls.
//
// Bounded: an entry lives from admission to the request's end (at most the worker's sequence
// slots, which admission enforces, plus prompts in flight).

/** One request's decode progress, as this router saw it. */
interface Tracked {
  /** TPOT SLO, ms. */
  sloMs: number;
  /** Output tokens it is expected to produce (its limit when it ignores EOS, else min(limit, typical)). */
  expected: number;
  /** performance.now() at its first token; undefined while its prompt is still queued or prefilling. */
  firstAt?: number;
  /** Output tokens received so far. */
  done: number;
  /** Ms its own prompt stalls the worker's batch (a local prefill; 0 when prefilled elsewhere). */
  stallMs: number;
  /** Admission order on this router (a worker prefills its queue first come, first served). */
  seq: number;
}

/** The tightest slack on one worker, ms, and how many requests it was taken over. */
export interface WorkerSlack {
  slackMs: number;
  requests: number;
}

export class DecodeBudgets {
  private readonly byWorker = new Map<string, Set<Tracked>>();
  private seq = 0;

  constructor(private readonly now: () => number = () => performance.now()) {}

  /**
   * Follows a request admitted onto `workerId`'s batch. Returns the hooks its stream calls: tokens
   * received (the first one starts its TPOT clock) and its end (any way out).
   */
  track(workerId: string, sloMs: number, expected: number, stallMs = 0): { tokens(n: number): void; ended(): void } {
    const t: Tracked = { sloMs, expected: Math.max(2, expected), done: 0, stallMs: Math.max(0, stallMs), seq: ++this.seq };
    const set = this.byWorker.get(workerId) ?? new Set<Tracked>();
    set.add(t);
    this.byWorker.set(workerId, set);
    return {
      tokens: (n: number) => {
        if (t.firstAt === undefined && n > 0) t.firstAt = this.now();
        t.done += n;
        // Running past the expectation (it ignored a typical length): at least one more token.
        if (t.done >= t.expected) t.expected = t.done + 1;
      },
      ended: () => {
        set.delete(t);
        if (set.size === 0 && this.byWorker.get(workerId) === set) this.byWorker.delete(workerId);
      },
    };
  }

  /** Requests followed on `workerId` (tests and bookkeeping checks). */
  count(workerId: string): number {
    return this.byWorker.get(workerId)?.size ?? 0;
  }

  /** Workers with any request followed (must drain to 0). */
  get workers(): number {
    return this.byWorker.size;
  }

  /**
   * The least stall (ms) any request on `workerId` can still take and meet its TPOT SLO, if every
   * remaining token costs `stepMs` and the prompts queued there stall the batch for their prefill
   * time; the time still to come is judged with `margin` for the estimates' error.
   *
   * Which queued prompts stall whom: a request decoding now pays for every prompt queued there (at
   * least `committedStallMs`, the worker's queued prompt tokens at its prefill rate, which also
   * counts requests this router does not follow). A request whose prompt is still queued has not
   * started its TPOT clock: the prompts ahead of it count towards its TTFT, and only those admitted
   * after it stall it. undefined: no request with a TPOT SLO is followed there.
   */
  slack(workerId: string, stepMs: number, committedStallMs: number, margin: number): WorkerSlack | undefined {
    const set = this.byWorker.get(workerId);
    if (!set || set.size === 0) return undefined;
    const now = this.now();
    // Prompts not started yet, in admission order, and the stall of those admitted after each.
    const queued = [...set].filter((t) => t.firstAt === undefined).sort((a, b) => a.seq - b.seq);
    const behind = new Map<Tracked, number>();
    let after = 0;
    for (let i = queued.length - 1; i >= 0; i--) {
      behind.set(queued[i]!, after);
      after += queued[i]!.stallMs;
    }
    const committed = Math.max(committedStallMs, after);
    let slackMs = Infinity;
    for (const t of set) {
      const started = t.firstAt !== undefined;
      const elapsed = started ? now - t.firstAt! : 0;
      const remaining = started ? t.expected - t.done : t.expected - 1;
      // The time already spent is measured; only what is still to come is an estimate, so only it
      // is judged with the margin (a request near its end has little left to be wrong about).
      const toCome = remaining * stepMs + (started ? committed : behind.get(t)!);
      const s = t.sloMs * (t.expected - 1) - elapsed - toCome / margin;
      if (s < slackMs) slackMs = s;
    }
    return { slackMs, requests: set.size };
  }
}

/**
 * Output tokens a request is expected to produce: its limit when it ignores EOS (it will run to
 * it), else its limit capped by the typical output of recent requests (a chat turn with the
 * model's whole context as its limit stops long before it), never fewer than 2.
 */
export function expectedOutputTokens(maxTokens: number, ignoreEos: boolean, typical: number | undefined): number {
  if (ignoreEos || typical === undefined || !(typical > 0)) return Math.max(2, maxTokens);
  return Math.max(2, Math.min(maxTokens, Math.round(typical)));
}
