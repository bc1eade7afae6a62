// The one Redis key layout of a pdserve cluster (documented in docs/redis.md). Every key lives under
// a cluster prefix (default `pdserve`), so several clusters can share one Redis:
//
//   {prefix}:schema          string   layout version ("1"); written by workers, checked by routers
//   {prefix}:worker:{id}     string   JSON WorkerRecord, SET ... PX ttl_ms on every heartbeat
//   {prefix}:workers         set      worker ids; a member whose worker key is gone is pruned by readers
//   {prefix}:pd_ratio        hash     target prefill:decode ratio {prefill, decode, updated_ms, updated_by}
//   {prefix}:admission       hash     router admission state {state, reason, updated_ms, updated_by}
//   {prefix}:events          channel  pub/sub hints ("something changed, re-read now"); never required
//   {prefix}:desired_role:{id} hash   a role-change command for one worker {role, reason, decision_id, ...}
//   {prefix}:planner:lock    string   the planner leader's token, SET NX PX ttl, renewed while it leads
//   {prefix}:planner:epoch   string   INCR on every election: the fencing token of the current leader
//   {prefix}:planner:decisions stream every planner decision that changed the target, with its reason
//   {prefix}:routers         set      router ids publishing statistics
//   {prefix}:router_stats:{id} hash   a router's rolling request statistics, PX ttl
//
// This module holds the names, the record types, their (de)serialisation and typed get/set helpers
// for the small control hashes. Connection handling lives in client.ts; heartbeats and discovery in
// registry.ts.
import type { Redis } from 'ioredis';

export const DEFAULT_PREFIX = 'pdserve';
export const SCHEMA_VERSION = 1;

export type WorkerRole = 'prefill' | 'decode' | 'unified';
/** `unhealthy`: alive but unable to serve (its engine thread stalled); it recovers to `ready` by itself. */
export type WorkerState = 'ready' | 'draining' | 'unhealthy';
export const WORKER_ROLES: readonly WorkerRole[] = ['prefill', 'decode', 'unified'];
export const WORKER_STATES: readonly WorkerState[] = ['ready', 'draining', 'unhealthy'];

/** Load report a worker publishes with each heartbeat. */
export interface WorkerLoad {
  /** Requests accepted but not yet admitted to the engine. */
  queue_len: number;
  /** Sequences currently in the running batch. */
  running: number;
  /** Sequences admitted but waiting for KV blocks / a batch slot. */
  waiting: number;
  free_kv_blocks: number;
  total_kv_blocks: number;
  /** Tokens per KV block. */
  kv_block_tokens: number;
  /** Median engine step time, ms. */
  step_ms_p50?: number;
  /** The last few engine step times, ms, newest last (keep it short: <= 32 entries). */
  step_ms_recent?: number[];
  /** Prefill throughput over the recent window (tokens over milliseconds of the last prefill passes), tokens/s. */
  prefill_tokens_per_s?: number;
  /** Median duration of the recent decode steps alone, ms (step_ms_p50 mixes in prefill chunks). */
  decode_step_ms?: number;
  /** Mean batch size of those decode steps. */
  decode_batch?: number;
  /** Mean decode step time, ms, and mean batch over the last ~10 s of decode steps (about one request's decode lifetime). */
  decode_step_ms_window?: number;
  decode_batch_window?: number;
  /** Prompt tokens queued or part-way through prefill here (not a count of prompts): the work ahead of a new prompt. */
  queued_prefill_tokens?: number;
  /** Sequences this worker holds at most, and how many of those are free. */
  max_sequences?: number;
  free_sequences?: number;
  /** Prompt tokens per prefill pass (a local prefill stalls this worker's running batch one chunk at a time). */
  prefill_chunk_tokens?: number;
  /** Decode step time, ms, by batch size (keys are batch sizes), a moving average per size measured here. */
  decode_step_ms_by_batch?: Record<string, number>;
  /** Prefix cache (absent when off): prompt tokens looked up and served from it since start, and blocks idle slots retain. */
  prefix_cache_queries?: number;
  prefix_cache_hits?: number;
  prefix_cache_blocks?: number;
}

