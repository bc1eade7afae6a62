// Which KV-block hashes (the engine's prefix cache, packages/engine/src/kv/block-hash.ts) each worker
// holds, through Redis, for prefix-aware routing:
//
//   {prefix}:prefix_blocks:{id}  set      the block hashes worker {id} holds now, PX ttl
//   {prefix}:prefix_meta:{id}    hash     {root, block_tokens, seq} of that set, PX ttl
//   {prefix}:prefix_events       channel  JSON PrefixEventBatch: what changed, in order (seq)
//
// A worker applies each batch of its cache's stored/removed events to its set and publishes the
// batch in one transaction, so a router that missed a batch (a seq gap, a reconnect) re-reads the
// set and its meta and continues from that seq. Everything here is a hint: the worker checks the
// token ids of a cached prefix before it uses one, so a stale, lost or forged entry can only cost a
// routing choice, never a wrong answer. Bounds: a batch carries at most MAX_BATCH_HASHES hashes (a
// bigger change is sent as a resync), a set holds what one worker's KV arena can (its blocks), and
// the keys expire when the worker stops refreshing them.
import type { Redis } from 'ioredis';
import { errorMessage, type LogLike } from '../process/log-like.ts';
import { createRedisClient, closeRedisClient } from './client.ts';
import { DEFAULT_PREFIX, assertPrefix, assertWorkerId } from './keys.ts';

export const MAX_BATCH_HASHES = 4096;
const HASH_RE = /^[0-9a-f]{16}$/;

export interface PrefixKeys {
  blocks(id: string): string;
  meta(id: string): string;
  events: string;
}

export function prefixKeys(prefix: string = DEFAULT_PREFIX): PrefixKeys {
  assertPrefix(prefix);
  return {
    blocks: (id) => `${prefix}:prefix_blocks:${id}`,
    meta: (id) => `${prefix}:prefix_meta:${id}`,
    events: `${prefix}:prefix_events`,
  };
}

export interface PrefixEventBatch {
  worker: string;
  /** Root of the worker's hash chain (model and KV layout). */
  root: string;
  block_tokens: number;
  /** 1, 2, 3, ... per worker process; a reader that sees a gap re-reads the set. */
  seq: number;
  /** The set was replaced: stored is everything it holds now (the batch is not a delta). */
  resync: boolean;
  stored: string[];
  removed: string[];
}

/** Validates a published batch; undefined (never throws) when it is malformed or over the bounds. */
export function parsePrefixEventBatch(json: string): PrefixEventBatch | undefined {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const b = v as Record<string, unknown>;
  if (typeof b.worker !== 'string' || typeof b.root !== 'string' || !HASH_RE.test(b.root)) return undefined;
  try { assertWorkerId(b.worker); } catch { return undefined; }
  if (!Number.isInteger(b.block_tokens) || (b.block_tokens as number) <= 0 || !Number.isSafeInteger(b.seq) || (b.seq as number) < 1) return undefined;
  if (typeof b.resync !== 'boolean' || !Array.isArray(b.stored) || !Array.isArray(b.removed)) return undefined;
  if (b.stored.length + b.removed.length > MAX_BATCH_HASHES) return undefined;
  if (!b.stored.every((h) => typeof h === 'string' && HASH_RE.test(h)) || !b.removed.every((h) => typeof h === 'string' && HASH_RE.test(h))) return undefined;
  return b as unknown as PrefixEventBatch;
}

export interface PrefixPublisherOptions {
  redisUrl: string;
  prefix?: string;
  workerId: string;
  root: string;
  blockTokens: number;
  /** PX on the set and its meta (default 30 s); refreshed by every publish and by keepAlive(). */
  ttlMs?: number;
  logger?: LogLike;
}

/**
 * Worker side: mirrors the engine's held hashes, applies each batch of events to the worker's set
 * and publishes it. One write at a time; batches that arrive meanwhile are merged into the next. A
 * failed write (Redis away) turns the next one into a resync from the mirror.
 */
export class PrefixPublisher {
  private readonly keys: PrefixKeys;
  private readonly redis: Redis;
  private readonly held = new Set<string>();
  private pending = { stored: new Set<string>(), removed: new Set<string>(), resync: true };
  private seq = 0;
  private writing = false;
  private closed = false;

  constructor(private readonly o: PrefixPublisherOptions) {
    this.keys = prefixKeys(o.prefix);
    this.redis = createRedisClient({ url: o.redisUrl, name: `pdserve-prefix-${o.workerId}`, logger: o.logger });
  }

