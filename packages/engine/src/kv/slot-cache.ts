// Physical KV storage for pdserve's Llama graph. Per layer, keys and values each live in one
// Float32Array viewed as [slots, kv_heads, stride, head_dim]: a sequence owns one slot, and a batch
// of n sequences in slots 0..n-1 is handed to ONNX Runtime as one tensor with no copy. `stride`
// (positions per slot) follows the longest sequence, growing and shrinking by re-laying the arena
// out in place, so attention never scans much more than the batch's real length while memory stays
// fixed at maxSlots * maxTokensPerSlot positions, set by configuration.
//
// Blocks (kv/layout.ts) are the unit of accounting and of transfer: a sequence's block b is the
// strided range of positions [b*B, (b+1)*B) of its slot, gathered into the canonical layout.
//
// A slot whose sequence ended may be *retained* instead of freed (the prefix cache's mechanism,
// prefix-cache.ts decides when): it keeps its first blocks in place under a holder that is not a
// live sequence, moves with the arena like one, and is handed over (adopt, moveInto) or copied
// from (copyPrefix) by a new sequence that starts with the same tokens, or dropped when the slot
// is needed. Retained slots count as free capacity: they hold no memory that is not already the
// arena's.
import { blockBytes, blocksFor, type KvShape } from './layout.ts';

export interface SlotCacheOptions extends KvShape {
  maxSlots: number;
  /** Longest sequence one slot holds (rounded up to whole blocks). */
  maxTokensPerSlot: number;
}

/** A sequence's hold on the cache; `slot` changes when the cache gathers a batch. */
export interface KvSequence {
  readonly id: string;
  slot: number;
  /** Positions whose keys and values are in the cache. */
  length: number;
}

// Stride growth factor: attention scans the whole stride, so growing by 25% bounds that waste, and
// each growth re-lays out the arena once (amortized over the steps that fill the new room).
const GROWTH = 1.25;

/** `n` floats over the start of `into` (4-byte aligned, large enough), or a new zeroed array. */
export function outFloats(into: Uint8Array | undefined, n: number): Float32Array {
  if (!into) return new Float32Array(n);
  if (into.byteOffset % 4 !== 0 || into.byteLength < n * 4) throw new Error(`readBlocks: the output buffer (${into.byteLength} bytes at offset ${into.byteOffset}) cannot hold ${n * 4} aligned bytes`);
  return new Float32Array(into.buffer, into.byteOffset, n);
}

export class SlotKvCache {
  readonly shape: KvShape;
  readonly maxSlots: number;
  readonly maxTokensPerSlot: number;
  readonly blockBytes: number;
  readonly keys: Float32Array[] = [];
  readonly values: Float32Array[] = [];
  /** Byte views of keys/values, so blocks are scattered from wire bytes at any alignment without a copy. */
  private readonly keyBytes: Uint8Array[] = [];
  private readonly valueBytes: Uint8Array[] = [];
  private strideTokens: number;
  /** Each slot's holder: a live sequence, a retained prefix, or null. */
  private readonly owners: Array<KvSequence | null>;
  private readonly retainedHolders = new Set<KvSequence>();
  /** Scratch for one slot row (at least stride x headDim floats), made at the first swap and kept, grown with the stride. */
  private swapRow?: Float32Array;

  constructor(opts: SlotCacheOptions) {
    this.shape = { layers: opts.layers, kvHeads: opts.kvHeads, headDim: opts.headDim, blockTokens: opts.blockTokens };
    this.maxSlots = opts.maxSlots;
    this.maxTokensPerSlot = blocksFor(opts.maxTokensPerSlot, opts.blockTokens) * opts.blockTokens;
    this.blockBytes = blockBytes(this.shape);
    this.strideTokens = opts.blockTokens;
    const floats = opts.maxSlots * opts.kvHeads * this.maxTokensPerSlot * opts.headDim;
    for (let l = 0; l < opts.layers; l++) {
      this.keys.push(new Float32Array(floats));
      this.values.push(new Float32Array(floats));
      this.keyBytes.push(new Uint8Array(this.keys[l].buffer));
      this.valueBytes.push(new Uint8Array(this.values[l].buffer));
    }
    this.owners = new Array(opts.maxSlots).fill(null);
  }

  get stride(): number {
    return this.strideTokens;
  }

  get totalBytes(): number {
    return this.shape.layers * 2 * this.keys[0].byteLength;
  }

  get totalBlocks(): number {
    return this.maxSlots * (this.maxTokensPerSlot / this.shape.blockTokens);
  }

  /** Blocks of live sequences (retained prefixes are free capacity). */
  get usedBlocks(): number {
    let used = 0;
    for (const o of this.owners) if (o && !this.retainedHolders.has(o)) used += blocksFor(o.length, this.shape.blockTokens);
    return used;
  }