/** The last role change a worker carried out, as it reports it in its record. */
export interface RoleChangeStatus {
  from: WorkerRole;
  to: WorkerRole;
  /** The command's decision id (the planner's stream entry id), when it had one. */
  decision_id?: string;
  /** Epoch ms the command was written (by the commander's clock). */
  requested_ms: number;
  /** Epoch ms the worker advertised the new role and began taking work of the new kind. */
  applied_ms: number;
  /** Epoch ms the work of the old kind it held had finished; absent while it is still finishing. */
  settled_ms?: number;
}

/** Value of `{prefix}:worker:{id}`. */
export interface WorkerRecord {
  id: string;
  role: WorkerRole;
  /** host:port of the worker's gRPC server. */
  grpc_address: string;
  /** URL of the worker's Prometheus endpoint (http://host:port/metrics). */
  metrics_url: string;
  /** Model identifier the worker serves. */
  model: string;
  /** Epoch ms the worker process started (registration created). */
  started_at: number;
  /** Epoch ms of this heartbeat, by the worker's clock (informational; freshness is the key's TTL). */
  last_heartbeat_ms: number;
  /** The PX TTL the worker puts on its key; a reader treats the worker as lost once the key is gone. */
  ttl_ms: number;
  /** The worker's heartbeat period. */
  heartbeat_ms: number;
  state: WorkerState;
  load: WorkerLoad;
  /** OS process id and host name, for operators. */
  pid?: number;
  hostname?: string;
  /** Pinned workers keep their role: they ignore role-change commands and the planner leaves them alone. */
  pinned?: boolean;
  role_change?: RoleChangeStatus;
}

/**
 * Value of `{prefix}:pd_ratio`. Both sides are positive numbers; only their ratio matters. The
 * planner writes prefill-capable : decode-capable worker counts (a unified worker counts on both
 * sides) plus the role counts themselves and its reason.
 */
export interface PdRatio {
  prefill: number;
  decode: number;
  updated_ms: number;
  updated_by?: string;
  /** Workers per role in the target (planner-written). */
  prefill_workers?: number;
  decode_workers?: number;
  unified_workers?: number;
  reason?: string;
}

export type AdmissionState = 'open' | 'throttled' | 'closed';
export const ADMISSION_STATES: readonly AdmissionState[] = ['open', 'throttled', 'closed'];

/** Value of `{prefix}:admission`. */
export interface Admission {
  /** open: admit everything; throttled: admit at a reduced rate / shed low priority; closed: reject new requests. */
  state: AdmissionState;
  reason: string;
  updated_ms: number;
  updated_by?: string;
}

/** Message published on `{prefix}:events`. A hint only: readers must not depend on receiving it. */
export interface ClusterEvent {
  type: 'registered' | 'state' | 'deregistered' | 'pd_ratio' | 'admission' | 'desired_role';
  id?: string;
  ts: number;
}

export interface ClusterKeys {
  prefix: string;
  schema: string;
  worker(id: string): string;
  workers: string;
  pdRatio: string;
  admission: string;
  events: string;
  desiredRole(id: string): string;
  plannerLock: string;
  plannerEpoch: string;
  plannerDecisions: string;
  routers: string;
  routerStats(id: string): string;
}

const PREFIX_RE = /^[A-Za-z0-9._-]{1,64}$/;
const ID_RE = /^[A-Za-z0-9._@:-]{1,128}$/;

export function assertPrefix(prefix: string): void {
  if (!PREFIX_RE.test(prefix)) {
    throw new Error(`invalid cluster prefix ${JSON.stringify(prefix)}: use 1-64 of [A-Za-z0-9._-]`);
  }
}

export function assertWorkerId(id: string): void {
  if (!ID_RE.test(id)) {
    throw new Error(`invalid worker id ${JSON.stringify(id)}: use 1-128 of [A-Za-z0-9._@:-]`);
  }
}

