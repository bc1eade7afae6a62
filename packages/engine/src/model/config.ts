// The on-disk model directory: `config.json` describes the architecture, the ONNX graph and its I/O
// convention, the tokenizer and generation defaults. See the README's "Model directory" section.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { WEIGHT_DTYPES, type WeightDtype } from './weight-storage.ts';

export const MODEL_FORMAT = 'pdserve-model/1';

/** I/O conventions a graph can follow. */
export type GraphIo =
  /** pdserve's own Llama graph: the cache is an input, only new keys/values are outputs. */
  | 'pdserve-kv-in/1'
  /** Third-party decoder exports: optimum/transformers.js `past_key_values.N.key` names. */
  | 'hf-past-key-values'
  /** onnxruntime-genai style stacked `past_N` tensors [2, B, H, S, D]. */
  | 'stacked-past';

export type RopeLayout = 'adjacent-pairs' | 'rotate-half';

export type RopeScaling =
  /** Llama 3.1/3.2: low frequencies divided by `factor`, high ones kept, a smooth ramp between. */
  | { rope_type: 'llama3'; factor: number; low_freq_factor: number; high_freq_factor: number; original_max_position_embeddings: number }
  /** Position interpolation: every frequency divided by `factor`. */
  | { rope_type: 'linear'; factor: number };

export interface ModelConfig {
  format: typeof MODEL_FORMAT;
  name: string;
  architecture: 'llama' | 'gpt2' | string;
  dim: number;
  hidden_dim: number;
  n_layers: number;
  n_heads: number;
  n_kv_heads: number;
  head_dim: number;
  vocab_size: number;
  /** Longest sequence (prompt + generated) the model supports. */
  max_seq_len: number;
  rope_theta: number;
  /**
   * How the query/key features pair up for RoPE: `adjacent-pairs` (x[2i], x[2i+1]) as llama2.c and
   * Meta's checkpoints store them (the default), or `rotate-half` (x[i], x[i + head_dim/2]) as
   * Hugging Face checkpoints do (their conversion permutes the q/k rows).
   */
  rope_layout?: RopeLayout;
  /** Frequency scaling of RoPE (Hugging Face `rope_scaling`); absent or null: none. */
  rope_scaling?: RopeScaling | null;
  norm_eps: number;
  tied_embeddings: boolean;
  /** How the weight matrices are stored (weight-storage.ts); activations and the KV cache are float32 at every dtype. */
  dtype: WeightDtype;
  /** For quantized dtypes: the operator, bits, block size and accuracy level. */
  quantization?: Record<string, unknown>;
  onnx: { file: string; io: GraphIo };
  tokenizer: { kind: 'llama2c' | 'hf'; file: string };
  generation: { bos_token_id: number | null; eos_token_ids: number[]; add_bos: boolean };
  /** Where the weights came from, e.g. {"kind": "llama2c", "checkpoint": "...", "sha256": "..."} or {"kind": "dummy", "preset": "...", "seed": 0}. */
  source: Record<string, unknown>;
}

export class ModelLoadError extends Error {}

export function readModelConfig(dir: string): ModelConfig {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) throw new ModelLoadError(`model directory ${dir} has no config.json`);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ModelLoadError(`${path} is not valid JSON: ${(err as Error).message}`);
  }
  const cfg = raw as ModelConfig;
  if (cfg.format !== MODEL_FORMAT) {
    throw new ModelLoadError(`${path}: unsupported format ${JSON.stringify(cfg.format)} (expected ${MODEL_FORMAT})`);
  }
  if (cfg.architecture !== 'llama') {
    throw new ModelLoadError(`${path}: unsupported architecture ${JSON.stringify(cfg.architecture)} (pdserve builds "llama" graphs; other models load as ONNX decoder exports)`);
  }
  for (const key of ['dim', 'n_layers', 'n_heads', 'n_kv_heads', 'head_dim', 'vocab_size', 'max_seq_len'] as const) {
    if (!Number.isInteger(cfg[key]) || cfg[key] <= 0) throw new ModelLoadError(`${path}: ${key} must be a positive integer`);
  }
  // Model directories written before weight dtypes existed say "float32".
  if ((cfg.dtype as string) === 'float32' || cfg.dtype === undefined) cfg.dtype = 'fp32';
  if (!(WEIGHT_DTYPES as readonly string[]).includes(cfg.dtype)) {
    throw new ModelLoadError(`${path}: unsupported dtype ${JSON.stringify(cfg.dtype)} (expected one of ${WEIGHT_DTYPES.join(', ')})`);
  }
  if (cfg.n_heads % cfg.n_kv_heads !== 0) throw new ModelLoadError(`${path}: n_heads must be a multiple of n_kv_heads`);
  const onnxPath = join(dir, cfg.onnx?.file ?? '');
  if (!cfg.onnx?.file || !existsSync(onnxPath)) throw new ModelLoadError(`model file ${onnxPath} is missing`);
  return cfg;
}

/** Bytes of KV cache one token occupies across all layers (keys and values, float32). */
export function kvBytesPerToken(cfg: Pick<ModelConfig, 'n_layers' | 'n_kv_heads' | 'head_dim'>): number {
  return cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * 4;
}
