// What the engine needs from a model runner, whatever the graph's I/O convention.
import type { KvShape } from '../kv/layout.ts';
import type { KvSequence } from '../kv/slot-cache.ts';

export interface ForwardItem {
  seq: KvSequence;
  /** Tokens to append; their positions start at seq.length. */
  tokens: number[];
}

export interface StepTimings {
  /** Building inputs (and moving sequences into a dense batch) before the run. */
  assembleMs: number;
  runMs: number;
  /** Writing new keys/values into the cache after the run. */
  writebackMs: number;
}

export interface KvCapacity {
  maxSequences: number;
  freeSequences: number;
  totalBlocks: number;
  usedBlocks: number;
  blockTokens: number;
  bytes: number;
}

export interface ModelRunner {
  readonly vocabSize: number;
  readonly kvShape: KvShape;
  readonly blockBytes: number;
  lastTimings: StepTimings;
  /** Room for one more sequence, or null when the cache is full. */
  allocate(id: string): KvSequence | null;
  free(seq: KvSequence): void;
  /** Appends each item's tokens and returns the logits of each item's last token, [items, vocab]. */
  forward(items: ForwardItem[]): Promise<Float32Array>;
  /**
   * Gathers blocks [first, first+count) into the canonical layout: into `out` when given (its first
   * count*blockBytes bytes, 4-byte aligned; positions past the sequence's length are zeroed), else
   * into a new buffer. Returns the bytes written.
   */
  readBlocks(seq: KvSequence, first: number, count: number, out?: Uint8Array): Uint8Array;
  writeBlocks(seq: KvSequence, first: number, data: Uint8Array, validTokens: number): void;
  /**
   * Makes room for `tokens` positions per sequence at once (a KV transfer of that many has begun),
   * so its blocks are then written without the cache being moved again block by block.
   */
  reserveTokens?(tokens: number): void;
  capacity(): KvCapacity;
}
