// Runs a third-party ONNX decoder (model/external.ts): past keys/values go in as graph inputs and
// come back, with the new positions appended, as `present` outputs. Each sequence keeps its own KV
// store, per layer keys and values as Float32Array [kvHeads, capacity, headDim] that grows as the
// sequence does; blocks are read and written in the canonical layout of kv/layout.ts, so KV
// transfer between workers works exactly as with pdserve's own graph.
//
// forward() runs its items one at a time with batch 1. These exports take no per-sequence length:
// a padded batch of sequences of different lengths would need left-padding of every past tensor
// and a mask the graph would honour for every position, which not all exports do the same way.
// Running each sequence alone is always correct; batching same-length sequences is a later
// optimisation.
import type * as ortTypes from 'onnxruntime-node';
import { ort } from '../runtime/session.ts';
import { blockBytes, blocksFor, type KvShape } from '../kv/layout.ts';
import { outFloats, type KvSequence } from '../kv/slot-cache.ts';
import type { ExternalIo, IdType } from '../model/external.ts';
import type { ForwardItem, KvCapacity, ModelRunner, StepTimings } from './types.ts';

export interface ExternalRunnerOptions {
  /** Sequences held at once. */
  maxSequences: number;
  /** Longest sequence (prompt + output) one sequence may reach. */
  maxTokensPerSequence: number;
}

interface Entry {
  seq: KvSequence;
  /** Positions each per-layer array has room for. */
  capacity: number;
  keys: Float32Array[];
  values: Float32Array[];
}

const GROWTH = 1.5;

function idTensor(type: IdType, values: ArrayLike<number>, dims: number[]): ortTypes.Tensor {
  if (type === 'int32') return new ort.Tensor('int32', Int32Array.from(values), dims);
  const data = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) data[i] = BigInt(values[i]);
  return new ort.Tensor('int64', data, dims);
}

export class ExternalDecoderRunner implements ModelRunner {
  lastTimings: StepTimings = { assembleMs: 0, runMs: 0, writebackMs: 0 };
  readonly kvShape: KvShape;
  readonly blockBytes: number;
  private readonly entries: Array<Entry | null>;
  /** Positions a sequence may hold, rounded up to whole blocks (writeBlocks writes whole blocks). */
  private readonly maxPositions: number;

  constructor(
    private readonly session: ortTypes.InferenceSession,
    readonly io: ExternalIo,
    shape: KvShape,
    readonly vocabSize: number,
    private readonly opts: ExternalRunnerOptions,
  ) {
    if (io.layers.length !== shape.layers) throw new Error(`the graph has ${io.layers.length} KV layers but the shape says ${shape.layers}`);
    this.kvShape = { ...shape };
    this.blockBytes = blockBytes(this.kvShape);
    this.entries = new Array(opts.maxSequences).fill(null);
    this.maxPositions = blocksFor(opts.maxTokensPerSequence, shape.blockTokens) * shape.blockTokens;
  }

  allocate(id: string): KvSequence | null {
    const slot = this.entries.indexOf(null);
    if (slot < 0) return null;
    const seq: KvSequence = { id, slot, length: 0 };
    this.entries[slot] = { seq, capacity: 0, keys: [], values: [] };
    return seq;
  }

  free(seq: KvSequence): void {
    this.entry(seq);
    this.entries[seq.slot] = null;
    seq.length = 0;
  }

  capacity(): KvCapacity {
    const B = this.kvShape.blockTokens;
    const perSequence = this.maxPositions / B;
    let used = 0;
    let free = 0;
    for (const e of this.entries) {
      if (e) used += blocksFor(e.seq.length, B);
      else free++;
    }
    const totalBlocks = this.opts.maxSequences * perSequence;
    // Stores grow on demand; `bytes` is what they may grow to, as for the preallocated slot cache.
    return { maxSequences: this.opts.maxSequences, freeSequences: free, totalBlocks, usedBlocks: used, blockTokens: B, bytes: totalBlocks * this.blockBytes };
  }

