// The engine a worker embeds: a model directory loaded onto ONNX Runtime, its tokenizer, and a
// runner that keeps each sequence's KV cache. Workers drive it step by step (prefill chunks, decode
// batches); `generate` runs one request start to finish for the CLI and tests.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { kvBytesPerToken, readModelConfig, type ModelConfig } from './model/config.ts';
import { isPdserveModelDir, loadExternalModel } from './model/external.ts';
import { ExternalDecoderRunner } from './runner/external-runner.ts';
import { LlamaRunner } from './runner/llama-runner.ts';
import type { ForwardItem, ModelRunner } from './runner/types.ts';
import { createSession, type Device, type SessionOptions } from './runtime/session.ts';
import { SlotKvCache, type KvSequence } from './kv/slot-cache.ts';
import { PrefixCache, type PrefixHit } from './kv/prefix-cache.ts';
import { loadTokenizer } from './tokenizer/load.ts';
import type { Tokenizer } from './tokenizer/types.ts';

export interface EngineOptions {
  device?: Device;
  /** Intra-op threads for ONNX Runtime; 0 = one per core. */
  threads?: number;
  /** ONNX Runtime's intra-op threads spin between pieces of work (default) or sleep (runtime/session.ts). */
  spinning?: boolean;
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
  /**
   * Automatic prefix caching (kv/prefix-cache.ts; default on). It only keeps what idle KV slots
   * still hold, so it takes no memory beyond the KV budget. Models on the external runner have none.
   */
  prefixCache?: boolean;
  /** Drop the resident pages of the weight file ONNX Runtime mapped, once loaded (default true; runtime/mapped-pages.ts). */
  releaseMappedWeights?: boolean;
}

export class EngineCapacityError extends Error {}
export class PromptTooLongError extends Error {}
/** A token id outside the model's vocabulary (e.g. a tokenizer larger than the model's embedding). */
export class InvalidTokenError extends Error {}

export const DEFAULT_BLOCK_TOKENS = 16;
export const DEFAULT_PREFILL_CHUNK = 256;

export class Engine {
  private constructor(
    readonly config: ModelConfig,
    readonly tokenizer: Tokenizer,
    readonly runner: ModelRunner,
    readonly maxModelLen: number,
    readonly prefillChunk: number,
    /** Set when prefix caching is on (and the runner supports it). */
    readonly prefixCache?: PrefixCache,
  ) {}

  static async load(dir: string, opts: EngineOptions = {}): Promise<Engine> {
    const model = await loadModel(dir, { device: opts.device, threads: opts.threads, spinning: opts.spinning, releaseMappedWeights: opts.releaseMappedWeights });
    const config = model.config;
    try {
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
      const runner = await model.createRunner({ blockTokens, maxSequences, maxModelLen });
      // The root of the block hash chain names the model (its config.json, which records the
      // weights' source and dtype) and the KV layout, so no block is ever shared across either.
      const prefix = opts.prefixCache !== false && runner instanceof LlamaRunner
        ? new PrefixCache(runner.cache, { model: createHash('sha256').update(JSON.stringify(config)).digest('hex') })
        : undefined;
      return new Engine(config, tokenizer, runner, maxModelLen, opts.prefillChunk ?? DEFAULT_PREFILL_CHUNK, prefix);
    } catch (err) {
      await model.dispose();
      throw err;
    }
  }

  get vocabSize(): number {
    return this.config.vocab_size;
  }

  /** Claims KV room for a new sequence; throws EngineCapacityError when the cache is full. */
  newSequence(id: string): KvSequence {
    const seq = this.allocate(id);
    if (!seq) throw new EngineCapacityError(`KV cache full: all ${this.runner.capacity().maxSequences} sequences in use`);
    return seq;
  }

  /** Room for a sequence (dropping the least recently used cached prefix if need be), or null when every slot is in use. */
  allocate(id: string): KvSequence | null {
    return this.prefixCache ? this.prefixCache.allocate(id) : this.runner.allocate(id);
  }

  /**
   * Room for a decode reservation (its prompt not known yet); over a cached prefix when no slot is
   * empty, so that the prompt's own prefill here (attachPrompt) can still find it. Its length is
   * meaningless until attachPrompt or writeBlocks sets it.
   */
  reserveSequence(id: string): KvSequence | null {
    return this.prefixCache ? this.prefixCache.reserve(id) : this.runner.allocate(id);
  }