  /** Blocks held by retained prefixes. */
  get retainedBlocks(): number {
    let n = 0;
    for (const o of this.retainedHolders) n += blocksFor(o.length, this.shape.blockTokens);
    return n;
  }

  /** Slots without a live sequence (empty or retained). */
  get freeSlots(): number {
    return this.owners.filter((o) => o === null || this.retainedHolders.has(o)).length;
  }

  /** Slots with nothing in them, not even a retained prefix. */
  get emptySlots(): number {
    return this.owners.filter((o) => o === null).length;
  }

  get sequences(): KvSequence[] {
    return this.owners.filter((o): o is KvSequence => o !== null && !this.retainedHolders.has(o));
  }

  get retained(): KvSequence[] {
    return [...this.retainedHolders];
  }

  /** Whether this holder (live or retained) still owns its slot. */
  holds(holder: KvSequence): boolean {
    return this.owners[holder.slot] === holder;
  }

  isRetained(holder: KvSequence): boolean {
    return this.retainedHolders.has(holder);
  }

  /** Claims the lowest empty slot for a new, empty sequence; null when every slot is live or retained. */
  allocate(id: string): KvSequence | null {
    const slot = this.owners.indexOf(null);
    if (slot < 0) return null;
    const seq: KvSequence = { id, slot, length: 0 };
    this.owners[slot] = seq;
    return seq;
  }

  /** Frees a live sequence's slot, or drops a retained prefix. */
  free(seq: KvSequence): void {
    this.checkOwner(seq);
    this.owners[seq.slot] = null;
    this.retainedHolders.delete(seq);
    seq.length = 0;
    this.maybeShrink();
  }

  /**
   * Ends a live sequence but keeps its first `tokens` positions (rounded down to whole blocks) in
   * its slot under a new holder, returned; null (and the slot freed) when no whole block is left.
   */
  retain(seq: KvSequence, tokens: number): KvSequence | null {
    this.checkOwner(seq);
    if (this.retainedHolders.has(seq)) throw new Error(`slot ${seq.slot} is already retained`);
    const B = this.shape.blockTokens;
    const keep = Math.floor(Math.min(tokens, seq.length) / B) * B;
    if (keep === 0) {
      this.free(seq);
      return null;
    }
    const holder: KvSequence = { id: `~retained-${seq.slot}`, slot: seq.slot, length: keep };
    this.owners[seq.slot] = holder;
    this.retainedHolders.add(holder);
    seq.length = 0;
    this.maybeShrink();
    return holder;
  }

  /** A new live sequence in a retained slot, starting with its first `tokens` positions. */
  adopt(holder: KvSequence, id: string, tokens: number): KvSequence {
    this.checkRetained(holder, tokens);
    const seq: KvSequence = { id, slot: holder.slot, length: tokens };
    this.owners[holder.slot] = seq;
    this.retainedHolders.delete(holder);
    holder.length = 0;
    return seq;
  }

  /** An empty live sequence moves into a retained slot and starts with its first `tokens` positions; its old slot is freed. */
  moveInto(seq: KvSequence, holder: KvSequence, tokens: number): void {
    this.checkOwner(seq);
    if (this.retainedHolders.has(seq) || seq.length !== 0) throw new Error(`sequence ${seq.id} must be live and empty to move into a retained slot`);
    this.checkRetained(holder, tokens);
    this.owners[seq.slot] = null;
    seq.slot = holder.slot;
    this.owners[holder.slot] = seq;
    seq.length = tokens;
    this.retainedHolders.delete(holder);
    holder.length = 0;
  }

  /** Copies the first `tokens` positions of `from` (live or retained) into the empty live sequence `to`. */
  copyPrefix(from: KvSequence, to: KvSequence, tokens: number): void {
    this.checkOwner(from);
    this.checkOwner(to);
    if (this.retainedHolders.has(to) || to.length !== 0) throw new Error(`sequence ${to.id} must be live and empty to take a copied prefix`);
    if (tokens > from.length) throw new Error(`slot ${from.slot} holds ${from.length} positions, not ${tokens}`);
    this.copyRows(from.slot, to.slot, tokens);
    to.length = tokens;
  }

  private checkOwner(seq: KvSequence): void {
    if (this.owners[seq.slot] !== seq) throw new Error(`sequence ${seq.id} does not own slot ${seq.slot}`);
  }

  private checkRetained(holder: KvSequence, tokens: number): void {
    this.checkOwner(holder);
    if (!this.retainedHolders.has(holder)) throw new Error(`slot ${holder.slot} is not a retained prefix`);
    if (tokens > holder.length) throw new Error(`retained slot ${holder.slot} holds ${holder.length} positions, not ${tokens}`);
  }

