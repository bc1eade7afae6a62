// The control-plane records beside the registry (layout in keys.ts / docs/redis.md): role-change
// commands for single workers (`{prefix}:desired_role:{id}`) and the rolling request statistics
// each router publishes for the planner (`{prefix}:router_stats:{id}`). Types, parsing that never
// throws, and typed get/set helpers.
import type { Redis } from 'ioredis';
import { assertWorkerId, WORKER_ROLES, type ClusterEvent, type ClusterKeys, type WorkerRole } from './keys.ts';

/** How long a role-change command stays readable; a worker applies one command once. */
export const DESIRED_ROLE_TTL_MS = 10 * 60_000;

/** A command to one worker: take this role. */
export interface DesiredRole {
  role: WorkerRole;
  /** Epoch ms the command was written; with decision_id it identifies the command. */
  requested_ms: number;
  requested_by?: string;
  reason?: string;
  /** The planner decision (its stream entry id) this command realises. */
  decision_id?: string;
  /** The planner's fencing epoch when it wrote the command. */
  epoch?: number;
}

export type DesiredRoleRead =
  | { kind: 'none' }
  | { kind: 'command'; command: DesiredRole }
  /** Present but unusable: `error` says why; `token` identifies the bad command so it is reported once. */
  | { kind: 'invalid'; error: string; token: string };

/** Parses `{prefix}:desired_role:{id}`; never throws. */
export function parseDesiredRole(h: Record<string, string> | null | undefined): DesiredRoleRead {
  if (!h || Object.keys(h).length === 0) return { kind: 'none' };
  const token = `${h.role ?? ''}@${h.requested_ms ?? ''}@${h.decision_id ?? ''}`;
  if (!WORKER_ROLES.includes(h.role as WorkerRole)) {
    return { kind: 'invalid', token, error: `unknown role ${JSON.stringify(h.role ?? null)} (one of ${WORKER_ROLES.join(', ')})` };
  }
  const requested_ms = Number(h.requested_ms);
  if (!Number.isFinite(requested_ms) || requested_ms <= 0) {
    return { kind: 'invalid', token, error: `requested_ms must be a positive epoch ms, got ${JSON.stringify(h.requested_ms ?? null)}` };
  }
  const command: DesiredRole = { role: h.role as WorkerRole, requested_ms };
  if (h.requested_by) command.requested_by = h.requested_by;
  if (h.reason) command.reason = h.reason;
  if (h.decision_id) command.decision_id = h.decision_id;
  const epoch = Number(h.epoch);
  if (h.epoch !== undefined && Number.isFinite(epoch)) command.epoch = epoch;
  return { kind: 'command', command };
}

export function desiredRoleFields(c: DesiredRole): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const [k, v] of Object.entries(c)) if (v !== undefined) fields[k] = String(v);
  return fields;
}

export function desiredRoleEvent(id: string): string {
  const event: ClusterEvent = { type: 'desired_role', id, ts: Date.now() };
  return JSON.stringify(event);
}

/** Reads a worker's pending role-change command. */
export async function getDesiredRole(redis: Redis, keys: ClusterKeys, id: string): Promise<DesiredRoleRead> {
  assertWorkerId(id);
  return parseDesiredRole(await redis.hgetall(keys.desiredRole(id)));
}

/**
 * Writes a role-change command for one worker (an operator's tool; the planner writes its own
 * commands inside a fenced transaction) and hints the worker through `{prefix}:events`.
 */
export async function setDesiredRole(
  redis: Redis,
  keys: ClusterKeys,
  id: string,
  command: Omit<DesiredRole, 'requested_ms'> & { requested_ms?: number },
): Promise<DesiredRole> {
  assertWorkerId(id);
  if (!WORKER_ROLES.includes(command.role)) throw new Error(`unknown role ${JSON.stringify(command.role)} (one of ${WORKER_ROLES.join(', ')})`);
  const value: DesiredRole = { ...command, requested_ms: command.requested_ms ?? Date.now() };
  const key = keys.desiredRole(id);
  await redis.multi().del(key).hset(key, desiredRoleFields(value)).pexpire(key, DESIRED_ROLE_TTL_MS).publish(keys.events, desiredRoleEvent(id)).exec();
  return value;
}