  async forward(items: ForwardItem[]): Promise<Float32Array> {
    const V = this.vocabSize;
    const out = new Float32Array(items.length * V);
    const timings: StepTimings = { assembleMs: 0, runMs: 0, writebackMs: 0 };
    for (const [i, it] of items.entries()) {
      if (it.tokens.length === 0) throw new Error(`sequence ${it.seq.id}: nothing to run`);
      out.set(await this.runOne(this.entry(it.seq), it.tokens, timings), i * V);
    }
    this.lastTimings = timings;
    return out;
  }

  readBlocks(seq: KvSequence, first: number, count: number, into?: Uint8Array): Uint8Array {
    const e = this.entry(seq);
    const { layers, kvHeads, headDim, blockTokens: B } = this.kvShape;
    const out = outFloats(into, (this.blockBytes / 4) * count);
    let o = 0;
    for (let b = first; b < first + count; b++) {
      const valid = Math.max(0, Math.min(B, seq.length - b * B));
      for (let l = 0; l < layers; l++) {
        for (const t of [e.keys[l], e.values[l]]) {
          for (let h = 0; h < kvHeads; h++) {
            if (valid > 0) {
              const src = (h * e.capacity + b * B) * headDim;
              out.set(t.subarray(src, src + valid * headDim), o);
            }
            if (into && valid < B) out.fill(0, o + valid * headDim, o + B * headDim);
            o += B * headDim;
          }
        }
      }
    }
    return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
  }

  writeBlocks(seq: KvSequence, first: number, data: Uint8Array, validTokens: number): void {
    const e = this.entry(seq);
    const { layers, kvHeads, headDim, blockTokens: B } = this.kvShape;
    const count = data.byteLength / this.blockBytes;
    if (!Number.isInteger(count)) throw new Error(`KV payload of ${data.byteLength} bytes is not a whole number of ${this.blockBytes}-byte blocks`);
    if (validTokens > (first + count) * B || validTokens <= first * B) throw new Error(`KV blocks ${first}..${first + count - 1} cannot hold a length of ${validTokens}`);
    this.reserve(e, (first + count) * B);
    // Float32Array views need 4-byte alignment; gRPC hands out Buffers at any offset (copy those).
    const bytes = data.byteOffset % 4 === 0 ? data : new Uint8Array(data);
    const src = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    let i = 0;
    for (let b = first; b < first + count; b++) {
      for (let l = 0; l < layers; l++) {
        for (const t of [e.keys[l], e.values[l]]) {
          for (let h = 0; h < kvHeads; h++) {
            t.set(src.subarray(i, i + B * headDim), (h * e.capacity + b * B) * headDim);
            i += B * headDim;
          }
        }
      }
    }
    seq.length = validTokens;
  }

  private entry(seq: KvSequence): Entry {
    const e = this.entries[seq.slot];
    if (!e || e.seq !== seq) throw new Error(`sequence ${seq.id} does not own slot ${seq.slot}`);
    return e;
  }

  /** Grows a sequence's store to hold `positions`, keeping what it has. */
  private reserve(e: Entry, positions: number): void {
    if (positions > this.maxPositions) throw new Error(`${positions} positions exceed the ${this.maxPositions} a sequence may hold`);
    if (positions <= e.capacity) return;
    const { layers, kvHeads, headDim, blockTokens: B } = this.kvShape;
    const grown = Math.max(positions, Math.ceil(e.capacity * GROWTH));
    const capacity = Math.min(this.maxPositions, blocksFor(grown, B) * B);
    const keep = Math.min(e.seq.length, e.capacity);
    const move = (old: Float32Array | undefined): Float32Array => {
      const t = new Float32Array(kvHeads * capacity * headDim);
      if (old && keep > 0) {
        for (let h = 0; h < kvHeads; h++) t.set(old.subarray(h * e.capacity * headDim, (h * e.capacity + keep) * headDim), h * capacity * headDim);
      }
      return t;
    };
    for (let l = 0; l < layers; l++) {
      e.keys[l] = move(e.keys[l]);
      e.values[l] = move(e.values[l]);
    }
    e.capacity = capacity;
  }