  /** [count, kvHeads, stride, headDim] window of layer `layer` starting at `firstSlot` (no copy). */
  window(kind: 0 | 1, layer: number, firstSlot: number, count: number): Float32Array {
    const slotFloats = this.shape.kvHeads * this.strideTokens * this.shape.headDim;
    return (kind === 0 ? this.keys : this.values)[layer].subarray(firstSlot * slotFloats, (firstSlot + count) * slotFloats);
  }

  /** Makes room for `tokens` positions per slot. */
  reserve(tokens: number): void {
    if (tokens > this.maxTokensPerSlot) throw new Error(`${tokens} positions exceed the ${this.maxTokensPerSlot} a KV slot holds`);
    if (tokens <= this.strideTokens) return;
    const grown = Math.max(tokens, Math.ceil(this.strideTokens * GROWTH));
    this.relayout(Math.min(this.maxTokensPerSlot, blocksFor(grown, this.shape.blockTokens) * this.shape.blockTokens));
  }

  /** Writes `count` new positions (head-major [kvHeads, count, headDim]) of one layer at seq.length. */
  writeNew(seq: KvSequence, layer: number, keys: Float32Array, values: Float32Array, srcCount: number, count: number, srcRow: number): void {
    const { kvHeads, headDim } = this.shape;
    const stride = this.strideTokens;
    for (let h = 0; h < kvHeads; h++) {
      const src = ((srcRow * kvHeads + h) * srcCount) * headDim;
      const dst = ((seq.slot * kvHeads + h) * stride + seq.length) * headDim;
      this.keys[layer].set(keys.subarray(src, src + count * headDim), dst);
      this.values[layer].set(values.subarray(src, src + count * headDim), dst);
    }
  }

  /** Gathers blocks [first, first+count) of a sequence into the canonical layout (zeros past its length). */
  readBlocks(seq: KvSequence, first: number, count: number, into?: Uint8Array): Uint8Array {
    const { layers, kvHeads, headDim, blockTokens: B } = this.shape;
    const stride = this.strideTokens;
    const out = outFloats(into, (this.blockBytes / 4) * count);
    let o = 0;
    for (let b = first; b < first + count; b++) {
      const valid = Math.max(0, Math.min(B, seq.length - b * B));
      for (let l = 0; l < layers; l++) {
        const k = this.keys[l], v = this.values[l];
        for (let kind = 0; kind < 2; kind++) {
          const t = kind === 0 ? k : v;
          for (let h = 0; h < kvHeads; h++) {
            const src = ((seq.slot * kvHeads + h) * stride + b * B) * headDim;
            out.set(t.subarray(src, src + valid * headDim), o);
            // A reused buffer holds an earlier message's bytes: the padding must read as zeros.
            if (into && valid < B) out.fill(0, o + valid * headDim, o + B * headDim);
            o += B * headDim;
          }
        }
      }
    }
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  }

  /** Scatters canonical-layout blocks into a sequence from block `first`; its length becomes `validTokens`. */
  writeBlocks(seq: KvSequence, first: number, data: Uint8Array, validTokens: number): void {
    const { layers, kvHeads, headDim, blockTokens: B } = this.shape;
    const count = data.byteLength / this.blockBytes;
    if (!Number.isInteger(count)) throw new Error(`KV payload of ${data.byteLength} bytes is not a whole number of ${this.blockBytes}-byte blocks`);
    if (validTokens > (first + count) * B || validTokens <= first * B) throw new Error(`KV blocks ${first}..${first + count - 1} cannot hold a length of ${validTokens}`);
    this.reserve((first + count) * B);
    const stride = this.strideTokens;
    // Byte copies: gRPC hands out payloads at any offset, and a Float32Array view of one would need
    // an aligned copy of the whole payload first.
    const run = B * headDim * 4;
    let i = 0;
    for (let b = first; b < first + count; b++) {
      for (let l = 0; l < layers; l++) {
        for (const t of [this.keyBytes[l], this.valueBytes[l]]) {
          for (let h = 0; h < kvHeads; h++) {
            const dst = ((seq.slot * kvHeads + h) * stride + b * B) * headDim * 4;
            t.set(data.subarray(i, i + run), dst);
            i += run;
          }
        }
      }
    }
    seq.length = validTokens;
  }