// ---------------------------------------------------------------------------------------------
// Router statistics

/** What a router measured over its recent window; the planner sums these across routers. */
export interface RouterStats {
  router_id: string;
  /** Length of the window the numbers cover, s. */
  window_s: number;
  /** Requests that arrived (reached the backend) in the window. */
  arrivals: number;
  /** arrivals / window_s. */
  arrival_rate: number;
  /**
   * Arrivals per second over the last few seconds only (10 s; shorter while the router is
   * younger): the planner takes the larger of the two, so a rise in load shows within seconds
   * while a fall takes the whole window. Absent from older routers.
   */
  arrival_rate_recent?: number;
  /** Requests that finished in the window (the means below are over these). */
  finished: number;
  prompt_tokens_mean: number;
  output_tokens_mean: number;
  ttft_p90_ms?: number;
  tpot_p90_ms?: number;
  /** Fraction of finished requests that met both SLOs (1 when none finished). */
  slo_attainment: number;
  /** Requests the backend refused (503) in the window. */
  rejected: number;
  /** The router's default SLOs, when it has them. */
  slo_ttft_ms?: number;
  slo_tpot_ms?: number;
  updated_ms: number;
}

const NUMERIC: ReadonlyArray<keyof RouterStats> = [
  'window_s', 'arrivals', 'arrival_rate', 'finished', 'prompt_tokens_mean', 'output_tokens_mean', 'slo_attainment', 'rejected', 'updated_ms',
];
const OPTIONAL: ReadonlyArray<keyof RouterStats> = ['arrival_rate_recent', 'ttft_p90_ms', 'tpot_p90_ms', 'slo_ttft_ms', 'slo_tpot_ms'];

/** Parses `{prefix}:router_stats:{id}`; undefined when absent or malformed. */
export function parseRouterStats(h: Record<string, string> | null | undefined): RouterStats | undefined {
  if (!h || !h.router_id) return undefined;
  const out: Record<string, unknown> = { router_id: h.router_id };
  for (const k of NUMERIC) {
    const v = Number(h[k]);
    if (h[k] === undefined || !Number.isFinite(v) || v < 0) return undefined;
    out[k] = v;
  }
  for (const k of OPTIONAL) {
    if (h[k] === undefined || h[k] === '') continue;
    const v = Number(h[k]);
    if (!Number.isFinite(v) || v < 0) return undefined;
    out[k] = v;
  }
  return out as unknown as RouterStats;
}

export function routerStatsFields(s: RouterStats): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const [k, v] of Object.entries(s)) if (v !== undefined) fields[k] = String(v);
  return fields;
}

/** Writes a router's statistics (PX ttlMs, so a stopped router's numbers vanish) and indexes it. */
export async function publishRouterStats(redis: Redis, keys: ClusterKeys, stats: RouterStats, ttlMs: number): Promise<void> {
  assertWorkerId(stats.router_id);
  const key = keys.routerStats(stats.router_id);
  const r = await redis.multi().del(key).hset(key, routerStatsFields(stats)).pexpire(key, ttlMs).sadd(keys.routers, stats.router_id).exec();
  const failed = r?.find(([err]) => err);
  if (!r) throw new Error('router stats transaction aborted');
  if (failed?.[0]) throw failed[0];
}

/** Every live router's statistics; prunes index members whose key expired. */
export async function readRouterStats(redis: Redis, keys: ClusterKeys): Promise<RouterStats[]> {
  const ids = (await redis.smembers(keys.routers)).sort();
  if (ids.length === 0) return [];
  const p = redis.pipeline();
  for (const id of ids) p.hgetall(keys.routerStats(id));
  const rows = (await p.exec()) ?? [];
  const out: RouterStats[] = [];
  const gone: string[] = [];
  rows.forEach(([err, h], i) => {
    if (err) throw err;
    const rec = h as Record<string, string>;
    if (Object.keys(rec).length === 0) gone.push(ids[i]!);
    const s = parseRouterStats(rec);
    if (s) out.push(s);
  });
  if (gone.length) await redis.srem(keys.routers, ...gone);
  return out;
}
