// The router's view of which worker holds which prompt prefix (mechanism; placement.ts decides what
// to make of it). Fed by the workers' block-hash events through Redis
// (packages/common/src/redis/prefix-events.ts): a batch that follows the last one applies as a
// delta; a gap, a resync or an unknown worker makes it re-read that worker's set. A lookup hashes
// the prompt's full blocks with each worker's chain root and counts the leading blocks the worker
// holds. Only a hint: the worker verifies token ids before it reuses anything, so a stale or forged
// entry can only make a routing choice worse, never an answer wrong.
import { blockHash } from '@pdserve/engine';
import { closeRedisClient, createRedisClient, parsePrefixEventBatch, prefixKeys, readPrefixSnapshot, type LogLike, type PrefixEventBatch, type PrefixKeys, type RedisClient } from '@pdserve/common';

/** Hashes kept per worker at most (a worker holds at most its KV arena's blocks; this bounds a forged flood). */
export const MAX_HASHES_PER_WORKER = 1 << 17;

interface WorkerPrefixes {
  root: string;
  blockTokens: number;
  seq: number;
  hashes: Set<string>;
}

export class PrefixIndex {
  private readonly workers = new Map<string, WorkerPrefixes>();
  /** Workers whose set is being re-read (batches for them wait for the snapshot). */
  private readonly resyncing = new Set<string>();

  /** Applies one batch; returns true when the worker's set must be re-read (a gap, or a resync too big to publish). */
  apply(b: PrefixEventBatch): boolean {
    if (this.resyncing.has(b.worker)) return false;
    const w = this.workers.get(b.worker);
    if (b.resync && (b.stored.length > 0 || b.seq === 1)) {
      this.workers.set(b.worker, { root: b.root, blockTokens: b.block_tokens, seq: b.seq, hashes: bounded(b.stored) });
      return false;
    }
    if (!w || b.resync || b.seq !== w.seq + 1 || w.root !== b.root || w.blockTokens !== b.block_tokens) return true;
    for (const h of b.removed) w.hashes.delete(h);
    for (const h of b.stored) if (w.hashes.size < MAX_HASHES_PER_WORKER) w.hashes.add(h);
    w.seq = b.seq;
    return false;
  }

  /** Replaces a worker's view with a snapshot read from Redis. */
  replace(workerId: string, s: { root: string; blockTokens: number; seq: number; hashes: string[] }): void {
    this.workers.set(workerId, { root: s.root, blockTokens: s.blockTokens, seq: s.seq, hashes: bounded(s.hashes) });
  }

  markResyncing(workerId: string, on: boolean): void {
    if (on) this.resyncing.add(workerId);
    else this.resyncing.delete(workerId);
  }

  /** Forgets workers that left the registry. */
  retain(ids: ReadonlySet<string>): void {
    for (const id of this.workers.keys()) if (!ids.has(id)) this.workers.delete(id);
    for (const id of this.resyncing) if (!ids.has(id)) this.resyncing.delete(id);
  }

  /** Blocks the worker holds by its latest events; undefined when it has published none. */
  heldBlocks(workerId: string): number | undefined {
    return this.workers.get(workerId)?.hashes.size;
  }

  has(workerId: string): boolean {
    return this.workers.has(workerId);
  }

  get size(): { workers: number; hashes: number } {
    let hashes = 0;
    for (const w of this.workers.values()) hashes += w.hashes.size;
    return { workers: this.workers.size, hashes };
  }

  /**
   * Prompt tokens each of `workerIds` would likely serve from its cache: its leading run of held
   * blocks, never the last prompt token (the worker recomputes it). One hash chain per distinct
   * root, computed lazily: only as far as some worker's run of held blocks reaches (plus one), so a
   * long prompt with a short shared prefix costs a few hashes, not one per block.
   */
  cachedTokens(promptIds: readonly number[], workerIds: readonly string[]): Map<string, number> {
    const out = new Map<string, number>();
    const chains = new Map<string, string[]>();
    for (const id of workerIds) {
      const w = this.workers.get(id);
      if (!w || w.hashes.size === 0) { out.set(id, 0); continue; }
      const B = w.blockTokens;
      const cap = Math.floor((promptIds.length - 1) / B);
      const key = `${w.root}/${B}`;
      let chain = chains.get(key);
      if (!chain) chains.set(key, (chain = []));
      let n = 0;
      for (; n < cap; n++) {
        if (n === chain.length) chain.push(blockHash(n === 0 ? w.root : chain[n - 1], promptIds, n * B, B));
        if (!w.hashes.has(chain[n])) break;
      }
      out.set(id, n * B);
    }
    return out;
  }
}

function bounded(hashes: readonly string[]): Set<string> {
  return new Set(hashes.length > MAX_HASHES_PER_WORKER ? hashes.slice(0, MAX_HASHES_PER_WORKER) : hashes);
}

export interface PrefixIndexFeedOptions {
  redisUrl: string;
  prefix?: string;
  logger: LogLike;
}

/** Subscribes the index to the workers' batches and re-reads a worker's set when the stream breaks. */
export class PrefixIndexFeed {
  readonly index = new PrefixIndex();
  private readonly keys: PrefixKeys;
  private readonly sub: RedisClient;
  private readonly cmd: RedisClient;
  private stopped = false;

  constructor(private readonly o: PrefixIndexFeedOptions) {
    this.keys = prefixKeys(o.prefix);
    this.cmd = createRedisClient({ url: o.redisUrl, name: 'pdserve-router-prefix', logger: o.logger });
    this.sub = createRedisClient({ url: o.redisUrl, name: 'pdserve-router-prefix-sub', logger: o.logger });
    // Subscribe on every (re)connect (no offline queue, no auto-resubscribe); whatever was missed
    // meanwhile shows up as a seq gap and is re-read.
    this.sub.on('ready', () => {
      this.sub.subscribe(this.keys.events).catch((err: Error) => o.logger.debug({ err: err.message }, 'prefix events subscribe failed'));
    });
    this.sub.on('message', (_channel: string, message: string) => {
      const b = parsePrefixEventBatch(message);
      if (!b) return;
      if (this.index.apply(b)) void this.resync(b.worker);
    });
  }

  /** Workers in the registry now: their sets are read once when first seen; the others are dropped. */
  follow(ids: ReadonlySet<string>): void {
    this.index.retain(ids);
    for (const id of ids) if (!this.index.has(id)) void this.resync(id);
  }

  private async resync(workerId: string): Promise<void> {
    if (this.stopped) return;
    this.index.markResyncing(workerId, true);
    try {
      const s = await readPrefixSnapshot(this.cmd, this.keys, workerId);
      if (s) this.index.replace(workerId, s);
    } catch (err) {
      this.o.logger.debug({ worker: workerId, err: (err as Error).message }, 'prefix set not read');
    } finally {
      this.index.markResyncing(workerId, false);
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all([closeRedisClient(this.sub), closeRedisClient(this.cmd)]);
  }
}