  /**
   * Moves the given sequences so that together they hold slots 0..n-1, in whatever order costs the
   * fewest copies: one already in that range stays where it is, and each one outside it moves into a
   * slot of the range that no member holds (whoever holds that slot, a retained prefix or a sequence
   * not in this batch, first moves out to an empty slot, or trades places when none is empty). A
   * forward pass takes its rows in slot order (LlamaRunner maps them back), so the batch's own order
   * costs nothing. `compact` kept that order instead, so a request that finished early in a batch of
   * n shifted every later one down a slot; on a unified worker under a burst such steps spent
   * 35-630 ms copying KV before the forward pass. Returns how many sequences moved.
   */
  gather(batch: KvSequence[]): number {
    const n = batch.length;
    const members = new Set(batch);
    const holes: number[] = [];
    for (let i = 0; i < n; i++) {
      const o = this.owners[i];
      if (o === null || !members.has(o)) holes.push(i);
    }
    let moved = 0;
    for (const seq of batch) {
      if (seq.slot < n) continue;
      this.checkOwner(seq);
      const hole = holes.pop()!;
      const other = this.owners[hole];
      if (other) {
        const empty = this.owners.indexOf(null, n);
        if (empty < 0) {
          this.swap(seq, other);
          moved++;
          continue;
        }
        this.move(other, empty);
      }
      this.move(seq, hole);
      moved++;
    }
    return moved;
  }

  private move(seq: KvSequence, to: number): void {
    this.copyRows(seq.slot, to, seq.length);
    this.owners[seq.slot] = null;
    this.owners[to] = seq;
    seq.slot = to;
  }

  /**
   * Two holders trade slots, one (layer, key/value, head) row at a time through a single reused row
   * of scratch. It gathered the whole of one into a new buffer instead: for a 1000-position sequence
   * of SmolLM2-135M's shape that was a 44 MiB allocation per swap, and the swap took 42-55 ms, where
   * rows take 9 ms (scripts/bench-slot-swap.ts; BENCHMARKS.md, issue 8).
   */
  private swap(a: KvSequence, b: KvSequence): void {
    const { layers, kvHeads, headDim } = this.shape;
    const stride = this.strideTokens;
    const aFloats = a.length * headDim, bFloats = b.length * headDim;
    if (!this.swapRow || this.swapRow.length < bFloats) this.swapRow = new Float32Array(stride * headDim);
    const row = this.swapRow;
    for (let l = 0; l < layers; l++) {
      for (const t of [this.keys[l], this.values[l]]) {
        for (let h = 0; h < kvHeads; h++) {
          const atA = ((a.slot * kvHeads + h) * stride) * headDim;
          const atB = ((b.slot * kvHeads + h) * stride) * headDim;
          row.set(t.subarray(atB, atB + bFloats));
          t.copyWithin(atB, atA, atA + aFloats);
          t.set(row.subarray(0, bFloats), atA);
        }
      }
    }
    const aSlot = a.slot;
    this.owners[b.slot] = a;
    a.slot = b.slot;
    this.owners[aSlot] = b;
    b.slot = aSlot;
  }

  private copyRows(from: number, to: number, tokens: number): void {
    const { layers, kvHeads, headDim } = this.shape;
    const stride = this.strideTokens;
    for (let l = 0; l < layers; l++) {
      for (const t of [this.keys[l], this.values[l]]) {
        for (let h = 0; h < kvHeads; h++) {
          const src = ((from * kvHeads + h) * stride) * headDim;
          const dst = ((to * kvHeads + h) * stride) * headDim;
          t.copyWithin(dst, src, src + tokens * headDim);
        }
      }
    }
  }

  /** Changes the positions-per-slot stride, moving every held sequence's rows to their new offsets. */
  private relayout(newStride: number): void {
    const { layers, kvHeads, headDim } = this.shape;
    const old = this.strideTokens;
    if (newStride === old) return;
    const rows: Array<{ row: number; len: number }> = [];
    for (let s = 0; s < this.maxSlots; s++) {
      const o = this.owners[s];
      if (!o || o.length === 0) continue;
      if (o.length > newStride) throw new Error(`cannot shrink KV stride below sequence ${o.id}'s ${o.length} positions`);
      for (let h = 0; h < kvHeads; h++) rows.push({ row: s * kvHeads + h, len: o.length });
    }
    // Growing moves rows to higher offsets: go from the last row down so none is overwritten before
    // it moves; shrinking is the mirror image.
    if (newStride > old) rows.reverse();
    for (let l = 0; l < layers; l++) {
      for (const t of [this.keys[l], this.values[l]]) {
        for (const { row, len } of rows) t.copyWithin(row * newStride * headDim, row * old * headDim, (row * old + len) * headDim);
      }
    }
    this.strideTokens = newStride;
  }

  /** Shrinks the stride once the longest sequence is well below it, so attention stops scanning padding. */
  private maybeShrink(): void {
    let longest = 0;
    for (const o of this.owners) if (o && o.length > longest) longest = o.length;
    const B = this.shape.blockTokens;
    const target = Math.max(B, blocksFor(Math.ceil(longest * GROWTH), B) * B);
    if (target * 2 <= this.strideTokens) this.relayout(target);
  }
}
