// Worker registry on Redis (layout in keys.ts / docs/redis.md).
//
// WorkerRegistration (worker side): heartbeats `{prefix}:worker:{id}` (JSON, PX ttl) and keeps the id
// in `{prefix}:workers`. Heartbeats are strictly sequential (the next is scheduled when the previous
// finishes), every Redis error is logged and swallowed, and the client never queues commands while
// disconnected, so an outage costs nothing but log lines and the worker re-registers on the first
// heartbeat after Redis returns, even into an empty (restarted) Redis.
//
// WorkerDirectory (router side): polls the set + keys every pollMs (and right away when a hint
// arrives on `{prefix}:events`), prunes set members whose key expired, and serves an in-memory
// snapshot. When Redis is unreachable it keeps serving the last snapshot, flagged with stale_since.
import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import { errorMessage, silentLogger, type LogLike } from '../process/log-like.ts';
import { closeRedisClient, createRedisClient, redactUrl, waitForReady } from './client.ts';
import { parseDesiredRole, type DesiredRoleRead } from './control.ts';
import {
  assertWorkerId,
  canDecode,
  canPrefill,
  clusterKeys,
  emptyLoad,
  encodeWorkerRecord,
  parseAdmission,
  parsePdRatio,
  parseWorkerRecord,
  SCHEMA_VERSION,
  type Admission,
  type ClusterEvent,
  type ClusterKeys,
  type PdRatio,
  type RoleChangeStatus,
  type WorkerLoad,
  type WorkerRecord,
  type WorkerRole,
  type WorkerState,
} from './keys.ts';

// ---------------------------------------------------------------------------------------------
// Worker side

export interface WorkerIdentity {
  id: string;
  role: WorkerRole;
  grpc_address: string;
  metrics_url: string;
  model: string;
  pinned?: boolean;
}

export interface WorkerRegistrationOptions {
  redisUrl: string;
  prefix?: string;
  worker: WorkerIdentity;
  /** Called for every heartbeat. If it throws or takes longer than heartbeatMs, the last good report is sent. */
  getLoad: () => WorkerLoad | Promise<WorkerLoad>;
  /** Default 1000. */
  heartbeatMs?: number;
  /** PX on the worker key; must exceed heartbeatMs (default 3000, i.e. 3 missed beats). */
  ttlMs?: number;
  logger?: LogLike;
  /** State of the first heartbeat; default 'ready'. */
  initialState?: WorkerState;
  /**
   * Called with the worker's `{prefix}:desired_role:{id}` after every heartbeat (it is read in the
   * heartbeat's own transaction) and at once when a `desired_role` hint for this worker arrives on
   * `{prefix}:events` (one extra connection). Must not throw (a throw is logged).
   */
  onDesiredRole?: (read: DesiredRoleRead) => void;
}

export class WorkerRegistration {
  readonly id: string;
  readonly keys: ClusterKeys;
  readonly heartbeatMs: number;
  readonly ttlMs: number;
  readonly startedAt = Date.now();

  #opts: WorkerRegistrationOptions;
  #logger: LogLike;
  #redis: Redis | undefined;
  #state: WorkerState;
  #timer: NodeJS.Timeout | undefined;
  #chain: Promise<unknown> = Promise.resolve();
  #started = false;
  #stopped = false;
  #registered = false;
  #announce = true; // publish a 'registered' hint with the next successful beat
  #lastLoad: WorkerLoad = emptyLoad();
  #failures = 0;
  #lastBeatMs: number | undefined;
  #role: WorkerRole;
  #roleChange: RoleChangeStatus | undefined;
  #sub: Redis | undefined;

