// Automatic prefix caching over the slot arena (slot-cache.ts). A sequence owns one slot, so the
// unit of reuse is a slot's leading blocks:
//  - a sequence that ends leaves its full blocks in its slot as a *retained* prefix (no memory is
//    added: a retained slot is an idle slot that has not been overwritten yet);
//  - a new prompt looks for the longest run of its leading blocks held by any slot, retained or
//    live (another request in flight with the same system prompt). A retained slot is taken over
//    in place; a live one's blocks are copied into the new sequence's own slot. Prefill then starts
//    after the hit;
//  - a slot is needed and none is empty: the least recently used retained prefix is dropped. A
//    live sequence's slot is never touched.
// Blocks are named by a hash chain (block-hash.ts), but a hash only finds a candidate: before any
// reuse the cached token ids are compared with the prompt's, so a collision (or a forged routing
// hint upstream) can never hand one prompt another's KV. At least the prompt's last token is always
// recomputed: its logits give the first sampled token (as vLLM does).
import { blockHashChain, extendBlockHashes, prefixRootHash, type BlockHash, type PrefixIdentity } from './block-hash.ts';
import type { KvSequence, SlotKvCache } from './slot-cache.ts';

interface Entry {
  /** Token ids at the holder's positions (for a live prompt, ahead of the positions computed so far). */
  tokens: number[];
  /** Hash chain of tokens' full blocks; each is counted in `refs`. */
  hashes: BlockHash[];
  lastUsed: number;
}

export interface PrefixCacheStats {
  /** Prompt tokens looked up. */
  queries: number;
  /** Of those, tokens served from the cache. */
  hits: number;
  /** Lookups whose hash matched but whose token ids did not (a hash collision). */
  collisions: number;
  /** Retained prefixes dropped to make room. */
  evictions: number;
}

/** A change in the set of block hashes this cache holds (what a prefix-aware router indexes). */
export interface PrefixEvent {
  kind: 'stored' | 'removed';
  hash: BlockHash;
}

export interface PrefixCacheOptions {
  /** Events kept for drainEvents() at most; past it they are dropped and the next drain asks for a resync. */
  maxEvents?: number;
  /** Hash chain function (tests replace it to force collisions). */
  chain?: (root: BlockHash, tokens: ArrayLike<number>, blockTokens: number, maxBlocks?: number) => BlockHash[];
}

export interface PrefixHit {
  seq: KvSequence;
  /** Leading prompt positions already in seq (whole blocks); prefill starts there. */
  cachedTokens: number;
}

export class PrefixCache {
  readonly root: BlockHash;
  readonly blockTokens: number;
  private readonly entries = new Map<KvSequence, Entry>();
  private readonly refs = new Map<BlockHash, number>();
  /**
   * Reservations that took over a retained slot (reserve()): the token ids its old contents stand
   * for. Only that reservation's own attach() may use them; nobody else matches against them, since
   * a KV transfer may overwrite them at any time.
   */
  private readonly reservedOver = new Map<KvSequence, number[]>();
  private readonly stats: PrefixCacheStats = { queries: 0, hits: 0, collisions: 0, evictions: 0 };
  private events: PrefixEvent[] = [];
  private eventsLost = false;
  private tick = 0;
  private readonly maxEvents: number;
  private readonly chain: NonNullable<PrefixCacheOptions['chain']>;

  constructor(private readonly slots: SlotKvCache, identity: Omit<PrefixIdentity, 'blockTokens'>, opts: PrefixCacheOptions = {}) {
    this.blockTokens = slots.shape.blockTokens;
    this.root = prefixRootHash({ ...identity, blockTokens: this.blockTokens });
    this.maxEvents = opts.maxEvents ?? 8192;
    this.chain = opts.chain ?? blockHashChain;
  }

  get counters(): Readonly<PrefixCacheStats> {
    return { ...this.stats };
  }

  /** Blocks held by retained prefixes (the cache proper; live sequences' blocks are in use). */
  get retainedBlocks(): number {
    return this.slots.retainedBlocks;
  }

  /** Every block hash held now, retained or live. */
  heldHashes(): BlockHash[] {
    return [...this.refs.keys()];
  }

  /**
   * Events since the last drain. `resync` is true when some were dropped (more than maxEvents
   * piled up): the consumer should replace its view with heldHashes().
   */
  drainEvents(): { events: PrefixEvent[]; resync: boolean } {
    const out = { events: this.events, resync: this.eventsLost };
    this.events = [];
    this.eventsLost = false;
    return out;
  }