  /**
   * Room for a prompt, holding as much of its beginning as the prefix cache has (whole blocks, never
   * the last token); null when every slot is in use. Prefill continues at `cachedTokens`.
   */
  startPrompt(id: string, promptIds: readonly number[]): PrefixHit | null {
    if (this.prefixCache) return this.prefixCache.start(id, promptIds);
    const seq = this.runner.allocate(id);
    return seq ? { seq, cachedTokens: 0 } : null;
  }

  /** The sequence `seq` (from reserveSequence, nothing written yet) takes the cached beginning of its prompt. */
  attachPrompt(seq: KvSequence, promptIds: readonly number[]): PrefixHit {
    return this.prefixCache ? this.prefixCache.attach(seq, promptIds) : { seq, cachedTokens: 0 };
  }

  /** `seq` holds the KV of `promptIds` from a transfer: with prefix caching its blocks become reusable here. */
  rememberPrompt(seq: KvSequence, promptIds: readonly number[]): void {
    this.prefixCache?.remember(seq, promptIds);
  }

  /** Ends a sequence; with prefix caching its full blocks stay reusable until the slot is needed. */
  release(seq: KvSequence): void {
    if (this.prefixCache) this.prefixCache.release(seq);
    else this.runner.free(seq);
  }

  /** Checks that `promptLength + maxTokens` fits the model; throws PromptTooLongError naming the limit. */
  checkLength(promptLength: number, maxTokens = 0): void {
    if (promptLength + maxTokens > this.maxModelLen) {
      throw new PromptTooLongError(`prompt of ${promptLength} tokens${maxTokens ? ` plus ${maxTokens} new tokens` : ''} exceeds the context of ${this.maxModelLen} tokens`);
    }
  }

  /** Checks that every id is an integer in [0, vocab_size); throws InvalidTokenError naming the first bad one. */
  checkTokenIds(ids: readonly number[]): void {
    const vocab = this.config.vocab_size;
    const bad = ids.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= vocab);
    if (bad < 0) return;
    const hint = this.tokenizer.vocabSize > vocab
      ? ` (the tokenizer knows ${this.tokenizer.vocabSize} ids but the model only ${vocab}: only ids below ${vocab} can be fed to it)`
      : '';
    throw new InvalidTokenError(`token id ${ids[bad]} at position ${bad} is outside the model's vocabulary of ${vocab} ids (0..${vocab - 1})${hint}`);
  }

  /**
   * Runs `tokens` through the model in chunks of `prefillChunk`, appending to `seq`'s cache.
   * `afterChunk` sees the cache after each chunk (a prefill worker streams blocks from there).
   * Returns the logits of the last token.
   */
  async prefill(seq: KvSequence, tokens: number[], afterChunk?: (seq: KvSequence) => void | Promise<void>): Promise<Float32Array> {
    this.checkLength(seq.length + tokens.length);
    this.checkTokenIds(tokens);
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
    const logits = await this.runner.forward(items);
    if (this.prefixCache) for (const b of batch) this.prefixCache.appended(b.seq, b.token);
    return logits;
  }
}

interface RunnerShape {
  blockTokens: number;
  maxSequences: number;
  maxModelLen: number;
}

interface LoadedModel {
  config: ModelConfig;
  createRunner(shape: RunnerShape): Promise<ModelRunner>;
  /** Frees what loading took when the engine is not built after all. */
  dispose(): Promise<void>;
}

/**
 * A pdserve model directory (config.json with format pdserve-model/1) runs on LlamaRunner; any
 * other folder is read as a third-party ONNX decoder export (model/external.ts), whose graph is
 * opened here already because its I/O names and shapes describe the model.
 */
async function loadModel(dir: string, session: SessionOptions): Promise<LoadedModel> {
  if (isPdserveModelDir(dir)) {
    const config = readModelConfig(dir);
    return {
      config,
      async createRunner({ blockTokens, maxSequences, maxModelLen }) {
        const s = await createSession(join(dir, config.onnx.file), session);
        const cache = new SlotKvCache({
          layers: config.n_layers, kvHeads: config.n_kv_heads, headDim: config.head_dim, blockTokens,
          maxSlots: maxSequences, maxTokensPerSlot: maxModelLen,
        });
        return new LlamaRunner(s, cache, config.vocab_size);
      },
      async dispose() {},
    };
  }
  const { model, session: s } = await loadExternalModel(dir, session);
  const config = model.config;
  return {
    config,
    async createRunner({ blockTokens, maxSequences, maxModelLen }) {
      const shape = { layers: config.n_layers, kvHeads: config.n_kv_heads, headDim: config.head_dim, blockTokens };
      return new ExternalDecoderRunner(s, model.io, shape, config.vocab_size, { maxSequences, maxTokensPerSequence: maxModelLen });
    },
    dispose: () => s.release(),
  };
}