export function clusterKeys(prefix: string = DEFAULT_PREFIX): ClusterKeys {
  assertPrefix(prefix);
  return {
    prefix,
    schema: `${prefix}:schema`,
    worker: (id: string) => `${prefix}:worker:${id}`,
    workers: `${prefix}:workers`,
    pdRatio: `${prefix}:pd_ratio`,
    admission: `${prefix}:admission`,
    events: `${prefix}:events`,
    desiredRole: (id: string) => `${prefix}:desired_role:${id}`,
    plannerLock: `${prefix}:planner:lock`,
    plannerEpoch: `${prefix}:planner:epoch`,
    plannerDecisions: `${prefix}:planner:decisions`,
    routers: `${prefix}:routers`,
    routerStats: (id: string) => `${prefix}:router_stats:${id}`,
  };
}

// ---------------------------------------------------------------------------------------------
// Worker records

export function encodeWorkerRecord(record: WorkerRecord): string {
  return JSON.stringify(record);
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const isStr = (v: unknown): v is string => typeof v === 'string';

/** Parses and validates a worker record; returns undefined (never throws) when it is malformed. */
export function parseWorkerRecord(json: string | null | undefined): WorkerRecord | undefined {
  if (!json) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (!isObj(v)) return undefined;
  if (!isStr(v.id) || !isStr(v.grpc_address) || !isStr(v.metrics_url) || !isStr(v.model)) return undefined;
  if (!WORKER_ROLES.includes(v.role as WorkerRole) || !WORKER_STATES.includes(v.state as WorkerState)) return undefined;
  if (!isNum(v.started_at) || !isNum(v.last_heartbeat_ms) || !isNum(v.ttl_ms) || !isNum(v.heartbeat_ms)) return undefined;
  const l = v.load;
  if (!isObj(l)) return undefined;
  for (const k of ['queue_len', 'running', 'waiting', 'free_kv_blocks', 'total_kv_blocks', 'kv_block_tokens']) {
    if (!isNum(l[k])) return undefined;
  }
  if (l.step_ms_p50 !== undefined && !isNum(l.step_ms_p50)) return undefined;
  if (l.prefill_tokens_per_s !== undefined && !isNum(l.prefill_tokens_per_s)) return undefined;
  if (l.step_ms_recent !== undefined && !(Array.isArray(l.step_ms_recent) && l.step_ms_recent.every(isNum))) return undefined;
  for (const k of ['queued_prefill_tokens', 'prefill_chunk_tokens', 'max_sequences', 'free_sequences', 'decode_step_ms', 'decode_batch', 'decode_step_ms_window', 'decode_batch_window']) {
    if (l[k] !== undefined && !(isNum(l[k]) && (l[k] as number) >= 0)) return undefined;
  }
  const byBatch = l.decode_step_ms_by_batch;
  if (byBatch !== undefined && !(isObj(byBatch) && Object.entries(byBatch).every(([b, ms]) => /^[1-9][0-9]{0,5}$/.test(b) && isNum(ms) && ms >= 0))) return undefined;
  return v as unknown as WorkerRecord;
}

/** A load report with every counter zero, for workers that have not measured anything yet. */
export function emptyLoad(): WorkerLoad {
  return { queue_len: 0, running: 0, waiting: 0, free_kv_blocks: 0, total_kv_blocks: 0, kv_block_tokens: 0 };
}

/** Prefill-capable: role prefill or unified. */
export function canPrefill(role: WorkerRole): boolean {
  return role === 'prefill' || role === 'unified';
}

/** Decode-capable: role decode or unified. */
export function canDecode(role: WorkerRole): boolean {
  return role === 'decode' || role === 'unified';
}

// ---------------------------------------------------------------------------------------------
// Control hashes

export function parsePdRatio(h: Record<string, string> | null | undefined): PdRatio | undefined {
  if (!h) return undefined;
  const prefill = Number(h.prefill);
  const decode = Number(h.decode);
  if (!(prefill > 0) || !(decode > 0) || !Number.isFinite(prefill) || !Number.isFinite(decode)) return undefined;
  const updated_ms = Number(h.updated_ms);
  const out: PdRatio = { prefill, decode, updated_ms: Number.isFinite(updated_ms) ? updated_ms : 0 };
  if (h.updated_by) out.updated_by = h.updated_by;
  for (const k of ['prefill_workers', 'decode_workers', 'unified_workers'] as const) {
    const n = Number(h[k]);
    if (h[k] !== undefined && Number.isInteger(n) && n >= 0) out[k] = n;
  }
  if (h.reason) out.reason = h.reason;
  return out;
}

export function parseAdmission(h: Record<string, string> | null | undefined): Admission | undefined {
  if (!h || !ADMISSION_STATES.includes(h.state as AdmissionState)) return undefined;
  const updated_ms = Number(h.updated_ms);
  const out: Admission = {
    state: h.state as AdmissionState,
    reason: h.reason ?? '',
    updated_ms: Number.isFinite(updated_ms) ? updated_ms : 0,
  };
  if (h.updated_by) out.updated_by = h.updated_by;
  return out;
}

/** Reads `{prefix}:pd_ratio`; undefined when unset or malformed. */
export async function getPdRatio(redis: Redis, keys: ClusterKeys): Promise<PdRatio | undefined> {
  return parsePdRatio(await redis.hgetall(keys.pdRatio));
}

/** Writes `{prefix}:pd_ratio` (replacing it atomically) and publishes a `pd_ratio` event. */
export async function setPdRatio(
  redis: Redis,
  keys: ClusterKeys,
  ratio: Omit<PdRatio, 'updated_ms'>,
): Promise<PdRatio> {
  if (!(ratio.prefill > 0) || !(ratio.decode > 0) || !Number.isFinite(ratio.prefill) || !Number.isFinite(ratio.decode)) {
    throw new Error(`pd_ratio sides must be positive finite numbers, got ${ratio.prefill}:${ratio.decode}`);
  }
  const value: PdRatio = { ...ratio, updated_ms: Date.now() };
  await writeHash(redis, keys.pdRatio, value, keys, 'pd_ratio');
  return value;
}

/** Reads `{prefix}:admission`; undefined when unset or malformed (treat as open). */
export async function getAdmission(redis: Redis, keys: ClusterKeys): Promise<Admission | undefined> {
  return parseAdmission(await redis.hgetall(keys.admission));
}

/** Writes `{prefix}:admission` (replacing it atomically) and publishes an `admission` event. */
/** The fields setPdRatio writes, as a flat string hash (for callers that write it in their own transaction). */
export function pdRatioFields(ratio: PdRatio): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const [k, v] of Object.entries(ratio)) if (v !== undefined) fields[k] = String(v);
  return fields;
}

export async function setAdmission(
  redis: Redis,
  keys: ClusterKeys,
  admission: { state: AdmissionState; reason?: string; updated_by?: string },
): Promise<Admission> {
  if (!ADMISSION_STATES.includes(admission.state)) throw new Error(`invalid admission state ${admission.state}`);
  const value: Admission = { state: admission.state, reason: admission.reason ?? '', updated_ms: Date.now() };
  if (admission.updated_by) value.updated_by = admission.updated_by;
  await writeHash(redis, keys.admission, value, keys, 'admission');
  return value;
}

async function writeHash(
  redis: Redis,
  key: string,
  value: object,
  keys: ClusterKeys,
  type: ClusterEvent['type'],
): Promise<void> {
  const fields: Record<string, string> = {};
  for (const [k, v] of Object.entries(value)) if (v !== undefined) fields[k] = String(v);
  const event: ClusterEvent = { type, ts: Date.now() };
  const result = await redis.multi().del(key).hset(key, fields).publish(keys.events, JSON.stringify(event)).exec();
  const failed = result?.find(([err]) => err);
  if (!result) throw new Error(`redis transaction on ${key} was aborted`);
  if (failed?.[0]) throw failed[0];
}