  /** Runs one sequence's tokens and returns the logits of its last one. */
  private async runOne(e: Entry, tokens: number[], timings: StepTimings): Promise<Float32Array> {
    const t0 = performance.now();
    const { layers, kvHeads: H, headDim: D } = this.kvShape;
    const io = this.io;
    const len = e.seq.length;
    const S = tokens.length;
    const total = len + S;
    this.reserve(e, total);

    const feeds: Record<string, ortTypes.Tensor> = { [io.inputIds.name]: idTensor(io.inputIds.type, tokens, [1, S]) };
    if (io.attentionMask) feeds[io.attentionMask.name] = idTensor(io.attentionMask.type, new Array<number>(total).fill(1), [1, total]);
    if (io.positionIds) feeds[io.positionIds.name] = idTensor(io.positionIds.type, Array.from({ length: S }, (_, i) => len + i), [1, S]);
    if (io.useCacheBranch) feeds[io.useCacheBranch] = new ort.Tensor('bool', new Uint8Array([len > 0 ? 1 : 0]), [1]);
    // The graph wants the past dense, [.., H, len, D]: each step copies the sequence's valid
    // positions out of its store (O(len) per layer per step, the same order as the bytes attention
    // reads anyway). Passing the store itself would need capacity == len, i.e. a reallocation per step.
    const gather = (t: Float32Array, dst: Float32Array, at: number) => {
      for (let h = 0; h < H; h++) dst.set(t.subarray(h * e.capacity * D, (h * e.capacity + len) * D), at + h * len * D);
    };
    for (let l = 0; l < layers; l++) {
      const names = io.layers[l].past;
      if (io.convention === 'stacked-past') {
        const past = new Float32Array(2 * H * len * D);
        if (len > 0) {
          gather(e.keys[l], past, 0);
          gather(e.values[l], past, H * len * D);
        }
        feeds[names[0]] = new ort.Tensor('float32', past, [2, 1, H, len, D]);
      } else {
        const k = new Float32Array(H * len * D);
        const v = new Float32Array(H * len * D);
        if (len > 0) {
          gather(e.keys[l], k, 0);
          gather(e.values[l], v, 0);
        }
        feeds[names[0]] = new ort.Tensor('float32', k, [1, H, len, D]);
        feeds[names[1]] = new ort.Tensor('float32', v, [1, H, len, D]);
      }
    }
    const t1 = performance.now();
    const out = await this.session.run(feeds);
    const t2 = performance.now();

    const logits = out[io.logits];
    const [, rows, vocab] = logits.dims;
    if (logits.dims.length !== 3 || vocab !== this.vocabSize) {
      throw new Error(`${io.logits} came back as [${logits.dims.join(', ')}]; expected [1, ${S}, ${this.vocabSize}]`);
    }
    const data = logits.data as Float32Array;
    const last = data.slice((rows - 1) * vocab, rows * vocab);
    // Present holds past + new positions, [.., H, total, D]: keep the last S of each head.
    const scatter = (src: Float32Array, at: number, t: Float32Array) => {
      for (let h = 0; h < H; h++) {
        const from = at + (h * total + len) * D;
        t.set(src.subarray(from, from + S * D), (h * e.capacity + len) * D);
      }
    };
    for (let l = 0; l < layers; l++) {
      const names = io.layers[l].present;
      const check = (t: ortTypes.Tensor, lead: number[]) => {
        const want = [...lead, H, total, D];
        if (t.dims.length !== want.length || t.dims.some((d, i) => d !== want[i])) {
          throw new Error(`${names.join('/')} came back as [${t.dims.join(', ')}]; expected [${want.join(', ')}] (past ${len} + ${S} new positions)`);
        }
      };
      if (io.convention === 'stacked-past') {
        const p = out[names[0]];
        check(p, [2, 1]);
        const src = p.data as Float32Array;
        scatter(src, 0, e.keys[l]);
        scatter(src, H * total * D, e.values[l]);
      } else {
        const k = out[names[0]];
        const v = out[names[1]];
        check(k, [1]);
        check(v, [1]);
        scatter(k.data as Float32Array, 0, e.keys[l]);
        scatter(v.data as Float32Array, 0, e.values[l]);
      }
    }
    e.seq.length = total;
    const t3 = performance.now();
    timings.assembleMs += t1 - t0;
    timings.runMs += t2 - t1;
    timings.writebackMs += t3 - t2;
    return last;
  }
}
