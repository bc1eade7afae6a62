// Live role changes of one worker. A command (`{prefix}:desired_role:{id}`, written by the planner
// or an operator, read with every heartbeat and at once on its `desired_role` hint) moves the
// worker between prefill, decode and unified without a restart: the engine, its weights and the
// scheduler stay; only what the worker accepts and advertises changes. The scheduler runs
// whatever it holds regardless of the role, so nothing has to be handed over:
//
//   1. apply: advertise the new role in Redis at once (a heartbeat plus a `state` hint, so routers
//      re-read within milliseconds) and take new work of the new kind from that moment;
//   2. grace: work of the old kind the router had already routed before it saw the new role (a
//      Decode.Generate waiting for KV room can precede its Prefill by seconds) is still taken
//      for graceMs; after that such calls get UNAVAILABLE;
//   3. settle: what the worker held of the old kind finishes (bounded by settleTimeoutMs, after
//      which the change is reported settled anyway and the leftovers simply run to completion:
//      cancelling them would fail client requests); `role_change.settled_ms` then appears in the
//      worker's record.
//
// Bad input never crashes the worker: an unknown role, a malformed command, or a command to a
// pinned worker is logged once per command, counted in pdserve_role_change_rejected_total and
// ignored. A command is carried out once (identified by its requested_ms and decision id).
import { canDecode, canPrefill, type DesiredRole, type DesiredRoleRead, type RoleChangeStatus, type RoleChangeRejectReason, type WorkerRole } from '@pdserve/common';
import type { Logger } from 'pino';

export interface RoleSwitchOptions {
  role: WorkerRole;
  pinned: boolean;
  graceMs: number;
  settleTimeoutMs: number;
  log: Logger;
  /** Advertises the role (and the change record) in Redis; resolves once the heartbeat went out. */
  advertise(role: WorkerRole, change: RoleChangeStatus): Promise<boolean>;
  /** Work of each kind the worker still holds. */
  held(): { prefill: number; decode: number };
  onChanged(from: WorkerRole, to: WorkerRole): void;
  onRejected(reason: RoleChangeRejectReason): void;
  isStopping(): boolean;
  /** Clock and sleep (tests of this module may drive them). */
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

export class RoleSwitch {
  #role: WorkerRole;
  #grace: Record<'prefill' | 'decode', number> = { prefill: 0, decode: 0 };
  #seen = new Set<string>();
  #chain: Promise<void> = Promise.resolve();
  #last: RoleChangeStatus | undefined;
  readonly #o: RoleSwitchOptions;
  readonly #now: () => number;
  readonly #sleep: (ms: number) => Promise<void>;

  constructor(o: RoleSwitchOptions) {
    this.#o = o;
    this.#role = o.role;
    this.#now = o.now ?? Date.now;
    this.#sleep = o.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms)));
  }

  get role(): WorkerRole {
    return this.#role;
  }

  get lastChange(): RoleChangeStatus | undefined {
    return this.#last;
  }

  /** Whether a new call of this kind is taken now: the role allows it, or its grace period runs. */
  accepts(kind: 'prefill' | 'decode'): boolean {
    const byRole = kind === 'prefill' ? canPrefill(this.#role) : canDecode(this.#role);
    return byRole || this.#now() < this.#grace[kind];
  }

  /** Resolves when every change started so far has settled. */
  idle(): Promise<void> {
    return this.#chain;
  }

  /** Handles what the registration read from the worker's desired-role key. */
  handle(read: DesiredRoleRead): void {
    if (read.kind === 'none') return;
    if (read.kind === 'invalid') {
      if (this.#remember(`invalid:${read.token}`)) {
        this.#o.log.error({ error: read.error }, 'ignoring an invalid role-change command');
        this.#o.onRejected('invalid');
      }
      return;
    }
    const c = read.command;
    if (!this.#remember(`${c.requested_ms}:${c.decision_id ?? ''}:${c.role}`)) return;
    if (c.role === this.#role) return;
    if (this.#o.pinned) {
      this.#o.log.warn({ to: c.role, requested_by: c.requested_by }, 'ignoring a role-change command: this worker is pinned (--pin-role)');
      this.#o.onRejected('pinned');
      return;
    }
    if (this.#o.isStopping()) {
      this.#o.onRejected('stopping');
      return;
    }
    // Applied at once (the next call sees the new role); the settling runs in the background.
    const settling = this.#change(c).catch((err: unknown) => {
      this.#o.log.error({ err: (err as Error).message }, 'role change failed');
    });
    this.#chain = Promise.all([this.#chain, settling]).then(() => undefined);
  }

  /** True the first time a key is seen; the set is bounded (old commands are long gone by then). */
  #remember(key: string): boolean {
    if (this.#seen.has(key)) return false;
    if (this.#seen.size >= 256) this.#seen.clear();
    this.#seen.add(key);
    return true;
  }

  async #change(c: DesiredRole): Promise<void> {
    const from = this.#role;
    const to = c.role;
    if (from === to || this.#o.isStopping()) return;
    const now = this.#now();
    // Kinds the old role took and the new one does not: keep taking stragglers for a while.
    if (canPrefill(from) && !canPrefill(to)) this.#grace.prefill = now + this.#o.graceMs;
    if (canDecode(from) && !canDecode(to)) this.#grace.decode = now + this.#o.graceMs;
    this.#role = to;
    const change: RoleChangeStatus = { from, to, requested_ms: c.requested_ms, applied_ms: now };
    if (c.decision_id) change.decision_id = c.decision_id;
    this.#last = change;
    this.#o.onChanged(from, to);
    const advertised = await this.#o.advertise(to, change);
    this.#o.log.info({ from, to, decision_id: c.decision_id, reason: c.reason, requested_by: c.requested_by, since_request_ms: now - c.requested_ms, advertised }, 'role changed');

    const oldKinds = (['prefill', 'decode'] as const).filter((k) => (k === 'prefill' ? canPrefill(from) && !canPrefill(to) : canDecode(from) && !canDecode(to)));
    const deadline = now + this.#o.settleTimeoutMs;
    const holding = () => oldKinds.reduce((n, k) => n + this.#o.held()[k], 0);
    // Settled once the grace period is over and nothing of the old kind is left.
    while (this.#now() < deadline && (holding() > 0 || oldKinds.some((k) => this.#now() < this.#grace[k]))) await this.#sleep(50);
    const left = holding();
    const settled: RoleChangeStatus = { ...change, settled_ms: this.#now() };
    if (this.#last === change) this.#last = settled;
    if (left > 0) this.#o.log.warn({ from, to, still_running: left }, 'role change settled by timeout; the old work still held runs to completion');
    else this.#o.log.info({ from, to, settle_ms: settled.settled_ms! - now }, 'role change settled: the old work is finished');
    if (this.#role === to) await this.#o.advertise(to, settled);
  }
}
