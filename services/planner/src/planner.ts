// The planner's mechanism: stand for election (election.ts), and while leading, every intervalMs
// read the workers' records and the routers' statistics from Redis, fold the load reports into
// the speed estimates (perf.ts), ask decision.ts for the split, and carry a change out in one
// fenced Lua script: append the decision to `{prefix}:planner:decisions`, write the target to
// `{prefix}:pd_ratio`, and write a `{prefix}:desired_role:{id}` command (plus a hint on
// `{prefix}:events`) for every worker that moves. The workers do the rest (role-switch.ts).
//
// Failure: when Redis is unreachable the planner writes nothing and commands nothing, so every
// worker keeps its role; it keeps trying, and once its lease has lapsed another candidate may take
// over. A decision is taken only from fresh reads, never from a stale snapshot.
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { RedisClient as Redis } from '@pdserve/common';
import {
  clusterKeys, closeRedisClient, createRedisClient, desiredRoleFields, desiredRoleEvent, DESIRED_ROLE_TTL_MS, errorMessage,
  parseWorkerRecord, pdRatioFields, readRouterStats, silentLogger, waitForReady,
  type ClusterEvent, type ClusterKeys, type LogLike, type PdRatio, type PlannerMetrics, type RouterStats, type WorkerRecord,
} from '@pdserve/common';
import { countRoles, decide, type Decision, type LoadStats, type PlannerConfig, type Slo } from './decision.ts';
import { LeaderLease } from './election.ts';
import { PerfEstimator } from './perf.ts';

export interface PlannerOptions {
  redisUrl: string;
  prefix?: string;
  id?: string;
  /** How often the leader evaluates the split. Default 2000. */
  intervalMs?: number;
  /** Leader lease; renewed every leaseMs/3. Default 6000. */
  leaseMs?: number;
  /** SLOs when no router publishes its own. Default TTFT 1000 ms, TPOT 100 ms. */
  slo?: Partial<Slo>;
  /** Prompt tokens per prefill chunk on the workers. Default 256. */
  prefillChunk?: number;
  decision?: Partial<PlannerConfig>;
  metrics?: PlannerMetrics;
  logger?: LogLike;
  /** Decisions kept in the stream (approximate MAXLEN). Default 1000. */
  streamMaxLen?: number;
}

export interface DecisionRecord {
  id: string;
  ts: number;
  planner: string;
  epoch: number;
  action: string;
  from: string;
  to: string;
  changes: Array<{ id: string; from: string; to: string }>;
  reason: string;
}

const APPLY = `
local p = cjson.decode(ARGV[2])
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', p.maxlen, '*', unpack(p.decision))
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], unpack(p.ratio))
for i, c in ipairs(p.commands) do
  local k = KEYS[4 + i]
  redis.call('DEL', k)
  redis.call('HSET', k, 'decision_id', id, unpack(c))
  redis.call('PEXPIRE', k, p.ttl)
end
redis.call('PUBLISH', KEYS[4], p.ratio_event)
for i, e in ipairs(p.events) do redis.call('PUBLISH', KEYS[4], e) end
return id`;

const flat = (fields: Record<string, string>): string[] => Object.entries(fields).flat();

export class Planner {
  readonly id: string;
  readonly keys: ClusterKeys;
  #o: PlannerOptions;
  #log: LogLike;
  #redis: Redis | undefined;
  #lease: LeaderLease | undefined;
  #perf = new PerfEstimator();
  #timer: NodeJS.Timeout | undefined;
  #renewTimer: NodeJS.Timeout | undefined;
  #running: Promise<unknown> | undefined;
  #stopped = false;
  #leader = false;
  #lastChangeMs: number | undefined;
  #lastDecision: Decision | undefined;
  #lastReason = '';

  constructor(o: PlannerOptions) {
    this.#o = o;
    this.keys = clusterKeys(o.prefix);
    this.id = o.id ?? `planner-${hostname()}-${process.pid}-${randomBytes(2).toString('hex')}`;
    this.#log = o.logger ?? silentLogger;
  }

  get isLeader(): boolean {
    return this.#leader;
  }

  get lastDecision(): Decision | undefined {
    return this.#lastDecision;
  }

