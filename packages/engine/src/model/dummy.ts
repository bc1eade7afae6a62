// `pdserve dummy`: models of realistic shapes with seeded random weights, for performance work
// (like vLLM's --load-format dummy: the cost of the arithmetic does not depend on the values).
// Weights are drawn uniformly from ±1/sqrt(fan_in) so activations stay finite through the layers.
import type { ModelConfig } from './config.ts';
import type { LlamaLayerWeights, LlamaWeightSource } from './llama-graph.ts';
import { writeLlamaModelDir } from './model-dir.ts';
import type { WeightDtype } from './weight-storage.ts';

export interface DummyPreset {
  dim: number;
  hidden_dim: number;
  n_layers: number;
  n_heads: number;
  n_kv_heads: number;
  vocab_size: number;
  max_seq_len: number;
  tied_embeddings: boolean;
  rope_theta: number;
  description: string;
}

export const DUMMY_PRESETS: Record<string, DummyPreset> = {
  tiny: {
    dim: 64, hidden_dim: 176, n_layers: 2, n_heads: 4, n_kv_heads: 2, vocab_size: 512, max_seq_len: 512,
    tied_embeddings: true, rope_theta: 10000, description: 'a few hundred thousand parameters, for tests',
  },
  'smollm2-135m': {
    dim: 576, hidden_dim: 1536, n_layers: 30, n_heads: 9, n_kv_heads: 3, vocab_size: 49152, max_seq_len: 8192,
    tied_embeddings: true, rope_theta: 100000, description: 'SmolLM2-135M shapes (HuggingFaceTB/SmolLM2-135M)',
  },
  'llama-1b': {
    dim: 2048, hidden_dim: 8192, n_layers: 16, n_heads: 32, n_kv_heads: 8, vocab_size: 128256, max_seq_len: 131072,
    tied_embeddings: true, rope_theta: 500000, description: 'Llama-3.2-1B shapes (meta-llama/Llama-3.2-1B)',
  },
};

/** xorshift32 filling floats in [-scale, scale): fast and deterministic for a given seed. */
export function randomFill(count: number, scale: number, state: { s: number }): Float32Array {
  const out = new Float32Array(count);
  let s = state.s;
  for (let i = 0; i < count; i++) {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    out[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  state.s = s;
  return out;
}

function ones(count: number): Float32Array {
  return new Float32Array(count).fill(1);
}

export function dummyWeights(p: DummyPreset, seed: number): LlamaWeightSource {
  const hd = p.dim / p.n_heads;
  const kvDim = p.n_kv_heads * hd;
  const state = { s: (seed >>> 0) || 0x9e3779b9 };
  const fan = (n: number) => 1 / Math.sqrt(n);
  return {
    tokenEmbedding: () => randomFill(p.vocab_size * p.dim, 1, state),
    finalNorm: () => ones(p.dim),
    classifier: () => (p.tied_embeddings ? null : randomFill(p.vocab_size * p.dim, fan(p.dim), state)),
    layer: (): LlamaLayerWeights => ({
      attnNorm: ones(p.dim),
      wq: randomFill(p.dim * p.dim, fan(p.dim), state),
      wk: randomFill(kvDim * p.dim, fan(p.dim), state),
      wv: randomFill(kvDim * p.dim, fan(p.dim), state),
      wo: randomFill(p.dim * p.dim, fan(p.dim), state),
      ffnNorm: ones(p.dim),
      w1: randomFill(p.hidden_dim * p.dim, fan(p.dim), state),
      w2: randomFill(p.dim * p.hidden_dim, fan(p.hidden_dim), state),
      w3: randomFill(p.hidden_dim * p.dim, fan(p.dim), state),
    }),
  };
}

/**
 * The byte-level tokenizer written beside dummy models: ids 3..258 are the 256 byte pieces, 259 is
 * " " (the dummy-prefix piece run.c's encoder looks up), the rest are placeholders.
 */
export function byteTokenizer(vocab: number): Buffer {
  const parts: Buffer[] = [];
  const header = Buffer.alloc(4);
  header.writeInt32LE(16);
  parts.push(header);
  for (let id = 0; id < vocab; id++) {
    let piece: Buffer;
    if (id === 0) piece = Buffer.from('<unk>');
    else if (id === 1) piece = Buffer.from('<s>');
    else if (id === 2) piece = Buffer.from('</s>');
    else if (id < 259) piece = Buffer.from(`<0x${(id - 3).toString(16).toUpperCase().padStart(2, '0')}>`);
    else if (id === 259) piece = Buffer.from(' ');
    else piece = Buffer.from(`<dummy${id}>`);
    const entry = Buffer.alloc(8);
    entry.writeFloatLE(id < 260 ? 0 : -1e6, 0);
    entry.writeInt32LE(piece.length, 4);
    parts.push(entry, piece);
  }
  return Buffer.concat(parts);
}

export function writeDummyModel(presetName: string, out: string, opts: { seed?: number; maxSeqLen?: number; dtype?: WeightDtype; blockSize?: number } = {}): ModelConfig {
  const p = DUMMY_PRESETS[presetName];
  if (!p) throw new Error(`unknown dummy preset ${JSON.stringify(presetName)} (known: ${Object.keys(DUMMY_PRESETS).join(', ')})`);
  const seed = opts.seed ?? 0;
  return writeLlamaModelDir(out, {
    name: `dummy-${presetName}`,
    dim: p.dim,
    hidden_dim: p.hidden_dim,
    n_layers: p.n_layers,
    n_heads: p.n_heads,
    n_kv_heads: p.n_kv_heads,
    vocab_size: p.vocab_size,
    max_seq_len: Math.min(opts.maxSeqLen ?? 4096, p.max_seq_len),
    rope_theta: p.rope_theta,
    tied_embeddings: p.tied_embeddings,
    generation: { bos_token_id: 1, eos_token_ids: [2], add_bos: true },
    source: { kind: 'dummy', preset: presetName, seed, note: 'random weights: output text is meaningless' },
  }, dummyWeights(p, seed), { kind: 'llama2c', bin: byteTokenizer(p.vocab_size) }, { dtype: opts.dtype ?? 'fp32', blockSize: opts.blockSize });
}
