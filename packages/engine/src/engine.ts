// The engine a worker embeds: a model directory loaded onto ONNX Runtime, its tokenizer, and a
// runner that keeps each sequence's KV cache. Workers drive it step by step (prefill chunks, decode
// batches); `generate` runs one request start to finish for the CLI and tests.
import { join } from 'node:path';
import { kvBytesPerToken, readModelConfig, type ModelConfig } from './model/config.ts';
import { LlamaRunner } from './runner/llama-runner.ts';
import type { ForwardItem, ModelRunner } from './runner/types.ts';
import { createSession, type Device } from './runtime/session.ts';
import { SlotKvCache, type KvSequence } from './kv/slot-cache.ts';
import { loadTokenizer } from './tokenizer/load.ts';
import type { Tokenizer } from './tokenizer/types.ts';

export interface EngineOptions {
  device?: Device;
  /** Intra-op threads for ONNX Runtime; 0 = one per core. */
  threads?: number;
  /** Tokens per KV block (the unit of transfer and accounting). */
  blockTokens?: number;
  /** Longest sequence served (prompt + output); defaults to the model's max_seq_len. */
  maxModelLen?: number;
  /** Sequences held at once (the decode batch limit). */
  maxSequences?: number;
  /** KV cache budget in bytes; caps maxSequences at budget / (maxModelLen * bytes per token). */
  kvBudgetBytes?: number;
  /** Prompt tokens per prefill forward pass. */
  prefillChunk?: number;
}

export class EngineCapacityError extends Error {}
export class PromptTooLongError extends Error {}

export const DEFAULT_BLOCK_TOKENS = 16;
export const DEFAULT_PREFILL_CHUNK = 256;

export class Engine {
  private constructor(
    readonly config: ModelConfig,
    readonly tokenizer: Tokenizer,
    readonly runner: ModelRunner,
    readonly maxModelLen: number,
    readonly prefillChunk: number,
  ) {}

  static async load(dir: string, opts: EngineOptions = {}): Promise<Engine> {
    const config = readModelConfig(dir);
    const tokenizer = loadTokenizer(dir, { kind: config.tokenizer.kind, vocabSize: config.vocab_size });
    const maxModelLen = Math.min(opts.maxModelLen ?? config.max_seq_len, config.max_seq_len);
    const blockTokens = opts.blockTokens ?? DEFAULT_BLOCK_TOKENS;
    if (!Number.isInteger(blockTokens) || blockTokens <= 0) throw new Error(`block size must be a positive integer, got ${blockTokens}`);
    const perSequence = maxModelLen * kvBytesPerToken(config);
    let maxSequences = opts.maxSequences ?? 16;
    if (opts.kvBudgetBytes !== undefined) maxSequences = Math.min(maxSequences, Math.floor(opts.kvBudgetBytes / perSequence));
    if (maxSequences < 1) {
      throw new EngineCapacityError(`a KV budget of ${opts.kvBudgetBytes} bytes cannot hold one ${maxModelLen}-token sequence (${perSequence} bytes); raise the budget or lower max model length`);
    }
    const session = await createSession(join(dir, config.onnx.file), { device: opts.device, threads: opts.threads });
    const cache = new SlotKvCache({
      layers: config.n_layers, kvHeads: config.n_kv_heads, headDim: config.head_dim, blockTokens,
      maxSlots: maxSequences, maxTokensPerSlot: maxModelLen,
    });
    const runner = new LlamaRunner(session, cache, config.vocab_size);
    return new Engine(config, tokenizer, runner, maxModelLen, opts.prefillChunk ?? DEFAULT_PREFILL_CHUNK);
  }

  get vocabSize(): number {
    return this.config.vocab_size;
  }

  /** Claims KV room for a new sequence; throws EngineCapacityError when the cache is full. */
  newSequence(id: string): KvSequence {
    const seq = this.runner.allocate(id);
    if (!seq) throw new EngineCapacityError(`KV cache full: all ${this.runner.capacity().maxSequences} sequences in use`);
    return seq;
  }

  release(seq: KvSequence): void {
    this.runner.free(seq);
  }

  /** Checks that `promptLength + maxTokens` fits the model; throws PromptTooLongError naming the limit. */
  checkLength(promptLength: number, maxTokens = 0): void {
    if (promptLength + maxTokens > this.maxModelLen) {
      throw new PromptTooLongError(`prompt of ${promptLength} tokens${maxTokens ? ` plus ${maxTokens} new tokens` : ''} exceeds the context of ${this.maxModelLen} tokens`);
    }
  }

  /**
   * Runs `tokens` through the model in chunks of `prefillChunk`, appending to `seq`'s cache.
   * `afterChunk` sees the cache after each chunk (a prefill worker streams blocks from there).
   * Returns the logits of the last token.
   */
  async prefill(seq: KvSequence, tokens: number[], afterChunk?: (seq: KvSequence) => void | Promise<void>): Promise<Float32Array> {
    this.checkLength(seq.length + tokens.length);
    let logits: Float32Array | undefined;
    for (let i = 0; i < tokens.length; i += this.prefillChunk) {
      logits = await this.runner.forward([{ seq, tokens: tokens.slice(i, i + this.prefillChunk) }]);
      await afterChunk?.(seq);
    }
    if (!logits) throw new Error('prefill of an empty prompt');
    return logits;
  }

  /** One decode step for a batch: each sequence appends one token. Returns [batch, vocab] logits. */
  async decode(batch: Array<{ seq: KvSequence; token: number }>): Promise<Float32Array> {
    for (const b of batch) this.checkLength(b.seq.length + 1);
    const items: ForwardItem[] = batch.map((b) => ({ seq: b.seq, tokens: [b.token] }));
    return this.runner.forward(items);
  }
}