  constructor(opts: WorkerRegistrationOptions) {
    assertWorkerId(opts.worker.id);
    this.id = opts.worker.id;
    this.keys = clusterKeys(opts.prefix);
    this.heartbeatMs = opts.heartbeatMs ?? 1000;
    this.ttlMs = opts.ttlMs ?? 3000;
    if (!(this.heartbeatMs > 0) || !(this.ttlMs > this.heartbeatMs)) {
      throw new Error(`WorkerRegistration: need 0 < heartbeatMs (${this.heartbeatMs}) < ttlMs (${this.ttlMs})`);
    }
    this.#opts = opts;
    this.#logger = opts.logger ?? silentLogger;
    this.#state = opts.initialState ?? 'ready';
    this.#role = opts.worker.role;
  }

  get state(): WorkerState {
    return this.#state;
  }

  get role(): WorkerRole {
    return this.#role;
  }

  /**
   * Advertises a new role (and the record of the change) and heartbeats right away, with a `state`
   * hint so routers re-read at once. Resolves true if that beat reached Redis.
   */
  async setRole(role: WorkerRole, change?: RoleChangeStatus): Promise<boolean> {
    if (role !== this.#role || change !== this.#roleChange) {
      this.#role = role;
      this.#roleChange = change;
      this.#announce = true;
    }
    if (!this.#started || this.#stopped) return false;
    return this.heartbeat();
  }

  /** True while the most recent heartbeat reached Redis. */
  get registered(): boolean {
    return this.#registered;
  }

  /** Epoch ms of the last heartbeat that reached Redis. */
  get lastHeartbeatMs(): number | undefined {
    return this.#lastBeatMs;
  }

  /**
   * Connects, sends the first heartbeat and starts the loop. Resolves true if the first heartbeat
   * reached Redis; false otherwise (the loop keeps retrying; it never throws for Redis errors).
   */
  async start(): Promise<boolean> {
    if (this.#stopped) throw new Error('WorkerRegistration: start() after stop()');
    if (this.#started) return this.#registered;
    this.#started = true;
    this.#redis = createRedisClient({
      url: this.#opts.redisUrl,
      name: `pdserve-worker-${this.id}`,
      logger: this.#logger,
      commandTimeoutMs: Math.max(250, Math.min(this.heartbeatMs, 2000)),
    });
    if (this.#opts.onDesiredRole) this.#startSubscriber();
    await waitForReady(this.#redis, Math.min(this.ttlMs, 2000));
    const ok = await this.heartbeat();
    this.#schedule(this.heartbeatMs);
    return ok;
  }

  #startSubscriber(): void {
    const sub = createRedisClient({ url: this.#opts.redisUrl, name: `pdserve-worker-${this.id}-events`, logger: silentLogger });
    this.#sub = sub;
    // Subscribe on every (re)connect: the client has no offline queue and autoResubscribe is off.
    sub.on('ready', () => {
      sub.subscribe(this.keys.events).catch((err: unknown) => {
        this.#logger.debug({ err: errorMessage(err) }, 'events subscribe failed; role commands arrive with heartbeats');
      });
    });
    sub.on('message', (channel: string, message: string) => {
      if (channel !== this.keys.events || this.#stopped) return;
      let event: ClusterEvent | undefined;
      try {
        event = JSON.parse(message) as ClusterEvent;
      } catch {
        return;
      }
      if (event?.type !== 'desired_role' || event.id !== this.id) return;
      const redis = this.#redis;
      if (redis && redis.status === 'ready') void this.#readDesiredRole(redis);
    });
  }

  /** Reads the command outside the heartbeat's transaction, so a malformed key cannot fail a heartbeat. */
  async #readDesiredRole(redis: Redis): Promise<void> {
    let read: DesiredRoleRead;
    try {
      read = parseDesiredRole(await redis.hgetall(this.keys.desiredRole(this.id)));
    } catch (err) {
      const msg = errorMessage(err);
      // WRONGTYPE (someone wrote a string there) is bad input; a connection error is not.
      if (!/WRONGTYPE/.test(msg)) return;
      read = { kind: 'invalid', error: `${this.keys.desiredRole(this.id)} is not a hash: ${msg}`, token: 'wrongtype' };
    }
    this.#deliverDesiredRole(read);
  }

  #deliverDesiredRole(read: DesiredRoleRead): void {
    if (this.#stopped) return;
    try {
      this.#opts.onDesiredRole?.(read);
    } catch (err) {
      this.#logger.error({ worker: this.id, err: errorMessage(err) }, 'onDesiredRole callback threw');
    }
  }

  /** Changes the advertised state and heartbeats right away. Resolves true if that beat reached Redis. */
  async setState(state: WorkerState): Promise<boolean> {
    if (state !== this.#state) {
      this.#state = state;
      this.#announce = true;
      this.#logger.info({ worker: this.id, state }, 'worker state changed');
    }
    if (!this.#started || this.#stopped) return false;
    return this.heartbeat();
  }

  /** Sends one heartbeat now (serialised with the loop). Never throws. */
  heartbeat(): Promise<boolean> {
    const next = this.#chain.then(() => this.#beat());
    this.#chain = next.catch(() => undefined);
    return next;
  }

  /**
   * Stops heartbeating and deregisters (DEL key, SREM id, publish a hint), then closes the
   * connection. Never throws: if Redis is unreachable the key simply expires after ttlMs.
   */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#chain;
    const redis = this.#redis;
    if (!redis) return;
    try {
      if (redis.status === 'ready') {
        const event: ClusterEvent = { type: 'deregistered', id: this.id, ts: Date.now() };
        await redis
          .multi()
          .del(this.keys.worker(this.id))
          .srem(this.keys.workers, this.id)
          .publish(this.keys.events, JSON.stringify(event))
          .exec();
        this.#logger.info({ worker: this.id }, 'worker deregistered');
      } else {
        this.#logger.warn({ worker: this.id }, 'redis unreachable at stop; worker key will expire by TTL');
      }
    } catch (err) {
      this.#logger.warn({ worker: this.id, err: errorMessage(err) }, 'deregistration failed; key will expire by TTL');
    }
    this.#registered = false;
    await Promise.all([redis, this.#sub].map((c) => (c ? closeRedisClient(c) : undefined)));
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      const began = Date.now();
      void this.heartbeat().then(() => this.#schedule(Math.max(0, this.heartbeatMs - (Date.now() - began))));
    }, delayMs);
    this.#timer.unref();
  }

  async #loadReport(): Promise<WorkerLoad> {
    let timer: NodeJS.Timeout | undefined;
    try {
      const load = await Promise.race([
        Promise.resolve().then(() => this.#opts.getLoad()),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`getLoad() took over ${this.heartbeatMs} ms`)), this.heartbeatMs);
        }),
      ]);
      this.#lastLoad = load;
    } catch (err) {
      this.#logger.warn({ worker: this.id, err: errorMessage(err) }, 'getLoad failed; reporting the last load');
    } finally {
      clearTimeout(timer);
    }
    return this.#lastLoad;
  }

  async #beat(): Promise<boolean> {
    const redis = this.#redis;
    if (!redis || this.#stopped) return false;
    const load = await this.#loadReport();
    if (this.#stopped) return false;
    const now = Date.now();
    const record: WorkerRecord = {
      ...this.#opts.worker,
      role: this.#role,
      started_at: this.startedAt,
      last_heartbeat_ms: now,
      ttl_ms: this.ttlMs,
      heartbeat_ms: this.heartbeatMs,
      state: this.#state,
      load,
      pid: process.pid,
      hostname: hostname(),
    };
    if (this.#roleChange) record.role_change = this.#roleChange;
    const announce = this.#announce || !this.#registered;
    try {
      const tx = redis
        .multi()
        .set(this.keys.worker(this.id), encodeWorkerRecord(record), 'PX', this.ttlMs)
        .sadd(this.keys.workers, this.id);
      if (announce) {
        const event: ClusterEvent = { type: this.#announce && this.#registered ? 'state' : 'registered', id: this.id, ts: now };
        tx.set(this.keys.schema, String(SCHEMA_VERSION)).publish(this.keys.events, JSON.stringify(event));
      }
      const result = await tx.exec();
      if (!result) throw new Error('heartbeat transaction aborted');
      const failed = result.find(([err]) => err);
      if (failed?.[0]) throw failed[0];
      if (this.#opts.onDesiredRole) await this.#readDesiredRole(redis);
      if (!this.#registered) {
        this.#logger.info(
          { worker: this.id, role: record.role, state: record.state, failures: this.#failures, redis: redactUrl(this.#opts.redisUrl) },
          this.#failures ? 'worker re-registered after redis outage' : 'worker registered',
        );
      }
      this.#registered = true;
      this.#announce = false;
      this.#failures = 0;
      this.#lastBeatMs = now;
      return true;
    } catch (err) {
      this.#failures++;
      // The first failure and then one line every ~30 beats; the client logs connection errors itself.
      if (this.#failures === 1 || this.#failures % 30 === 0) {
        this.#logger.warn({ worker: this.id, err: errorMessage(err), failures: this.#failures }, 'heartbeat failed; will retry');
      }
      this.#registered = false;
      return false;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Router side

export interface WorkerInfo extends WorkerRecord {
  /** Key present at the last successful poll (so heartbeat within ttl, by Redis's clock) and state ready. */
  healthy: boolean;
  /** Local epoch ms of the poll that last read this record. */
  seen_ms: number;
  /** Set when the worker's key expired without a deregistration (it stopped heartbeating). */
  lost_since?: number;
  /** Set while Redis is unreachable: local epoch ms of the first failed poll. The entry is the last known one. */
  stale_since?: number;
}

export interface WorkerDirectoryOptions {
  redisUrl: string;
  prefix?: string;
  /** Default 500. */
  pollMs?: number;
  logger?: LogLike;
  /** Called after a poll that changed membership, state, health, address or staleness (not load alone). */
  onChange?: (workers: WorkerInfo[]) => void;
  /** Also re-poll on hints from `{prefix}:events` (one extra connection). Default true. */
  subscribe?: boolean;
  /** How long an expired (lost) worker stays listed with healthy=false. Default 30000. */
  forgetLostAfterMs?: number;
}

// Returns the ids it removed: those still listed with no record, i.e. whose heartbeat expired. A
// worker that deregistered (stop(): DEL and SREM in one MULTI) is no longer listed by then.
const PRUNE_SCRIPT = `
local removed = {}
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 and redis.call('SREM', KEYS[1], id) == 1 then removed[#removed + 1] = id end
end
return removed`;

export class WorkerDirectory {
  readonly keys: ClusterKeys;
  readonly pollMs: number;

  #opts: WorkerDirectoryOptions;
  #logger: LogLike;
  #redis: Redis | undefined;
  #sub: Redis | undefined;
  #timer: NodeJS.Timeout | undefined;
  #inflight: Promise<boolean> | undefined;
  #rerun = false;
  #started = false;
  #stopped = false;
  #workers: WorkerInfo[] = [];
  #pdRatio: PdRatio | undefined;
  #admission: Admission | undefined;
  #staleSince: number | undefined;
  #lastSuccessMs: number | undefined;
  #signature = '';
  #badRecords = new Set<string>();
  #schemaWarned = false;

  constructor(opts: WorkerDirectoryOptions) {
    this.keys = clusterKeys(opts.prefix);
    this.pollMs = opts.pollMs ?? 500;
    this.#opts = opts;
    this.#logger = opts.logger ?? silentLogger;
  }

  /** Connects and runs the first poll. Resolves true if it succeeded; never throws for Redis errors. */
  async start(): Promise<boolean> {
    if (this.#stopped) throw new Error('WorkerDirectory: start() after stop()');
    if (this.#started) return this.#staleSince === undefined && this.#lastSuccessMs !== undefined;
    this.#started = true;
    this.#redis = createRedisClient({
      url: this.#opts.redisUrl,
      name: 'pdserve-directory',
      logger: this.#logger,
      commandTimeoutMs: Math.max(250, Math.min(this.pollMs * 2, 2000)),
    });
    if (this.#opts.subscribe !== false) this.#startSubscriber();
    await waitForReady(this.#redis, 2000);
    const ok = await this.refresh();
    this.#schedule();
    return ok;
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#inflight;
    await Promise.all([this.#redis, this.#sub].map((c) => (c ? closeRedisClient(c) : undefined)));
  }

  /** Polls now (joins a poll in flight and schedules one more after it). Resolves true on success. */
  refresh(): Promise<boolean> {
    if (this.#inflight) {
      this.#rerun = true;
      return this.#inflight;
    }
    const run = this.#poll().finally(() => {
      this.#inflight = undefined;
      if (this.#rerun && !this.#stopped) {
        this.#rerun = false;
        void this.refresh();
      }
    });
    this.#inflight = run;
    return run;
  }

  /** Every known worker (healthy or not), sorted by id. */
  list(): WorkerInfo[] {
    return [...this.#workers];
  }

  /** Healthy workers, optionally only those able to do `capability` (unified counts for both). */
  healthy(capability?: 'prefill' | 'decode'): WorkerInfo[] {
    return this.#workers.filter(
      (w) =>
        w.healthy &&
        (capability === undefined || (capability === 'prefill' ? canPrefill(w.role) : canDecode(w.role))),
    );
  }

  get(id: string): WorkerInfo | undefined {
    return this.#workers.find((w) => w.id === id);
  }

  /** At least one healthy prefill-capable and one healthy decode-capable worker (one unified worker suffices). */
  ready(): boolean {
    return this.healthy('prefill').length > 0 && this.healthy('decode').length > 0;
  }

  /** Target ratio from `{prefix}:pd_ratio` as of the last successful poll. */
  pdRatio(): PdRatio | undefined {
    return this.#pdRatio;
  }

  /** Admission state from `{prefix}:admission` as of the last successful poll (undefined: none set). */
  admission(): Admission | undefined {
    return this.#admission;
  }

  /** Local epoch ms of the first failed poll of the current outage; undefined while Redis answers. */
  staleSince(): number | undefined {
    return this.#staleSince;
  }

  /** Local epoch ms of the last successful poll. */
  lastSuccessMs(): number | undefined {
    return this.#lastSuccessMs;
  }

  #schedule(): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      void this.refresh().then(() => this.#schedule());
    }, this.pollMs);
    this.#timer.unref();
  }

  #startSubscriber(): void {
    const sub = createRedisClient({ url: this.#opts.redisUrl, name: 'pdserve-directory-events', logger: silentLogger });
    this.#sub = sub;
    // Subscribe on every (re)connect: the client has no offline queue and autoResubscribe is off.
    sub.on('ready', () => {
      sub.subscribe(this.keys.events).catch((err: unknown) => {
        this.#logger.debug({ err: errorMessage(err) }, 'events subscribe failed; polling only until reconnect');
      });
    });
    sub.on('message', (channel: string) => {
      if (channel === this.keys.events && !this.#stopped) void this.refresh();
    });
  }

  async #poll(): Promise<boolean> {
    const redis = this.#redis;
    if (!redis || this.#stopped) return false;
    const now = Date.now();
    try {
      const head = await redis
        .pipeline()
        .smembers(this.keys.workers)
        .hgetall(this.keys.pdRatio)
        .hgetall(this.keys.admission)
        .get(this.keys.schema)
        .exec();
      if (!head) throw new Error('pipeline returned nothing');
      for (const [err] of head) if (err) throw err;
      const ids = (head[0]![1] as string[]).slice().sort();
      const pd = head[1]![1] as Record<string, string>;
      const adm = head[2]![1] as Record<string, string>;
      const schema = head[3]![1] as string | null;
      if (schema !== null && schema !== String(SCHEMA_VERSION) && !this.#schemaWarned) {
        this.#schemaWarned = true;
        this.#logger.error({ schema, expected: SCHEMA_VERSION, prefix: this.keys.prefix }, 'redis key layout version mismatch');
      }
      const values = ids.length ? await redis.mget(ids.map((id) => this.keys.worker(id))) : [];

      const previous = new Map(this.#workers.map((w) => [w.id, w]));
      const next: WorkerInfo[] = [];
      const expired: string[] = [];
      ids.forEach((id, i) => {
        const raw = values[i];
        if (raw === null || raw === undefined) {
          expired.push(id);
          const prev = previous.get(id);
          if (prev) next.push(this.#lost(prev, now));
          return;
        }
        const record = parseWorkerRecord(raw);
        if (!record) {
          if (!this.#badRecords.has(id)) {
            this.#badRecords.add(id);
            this.#logger.warn({ worker: id }, 'ignoring malformed worker record');
          }
          return;
        }
        this.#badRecords.delete(id);
        next.push({ ...record, id, healthy: record.state === 'ready', seen_ms: now });
      });
      // Lost workers stay listed (unhealthy) for a while even after their set member was pruned.
      const listed = new Set(next.map((w) => w.id));
      for (const prev of this.#workers) {
        if (!listed.has(prev.id) && prev.lost_since !== undefined) next.push(this.#lost(prev, now));
      }
      const forgetAfter = this.#opts.forgetLostAfterMs ?? 30_000;
      const workers = next
        .filter((w) => w.lost_since === undefined || now - w.lost_since < forgetAfter)
        .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));

      if (expired.length) {
        const pruned = await redis
          .eval(PRUNE_SCRIPT, 1 + expired.length, this.keys.workers, ...expired.map((id) => this.keys.worker(id)), ...expired)
          .catch((err: unknown) => this.#logger.debug({ err: errorMessage(err) }, 'pruning expired workers failed'));
        // Unknown (the script failed): say expired, the conservative reading.
        const expiredIds = new Set(Array.isArray(pruned) ? pruned.map(String) : expired);
        for (const id of expired) {
          if (previous.get(id)?.lost_since === undefined && previous.has(id)) {
            if (expiredIds.has(id)) this.#logger.warn({ worker: id }, 'worker heartbeat expired; marking lost');
            else this.#logger.info({ worker: id }, 'worker deregistered; marking gone');
          }
        }
      }

      if (this.#staleSince !== undefined) {
        this.#logger.info({ stale_ms: now - this.#staleSince, workers: workers.length }, 'worker directory recovered');
      }
      this.#staleSince = undefined;
      this.#lastSuccessMs = now;
      this.#workers = workers;
      this.#pdRatio = parsePdRatio(pd);
      this.#admission = parseAdmission(adm);
      this.#notify();
      return true;
    } catch (err) {
      if (this.#stopped) return false;
      if (this.#staleSince === undefined) {
        this.#staleSince = now;
        this.#logger.warn(
          { err: errorMessage(err), workers: this.#workers.length, redis: redactUrl(this.#opts.redisUrl) },
          'worker directory cannot reach redis; serving the last snapshot',
        );
        this.#workers = this.#workers.map((w) => ({ ...w, stale_since: now }));
        this.#notify();
      }
      return false;
    }
  }

  #lost(prev: WorkerInfo, now: number): WorkerInfo {
    const { stale_since: _stale, ...rest } = prev;
    return { ...rest, healthy: false, lost_since: prev.lost_since ?? now };
  }

  #notify(): void {
    const sig = JSON.stringify([
      this.#staleSince !== undefined,
      this.#workers.map((w) => [w.id, w.role, w.state, w.healthy, w.grpc_address, w.lost_since !== undefined]),
    ]);
    if (sig === this.#signature) return;
    this.#signature = sig;
    if (!this.#opts.onChange) return;
    try {
      this.#opts.onChange(this.list());
    } catch (err) {
      this.#logger.error({ err: errorMessage(err) }, 'WorkerDirectory onChange callback threw');
    }
  }
}