  /** A slot for a sequence that is not a prompt (a decode reservation): an empty one, else the LRU retained one. */
  allocate(id: string, keep?: KvSequence): KvSequence | null {
    const seq = this.slots.allocate(id);
    if (seq) return seq;
    const victim = this.lru(keep);
    if (!victim) return null;
    this.dropEntry(victim);
    this.slots.free(victim);
    this.stats.evictions++;
    return this.slots.allocate(id);
  }

  /**
   * A slot for a decode reservation whose prompt is not known yet. With no empty slot it takes the
   * least recently used retained one *with its contents*: on a unified worker the prompt's own
   * prefill (attach) may find its prefix right there, which evicting first would have destroyed.
   * The sequence's length is then that of the old contents until attach() or a KV transfer sets it.
   */
  reserve(id: string): KvSequence | null {
    const empty = this.slots.allocate(id);
    if (empty) return empty;
    const victim = this.lru();
    if (!victim) return null;
    const e = this.entries.get(victim);
    this.dropEntry(victim);
    this.stats.evictions++;
    const seq = this.slots.adopt(victim, id, victim.length);
    if (e) this.reservedOver.set(seq, e.tokens.slice(0, seq.length));
    else seq.length = 0;
    return seq;
  }

  /** A slot for a prompt, holding its longest cached prefix; null when no slot is free. */
  start(id: string, promptIds: readonly number[]): PrefixHit | null {
    const hashes = this.chain(this.root, promptIds, this.blockTokens);
    const m = this.match(promptIds, hashes);
    let seq: KvSequence;
    if (m && this.slots.isRetained(m.holder)) {
      const old = this.entries.get(m.holder)!;
      seq = this.slots.adopt(m.holder, id, m.blocks * this.blockTokens);
      this.register(seq, promptIds, hashes);
      this.entries.delete(m.holder);
      this.unref(old.hashes);
    } else {
      const fresh = this.allocate(id, m?.holder);
      if (!fresh) return null;
      seq = fresh;
      if (m) this.copyFrom(m.holder, seq, m.blocks);
      this.register(seq, promptIds, hashes);
    }
    return this.counted(seq, promptIds.length);
  }

  /**
   * The live sequence `seq` (a unified worker's decode reservation, empty or over a retained slot's
   * old contents) takes its prompt's cached prefix: its own old contents where they match best, else
   * another slot's.
   */
  attach(seq: KvSequence, promptIds: readonly number[]): PrefixHit {
    const own = this.reservedOver.get(seq);
    this.reservedOver.delete(seq);
    if (seq.length !== 0 && !own) throw new Error(`sequence ${seq.id} already holds ${seq.length} positions`);
    this.dropEntry(seq);
    const B = this.blockTokens;
    const hashes = this.chain(this.root, promptIds, B);
    const m = this.match(promptIds, hashes);
    const cap = Math.min(Math.floor(seq.length / B), Math.floor((promptIds.length - 1) / B));
    const ownBlocks = own ? verifiedBlocks(own, promptIds, Math.max(0, cap), B) : 0;
    if (ownBlocks > 0 && ownBlocks >= (m?.blocks ?? 0)) {
      seq.length = ownBlocks * B; // in place: the slot already holds them
      this.register(seq, promptIds, hashes);
      return this.counted(seq, promptIds.length);
    }
    seq.length = 0;
    this.register(seq, promptIds, hashes);
    if (m && this.slots.isRetained(m.holder)) {
      const old = this.entries.get(m.holder)!;
      this.slots.moveInto(seq, m.holder, m.blocks * this.blockTokens);
      this.entries.delete(m.holder);
      this.unref(old.hashes);
    } else if (m) this.copyFrom(m.holder, seq, m.blocks);
    return this.counted(seq, promptIds.length);
  }

  /**
   * The sequence `seq` (a decode reservation) now holds the KV of `promptIds`, written by a KV
   * transfer: its blocks become reusable here as if prefilled here, so a conversation's next turn
   * finds its previous prompt and (appended() extends it) answer on the worker that decoded it.
   * The token ids come with the request from the router, the KV from the prefill worker it chose
   * for those ids; the ids are what a later match verifies against.
   */
  remember(seq: KvSequence, promptIds: readonly number[]): void {
    if (seq.length !== promptIds.length) throw new Error(`sequence ${seq.id} holds ${seq.length} positions, not the ${promptIds.length} of its prompt`);
    this.reservedOver.delete(seq);
    this.dropEntry(seq);
    this.register(seq, promptIds, this.chain(this.root, promptIds, this.blockTokens));
  }

  /** Called after a decode step appended `token` to `seq`, so the blocks it completes are reusable too. */
  appended(seq: KvSequence, token: number): void {
    const e = this.entries.get(seq);
    if (!e || e.tokens.length !== seq.length - 1) return;
    e.tokens.push(token);
    if (e.tokens.length % this.blockTokens === 0) {
      const before = e.hashes.length;
      extendBlockHashes(this.root, e.hashes, e.tokens, this.blockTokens);
      this.ref(e.hashes.slice(before));
    }
  }