  /** The engine's events since the last call; with `resync`, `held` is everything it holds now. */
  apply(e: { events: Array<{ kind: 'stored' | 'removed'; hash: string }>; resync: boolean; held?: string[] }): void {
    if (e.resync) {
      this.held.clear();
      for (const h of e.held ?? []) this.held.add(h);
      this.pending = { stored: new Set(), removed: new Set(), resync: true };
    } else {
      for (const ev of e.events) {
        if (ev.kind === 'stored') {
          this.held.add(ev.hash);
          this.pending.removed.delete(ev.hash);
          this.pending.stored.add(ev.hash);
        } else {
          this.held.delete(ev.hash);
          this.pending.stored.delete(ev.hash);
          this.pending.removed.add(ev.hash);
        }
      }
      if (this.pending.stored.size + this.pending.removed.size > MAX_BATCH_HASHES) this.pending.resync = true;
    }
    void this.flush();
  }

  /** Refreshes the keys' TTL (call on every heartbeat); also retries a write that failed. */
  keepAlive(): void {
    void this.flush(true);
  }

  async close(): Promise<void> {
    this.closed = true;
    try {
      await this.redis.del(this.keys.blocks(this.o.workerId), this.keys.meta(this.o.workerId));
    } catch { /* the keys expire anyway */ }
    await closeRedisClient(this.redis);
  }

  private async flush(touch = false): Promise<void> {
    if (this.writing || this.closed) return;
    const p = this.pending;
    if (!p.resync && p.stored.size === 0 && p.removed.size === 0 && !touch) return;
    this.writing = true;
    this.pending = { stored: new Set(), removed: new Set(), resync: false };
    const id = this.o.workerId;
    const ttl = this.o.ttlMs ?? 30_000;
    const batch: PrefixEventBatch = {
      worker: id, root: this.o.root, block_tokens: this.o.blockTokens, seq: this.seq + 1, resync: p.resync,
      stored: p.resync ? [...this.held] : [...p.stored], removed: p.resync ? [] : [...p.removed],
    };
    const m = this.redis.multi();
    if (p.resync) m.del(this.keys.blocks(id));
    if (batch.stored.length) m.sadd(this.keys.blocks(id), ...batch.stored);
    if (batch.removed.length) m.srem(this.keys.blocks(id), ...batch.removed);
    m.hset(this.keys.meta(id), { root: batch.root, block_tokens: String(batch.block_tokens), seq: String(batch.seq) });
    m.pexpire(this.keys.blocks(id), ttl).pexpire(this.keys.meta(id), ttl);
    // Resyncs of a big set are not published whole: readers re-read the set on the flag.
    m.publish(this.keys.events, JSON.stringify(batch.stored.length + batch.removed.length > MAX_BATCH_HASHES ? { ...batch, stored: [], removed: [] } : batch));
    try {
      const res = await m.exec();
      if (!res || res.some(([err]) => err)) throw res?.find(([err]) => err)?.[0] ?? new Error('transaction aborted');
      this.seq = batch.seq;
    } catch (err) {
      this.o.logger?.warn({ err: errorMessage(err) }, 'prefix cache events not published; resyncing on the next write');
      this.pending.resync = true;
    } finally {
      this.writing = false;
    }
    if (this.pending.resync || this.pending.stored.size || this.pending.removed.size) setTimeout(() => void this.flush(), this.pending.resync ? 500 : 0).unref();
  }
}

/** Router side: one worker's set and meta, read in one transaction (a consistent snapshot as of `seq`). */
export async function readPrefixSnapshot(redis: Redis, keys: PrefixKeys, workerId: string): Promise<{ root: string; blockTokens: number; seq: number; hashes: string[] } | undefined> {
  const res = await redis.multi().hgetall(keys.meta(workerId)).smembers(keys.blocks(workerId)).exec();
  if (!res || res.some(([err]) => err)) return undefined;
  const meta = res[0][1] as Record<string, string>;
  const hashes = (res[1][1] as string[]).filter((h) => HASH_RE.test(h));
  const blockTokens = Number(meta.block_tokens);
  const seq = Number(meta.seq);
  if (!meta.root || !HASH_RE.test(meta.root) || !(blockTokens > 0) || !Number.isSafeInteger(seq)) return undefined;
  return { root: meta.root, blockTokens, seq, hashes };
}
