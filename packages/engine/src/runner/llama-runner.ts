// Runs pdserve's Llama graph (model/llama-graph.ts) over sequences held in a SlotKvCache: builds the
// step's small inputs, hands the cache windows to ONNX Runtime without copying them, and writes the
// new tokens' keys and values back into each sequence's slot.
import type * as ortTypes from 'onnxruntime-node';
import { ort } from '../runtime/session.ts';
import type { KvSequence, SlotKvCache } from '../kv/slot-cache.ts';
import type { ForwardItem, KvCapacity, ModelRunner, StepTimings } from './types.ts';

const MASKED = -1e30;

export class LlamaRunner implements ModelRunner {
  lastTimings: StepTimings = { assembleMs: 0, runMs: 0, writebackMs: 0 };

  constructor(
    private readonly session: ortTypes.InferenceSession,
    readonly cache: SlotKvCache,
    readonly vocabSize: number,
  ) {}

  get kvShape() {
    return this.cache.shape;
  }

  get blockBytes(): number {
    return this.cache.blockBytes;
  }

  allocate(id: string): KvSequence | null {
    return this.cache.allocate(id);
  }

  free(seq: KvSequence): void {
    this.cache.free(seq);
  }

  readBlocks(seq: KvSequence, first: number, count: number, out?: Uint8Array): Uint8Array {
    return this.cache.readBlocks(seq, first, count, out);
  }

  writeBlocks(seq: KvSequence, first: number, data: Uint8Array, validTokens: number): void {
    this.cache.writeBlocks(seq, first, data, validTokens);
  }

  reserveTokens(tokens: number): void {
    this.cache.reserve(tokens);
  }

  capacity(): KvCapacity {
    const c = this.cache;
    return {
      maxSequences: c.maxSlots, freeSequences: c.freeSlots, totalBlocks: c.totalBlocks, usedBlocks: c.usedBlocks,
      blockTokens: c.shape.blockTokens, bytes: c.totalBytes,
    };
  }

  /**
   * One forward pass over a batch. A batch of several sequences is first gathered into slots 0..n-1
   * (usually nothing moves: running sequences stay put). Each sequence runs in the row of its slot;
   * the logits come back in `items` order: [items.length, vocab].
   */
  async forward(items: ForwardItem[]): Promise<Float32Array> {
    const t0 = performance.now();
    const n = items.length;
    if (n > 1) this.cache.gather(items.map((it) => it.seq));
    const s0 = Math.min(...items.map((it) => it.seq.slot));
    // Row of the batch window each item runs in.
    const rowOf = items.map((it) => it.seq.slot - s0);
    const seen = new Set(rowOf);
    if (seen.size !== n || rowOf.some((r) => r >= n)) throw new Error('forward() needs its sequences in consecutive slots; gather the batch first');
    for (const it of items) if (it.tokens.length === 0) throw new Error(`sequence ${it.seq.id}: nothing to run`);
    const S = Math.max(...items.map((it) => it.tokens.length));
    // The past window only needs the positions already cached; room for the new ones is made after
    // the run. (Reserving first would make a fresh prompt attend over its own length of masked
    // positions: a 512-token prompt scored 1024 columns per row.)
    // Sequences with nothing cached yet (a prompt's first chunk) attend over no past at all: hand ORT
    // one masked zero position instead of the arena's window, whose stride may be long (it follows
    // the longest sequence held, cached prefixes in idle slots included) and would be scanned in full.
    const fresh = items.every((it) => it.seq.length === 0);
    const P = fresh ? 1 : this.cache.stride;

    const ids = new BigInt64Array(n * S);
    const positions = new BigInt64Array(n * S);
    const biasPast = new Float32Array(n * P).fill(MASKED);
    const rows = new BigInt64Array(n);
    items.forEach((it, i) => {
      const b = rowOf[i];
      for (let j = 0; j < it.tokens.length; j++) {
        ids[b * S + j] = BigInt(it.tokens[j]);
        positions[b * S + j] = BigInt(it.seq.length + j);
      }
      biasPast.fill(0, b * P, b * P + it.seq.length);
      // The classifier's rows, in items order: logits row i is item i's last position.
      rows[i] = BigInt(b * S + it.tokens.length - 1);
    });
    const biasNew = new Float32Array(S * S);
    for (let i = 0; i < S; i++) biasNew.fill(MASKED, i * S + i + 1, (i + 1) * S);

    const { layers, kvHeads, headDim } = this.cache.shape;
    const feeds: Record<string, ortTypes.Tensor> = {
      input_ids: new ort.Tensor('int64', ids, [n, S]),
      position_ids: new ort.Tensor('int64', positions, [n, S]),
      attn_bias_past: new ort.Tensor('float32', biasPast, [n, P]),
      attn_bias_new: new ort.Tensor('float32', biasNew, [S, S]),
      logit_rows: new ort.Tensor('int64', rows, [n]),
    };
    const emptyPast = fresh ? new Float32Array(n * kvHeads * headDim) : undefined;
    for (let l = 0; l < layers; l++) {
      feeds[`past_key.${l}`] = new ort.Tensor('float32', emptyPast ?? this.cache.window(0, l, s0, n), [n, kvHeads, P, headDim]);
      feeds[`past_value.${l}`] = new ort.Tensor('float32', emptyPast ?? this.cache.window(1, l, s0, n), [n, kvHeads, P, headDim]);
    }
    const t1 = performance.now();
    const out = await this.session.run(feeds);
    const t2 = performance.now();
    this.cache.reserve(Math.max(...items.map((it) => it.seq.length + it.tokens.length)));
    for (let l = 0; l < layers; l++) {
      const k = out[`new_key.${l}`].data as Float32Array;
      const v = out[`new_value.${l}`].data as Float32Array;
      items.forEach((it, i) => this.cache.writeNew(it.seq, l, k, v, S, it.tokens.length, rowOf[i]));
    }
    for (const it of items) it.seq.length += it.tokens.length;
    const t3 = performance.now();
    this.lastTimings = { assembleMs: t1 - t0, runMs: t2 - t1, writebackMs: t3 - t2 };
    return out.logits.data as Float32Array;
  }
}