  /** Ends a sequence: its full, computed blocks stay as a retained prefix; without any the slot is freed. */
  release(seq: KvSequence): void {
    this.reservedOver.delete(seq);
    const e = this.entries.get(seq);
    if (!e) return this.slots.free(seq);
    this.entries.delete(seq);
    const holder = this.slots.retain(seq, Math.min(seq.length, e.tokens.length));
    if (!holder) return this.unref(e.hashes);
    e.tokens.length = holder.length;
    this.unref(e.hashes.splice(holder.length / this.blockTokens));
    e.lastUsed = ++this.tick;
    this.entries.set(holder, e);
  }

  /**
   * The holder with the longest run of verified leading blocks of the prompt, capped so that the
   * prompt's last token is recomputed; retained holders win ties (they are taken over, not copied).
   */
  private match(promptIds: readonly number[], hashes: readonly BlockHash[]): { holder: KvSequence; blocks: number } | null {
    const B = this.blockTokens;
    const cap = Math.min(hashes.length, Math.floor((promptIds.length - 1) / B));
    let best: { holder: KvSequence; blocks: number } | null = null;
    for (const [holder, e] of this.entries) {
      if (!this.slots.holds(holder)) { this.dropEntry(holder); continue; } // freed behind our back: never trust it
      const valid = Math.min(cap, e.hashes.length, Math.floor(Math.min(holder.length, e.tokens.length) / B));
      let n = 0;
      while (n < valid && e.hashes[n] === hashes[n]) n++;
      // The collision guard: a hash names a candidate, the token ids decide.
      const verified = verifiedBlocks(e.tokens, promptIds, n, B);
      if (verified < n) this.stats.collisions++;
      if (verified === 0) continue;
      if (!best || verified > best.blocks || (verified === best.blocks && this.slots.isRetained(holder) && !this.slots.isRetained(best.holder))) {
        best = { holder, blocks: verified };
      }
    }
    return best;
  }

  /** The least recently used retained holder (other than `keep`). */
  private lru(keep?: KvSequence): KvSequence | undefined {
    let victim: KvSequence | undefined;
    let oldest = Infinity;
    for (const h of this.slots.retained) {
      if (h === keep) continue;
      const used = this.entries.get(h)?.lastUsed ?? -1;
      if (used < oldest) { oldest = used; victim = h; }
    }
    return victim;
  }

  private copyFrom(holder: KvSequence, seq: KvSequence, blocks: number): void {
    this.slots.copyPrefix(holder, seq, blocks * this.blockTokens);
    const e = this.entries.get(holder);
    if (e) e.lastUsed = ++this.tick;
  }

  private counted(seq: KvSequence, promptTokens: number): PrefixHit {
    this.stats.queries += promptTokens;
    this.stats.hits += seq.length;
    return { seq, cachedTokens: seq.length };
  }

  private register(seq: KvSequence, promptIds: readonly number[], hashes: BlockHash[]): void {
    this.entries.set(seq, { tokens: promptIds.slice(), hashes: hashes.slice(), lastUsed: ++this.tick });
    this.ref(hashes);
  }

  private dropEntry(holder: KvSequence): void {
    const e = this.entries.get(holder);
    if (!e) return;
    this.entries.delete(holder);
    this.unref(e.hashes);
  }

  private ref(hashes: readonly BlockHash[]): void {
    for (const h of hashes) {
      const n = this.refs.get(h) ?? 0;
      this.refs.set(h, n + 1);
      if (n === 0) this.event('stored', h);
    }
  }

  private unref(hashes: readonly BlockHash[]): void {
    for (const h of hashes) {
      const n = this.refs.get(h) ?? 0;
      if (n <= 1) {
        this.refs.delete(h);
        if (n === 1) this.event('removed', h);
      } else this.refs.set(h, n - 1);
    }
  }

  private event(kind: PrefixEvent['kind'], hash: BlockHash): void {
    if (this.eventsLost) return;
    if (this.events.length >= this.maxEvents) {
      this.events = [];
      this.eventsLost = true;
      return;
    }
    this.events.push({ kind, hash });
  }
}

/** How many of the first `blocks` blocks hold the same token ids in both. */
function verifiedBlocks(cached: readonly number[], prompt: readonly number[], blocks: number, B: number): number {
  for (let b = 0; b < blocks; b++) {
    for (let i = b * B; i < (b + 1) * B; i++) if (cached[i] !== prompt[i]) return b;
  }
  return blocks;
}