  async start(): Promise<void> {
    const interval = this.#o.intervalMs ?? 2000;
    const leaseMs = this.#o.leaseMs ?? 6000;
    this.#redis = createRedisClient({ url: this.#o.redisUrl, name: `pdserve-${this.id}`, logger: this.#log, commandTimeoutMs: Math.min(2000, Math.max(250, leaseMs / 4)) });
    this.#lease = new LeaderLease(this.#redis, this.keys, this.id, leaseMs);
    await waitForReady(this.#redis, 2000);
    const loop = () => {
      if (this.#stopped) return;
      this.#running = this.tick().finally(() => {
        this.#running = undefined;
        if (!this.#stopped) this.#timer = setTimeout(loop, interval);
      });
    };
    loop();
    const renew = () => {
      if (this.#stopped) return;
      this.#renewTimer = setTimeout(() => void this.#renew().finally(renew), leaseMs / 3);
    };
    renew();
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#renewTimer);
    await this.#running;
    if (this.#leader) {
      await this.#lease?.release();
      this.#log.info({ planner: this.id }, 'planner released the leader lease');
    }
    this.#setLeader(false);
    if (this.#redis) await closeRedisClient(this.#redis);
  }

  #setLeader(on: boolean): void {
    this.#leader = on;
    this.#o.metrics?.leader.set(on ? 1 : 0);
  }

  async #renew(): Promise<void> {
    if (!this.#leader || !this.#lease) return;
    try {
      if (!(await this.#lease.renew())) {
        this.#setLeader(false);
        this.#log.warn({ planner: this.id }, 'planner lost the leader lease');
      }
    } catch (err) {
      // Keep acting as leader only until the lease could have lapsed: the next tick re-checks.
      this.#log.warn({ planner: this.id, err: errorMessage(err) }, 'lease renewal failed');
    }
  }

  /** One round: stand for election, and while leading, evaluate and carry out. Never throws. */
  async tick(): Promise<Decision | undefined> {
    const redis = this.#redis;
    const lease = this.#lease;
    if (!redis || !lease || this.#stopped) return undefined;
    try {
      const epoch = await lease.acquire();
      if (epoch === 0) {
        if (this.#leader) this.#log.warn({ planner: this.id }, 'planner lost the leader lease');
        this.#setLeader(false);
        return undefined;
      }
      if (!this.#leader) {
        this.#setLeader(true);
        this.#lastChangeMs = await this.#lastChangeFromStream(redis);
        this.#log.info({ planner: this.id, epoch, last_change_ms: this.#lastChangeMs }, 'planner elected leader');
      }
      const [workers, routers] = await Promise.all([this.#readWorkers(redis), readRouterStats(redis, this.keys)]);
      this.#perf.observe(workers.map((w) => w.load));
      const decision = this.#decide(workers, routers);
      this.#lastDecision = decision;
      this.#o.metrics?.decisions.inc({ action: decision.action });
      for (const role of ['prefill', 'decode', 'unified'] as const) this.#o.metrics?.desiredWorkers.set({ role }, decision.counts[role]);
      if (decision.action === 'change') await this.#apply(decision, epoch);
      else if (decision.current) await this.#writeTarget(redis, decision);
      if (decision.action === 'keep' && decision.reason !== this.#lastReason) this.#log.debug({ planner: this.id, reason: decision.reason }, 'planner keeps the split');
      this.#lastReason = decision.reason;
      return decision;
    } catch (err) {
      this.#o.metrics?.errors.inc();
      this.#log.warn({ planner: this.id, err: errorMessage(err) }, 'planner tick failed; roles stay as they are');
      return undefined;
    }
  }

  #decide(workers: WorkerRecord[], routers: RouterStats[]): Decision {
    const settling = workers.find((w) => w.role_change && w.role_change.settled_ms === undefined);
    const roles = Object.fromEntries(workers.map((w) => [w.id, w.role]));
    if (settling) {
      return { action: 'keep', roles, counts: countRoles(workers.map((w) => w.role)), changes: [], reason: `worker ${settling.id} is still settling its change to ${settling.role}` };
    }
    const slo: Slo = {
      ttftMs: routers.find((r) => r.slo_ttft_ms)?.slo_ttft_ms ?? this.#o.slo?.ttftMs ?? 1000,
      tpotMs: routers.find((r) => r.slo_tpot_ms)?.slo_tpot_ms ?? this.#o.slo?.tpotMs ?? 100,
    };
    return decide({
      now: Date.now(),
      workers: workers.map((w) => ({ id: w.id, role: w.role, pinned: w.pinned === true, maxSequences: w.load.max_sequences })),
      stats: withBacklog(aggregateStats(routers), workers),
      perf: { prefillTokensPerS: this.#perf.prefillTokensPerS, decodeStep: this.#perf.decodeStep, prefillChunk: this.#o.prefillChunk ?? 256 },
      slo,
      lastChangeMs: this.#lastChangeMs,
      config: this.#o.decision,
    });
  }

  /** Keeps `{prefix}:pd_ratio` equal to the split the planner holds to (fenced; written only when it differs). */
  async #writeTarget(redis: Redis, d: Decision): Promise<void> {
    const stored = await redis.hgetall(this.keys.pdRatio);
    const c = d.counts;
    if (Number(stored.prefill_workers) === c.prefill && Number(stored.decode_workers) === c.decode && Number(stored.unified_workers) === c.unified) return;
    const fields = pdRatioFields(this.#ratio(d, Date.now()));
    const event: ClusterEvent = { type: 'pd_ratio', ts: Date.now() };
    await this.#lease!.fenced(`redis.call('DEL', KEYS[2])\nredis.call('HSET', KEYS[2], unpack(cjson.decode(ARGV[2])))\nredis.call('PUBLISH', KEYS[3], ARGV[3])\nreturn 1`,
      [this.keys.pdRatio, this.keys.events], [JSON.stringify(flat(fields)), JSON.stringify(event)]);
  }

  #ratio(d: Decision, now: number): PdRatio {
    return {
      prefill: d.counts.prefill + d.counts.unified,
      decode: d.counts.decode + d.counts.unified,
      prefill_workers: d.counts.prefill, decode_workers: d.counts.decode, unified_workers: d.counts.unified,
      updated_ms: now, updated_by: this.id, reason: d.reason,
    };
  }

  async #apply(d: Decision, epoch: number): Promise<void> {
    const now = Date.now();
    const ratio = this.#ratio(d, now);
    const record = {
      planner: this.id, epoch: String(epoch), action: d.action,
      from: JSON.stringify(d.current?.counts ?? {}), to: JSON.stringify(d.counts),
      changes: JSON.stringify(d.changes), reason: d.reason,
    };
    const commands = d.changes.map((c) => flat(desiredRoleFields({ role: c.to, requested_ms: now, requested_by: this.id, reason: d.reason, epoch })));
    const ratioEvent: ClusterEvent = { type: 'pd_ratio', ts: now };
    const payload = {
      maxlen: String(this.#o.streamMaxLen ?? 1000), decision: flat(record), ratio: flat(pdRatioFields(ratio)), commands,
      ttl: String(DESIRED_ROLE_TTL_MS), ratio_event: JSON.stringify(ratioEvent), events: d.changes.map((c) => desiredRoleEvent(c.id)),
    };
    const keys = [this.keys.plannerDecisions, this.keys.pdRatio, this.keys.events, ...d.changes.map((c) => this.keys.desiredRole(c.id))];
    const id = await this.#lease!.fenced(APPLY, keys, [JSON.stringify(payload)]);
    if (id === undefined) {
      this.#setLeader(false);
      this.#log.warn({ planner: this.id }, 'planner lost the lease before writing its decision; nothing written');
      return;
    }
    this.#lastChangeMs = now;
    for (const c of d.changes) this.#o.metrics?.roleCommands.inc({ from: c.from, to: c.to });
    this.#log.info({ planner: this.id, decision_id: id, changes: d.changes, reason: d.reason }, 'planner changed the split');
  }

  async #readWorkers(redis: Redis): Promise<WorkerRecord[]> {
    const ids = (await redis.smembers(this.keys.workers)).sort();
    if (ids.length === 0) return [];
    const raw = await redis.mget(ids.map((id) => this.keys.worker(id)));
    return raw.map((r) => parseWorkerRecord(r)).filter((w): w is WorkerRecord => w !== undefined && w.state === 'ready');
  }

  /** Dwell survives a failover: the newest entry of the decision stream is the last change. */
  async #lastChangeFromStream(redis: Redis): Promise<number | undefined> {
    const last = (await redis.xrevrange(this.keys.plannerDecisions, '+', '-', 'COUNT', 1))[0];
    return last ? Number(last[0].split('-')[0]) : undefined;
  }
}

/** The routers' windows combined: rates add up, means are weighted by finished requests. */
export function aggregateStats(routers: RouterStats[]): LoadStats | undefined {
  if (routers.length === 0) return undefined;
  const finished = routers.reduce((n, r) => n + r.finished, 0);
  const w = (f: (r: RouterStats) => number) => (finished > 0 ? routers.reduce((n, r) => n + f(r) * r.finished, 0) / finished : 0);
  return {
    // The larger of the long and the short window's rate: the split follows a rise in load within
    // seconds (measured: on the long window alone, a chat burst at 3 req/s ran 31 s on 1P+1D before
    // the planner saw 1.57 req/s and moved), and a fall only once the long window has seen it.
    arrivalRate: routers.reduce((n, r) => n + Math.max(r.arrival_rate, r.arrival_rate_recent ?? 0), 0),
    promptTokens: w((r) => r.prompt_tokens_mean),
    outputTokens: w((r) => r.output_tokens_mean),
    requests: finished,
    attainment: finished > 0 ? w((r) => r.slo_attainment) : undefined,
  };
}

function withBacklog(stats: LoadStats | undefined, workers: WorkerRecord[]): LoadStats | undefined {
  if (!stats) return undefined;
  return { ...stats, queuedPrefillTokens: workers.reduce((n, w) => n + (w.load.queued_prefill_tokens ?? 0), 0) };
}

/** Reads the decision stream, oldest first. */
export async function readDecisions(redis: Redis, keys: ClusterKeys, count = 100): Promise<DecisionRecord[]> {
  const rows = await redis.xrange(keys.plannerDecisions, '-', '+', 'COUNT', count);
  return rows.map(([id, fields]) => {
    const f: Record<string, string> = {};
    for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]!] = fields[i + 1]!;
    let changes: DecisionRecord['changes'] = [];
    try { changes = JSON.parse(f.changes ?? '[]'); } catch { /* keep [] */ }
    return { id, ts: Number(id.split('-')[0]), planner: f.planner ?? '', epoch: Number(f.epoch), action: f.action ?? '', from: f.from ?? '', to: f.to ?? '', changes, reason: f.reason ?? '' };
  });
}
