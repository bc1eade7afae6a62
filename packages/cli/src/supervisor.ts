// Supervision of `pdserve up`'s workers (issue 10): a worker (or the planner) that dies is started
// again after a backoff, while the rest of the cluster keeps serving; one that keeps dying is given
// up on. Only the router's or Redis's death ends `up` (up.ts decides that; this module restarts).
//
// Policy (RestartPolicy): exponential backoff from baseDelayMs, doubling per restart inside the
// window, capped at maxDelayMs; at most `budget` restarts per child in any `windowMs`, after which
// the child is given up on (logged, never restarted again: a crash loop would only burn CPU the
// other workers need). Mechanism (RestartingChildren): watches each child's exit, counts the reason,
// waits, starts it again. Both take a clock and a timer so tests drive them with fake children.

export interface ExitLike {
  code: number | null;
  signal: NodeJS.Signals | string | null;
  /** The exit was asked for (the cluster is stopping): never restarted. */
  expected: boolean;
}

export interface ChildLike {
  readonly pid: number;
  readonly exited: Promise<ExitLike>;
}

export interface RestartPolicyOptions {
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Restarts allowed per child in any windowMs. */
  budget?: number;
  windowMs?: number;
}

export const DEFAULT_RESTART_POLICY: Required<RestartPolicyOptions> = { baseDelayMs: 500, maxDelayMs: 10_000, budget: 5, windowMs: 60_000 };

export type RestartDecision = { action: 'restart'; delayMs: number; attempt: number } | { action: 'give_up'; restarts: number };

/** The label of pdserve_worker_restarts_total's `reason`: the signal's name, else exit_<code>. */
export function exitReason(e: Pick<ExitLike, 'code' | 'signal'>): string {
  if (e.signal) return String(e.signal);
  return `exit_${e.code ?? 'unknown'}`;
}

/** Per-child restart history: when to restart next, or that the budget is spent. */
export class RestartPolicy {
  private readonly o: Required<RestartPolicyOptions>;
  private readonly history = new Map<string, number[]>();

  constructor(options: RestartPolicyOptions = {}) {
    this.o = { ...DEFAULT_RESTART_POLICY, ...options };
  }

  /** `name` died at `now`: restart it after delayMs, or give up. */
  onExit(name: string, now: number): RestartDecision {
    const recent = (this.history.get(name) ?? []).filter((t) => now - t < this.o.windowMs);
    if (recent.length >= this.o.budget) {
      this.history.set(name, recent);
      return { action: 'give_up', restarts: recent.length };
    }
    recent.push(now);
    this.history.set(name, recent);
    const attempt = recent.length;
    return { action: 'restart', attempt, delayMs: Math.min(this.o.maxDelayMs, this.o.baseDelayMs * 2 ** (attempt - 1)) };
  }
}

export interface SupervisionLog {
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface RestartingOptions {
  policy?: RestartPolicy;
  log: SupervisionLog;
  /** A restart is about to be scheduled (pdserve_worker_restarts_total). */
  onRestart?(role: string, reason: string): void;
  /** A child's budget is spent: it stays down. */
  onGiveUp?(name: string, role: string): void;
  now?: () => number;
  setTimer?: (fn: () => void, ms: number) => { cancel(): void };
}

interface Entry { name: string; role: string; start: () => ChildLike; child: ChildLike; timer?: { cancel(): void }; givenUp: boolean }

const realTimer = (fn: () => void, ms: number) => {
  const t = setTimeout(fn, ms);
  return { cancel: () => clearTimeout(t) };
};

/** Keeps children running: each one that exits unexpectedly is started again per the policy. */
export class RestartingChildren {
  private readonly entries = new Map<string, Entry>();
  private stopped = false;
  private readonly policy: RestartPolicy;
  private readonly now: () => number;
  private readonly setTimer: (fn: () => void, ms: number) => { cancel(): void };

  constructor(private readonly o: RestartingOptions) {
    this.policy = o.policy ?? new RestartPolicy();
    this.now = o.now ?? Date.now;
    this.setTimer = o.setTimer ?? realTimer;
  }

  /** Starts `name` (via `start`, called again for every restart) and supervises it. */
  add(name: string, role: string, start: () => ChildLike): ChildLike {
    const entry: Entry = { name, role, start, child: start(), givenUp: false };
    this.entries.set(name, entry);
    this.watch(entry);
    return entry.child;
  }

  /** `name` is supervised here (its exits are restarts, not failures). */
  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** The current process of `name` (a restart replaces it). */
  current(name: string): ChildLike | undefined {
    return this.entries.get(name)?.child;
  }

  givenUp(): string[] {
    return [...this.entries.values()].filter((e) => e.givenUp).map((e) => e.name);
  }

  /** No more restarts (the cluster is stopping); pending ones are cancelled. */
  stop(): void {
    this.stopped = true;
    for (const e of this.entries.values()) e.timer?.cancel();
  }

  private watch(entry: Entry): void {
    const child = entry.child;
    void child.exited.then((exit) => {
      if (this.stopped || exit.expected || entry.child !== child) return;
      const reason = exitReason(exit);
      const d = this.policy.onExit(entry.name, this.now());
      if (d.action === 'give_up') {
        entry.givenUp = true;
        this.o.log.error({ child: entry.name, role: entry.role, pid: child.pid, reason, restarts: d.restarts }, 'worker keeps dying; restart budget spent, giving up on it (the rest of the cluster keeps serving)');
        this.o.onGiveUp?.(entry.name, entry.role);
        return;
      }
      this.o.onRestart?.(entry.role, reason);
      this.o.log.warn({ child: entry.name, role: entry.role, pid: child.pid, reason, attempt: d.attempt, delay_ms: d.delayMs }, 'worker died; restarting it');
      entry.timer = this.setTimer(() => {
        entry.timer = undefined;
        if (this.stopped) return;
        try {
          entry.child = entry.start();
        } catch (err) {
          this.o.log.error({ child: entry.name, err: (err as Error).message }, 'worker restart failed');
          return;
        }
        this.watch(entry);
      }, d.delayMs);
    });
  }
}
