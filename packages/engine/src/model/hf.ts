// `pdserve convert --from hf`: a Hugging Face model folder (config.json, safetensors weights,
// tokenizer.json, tokenizer_config.json, generation_config.json) -> a pdserve model directory with
// pdserve's batched Llama graph. Llama-family architectures (Llama 2/3, SmolLM2, TinyLlama, Mistral
// within its sliding window) and Qwen2 (q/k/v biases) share that graph; anything else is refused
// by name. Weights are read one tensor at a time from the safetensors files and written straight
// into the graph's data file, so a model is never held in memory whole.
import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { ModelLoadError, type ModelConfig, type RopeScaling } from './config.ts';
import type { LlamaLayerWeights, LlamaWeightSource } from './llama-graph.ts';
import { writeLlamaModelDir } from './model-dir.ts';
import { SafetensorsCheckpoint } from './safetensors.ts';
import type { WeightDtype } from './weight-storage.ts';

export interface ConvertHfOptions {
  /** The Hugging Face model folder. */
  dir: string;
  out: string;
  name?: string;
  /** Context length to build for (default: max_position_embeddings, or the sliding window if smaller). */
  maxSeqLen?: number;
  /** Recorded in config.json's source, e.g. {repo, revision} from `pdserve fetch`. */
  source?: Record<string, unknown>;
  /** Weight storage of the graph (default fp32); the source's F16/BF16 are widened first either way. */
  dtype?: WeightDtype;
  /** Quantization block length for q8/q4. */
  blockSize?: number;
}

type Json = Record<string, unknown>;

/** Architectures whose checkpoints map onto pdserve's Llama graph, by `architectures[0]` / `model_type`. */
const ARCHITECTURES: Record<string, { modelType: string; biases: boolean }> = {
  LlamaForCausalLM: { modelType: 'llama', biases: false },
  MistralForCausalLM: { modelType: 'mistral', biases: false },
  Qwen2ForCausalLM: { modelType: 'qwen2', biases: true },
};

/** Files of the folder copied into the model directory as they are (the tokenizer and its settings). */
const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'chat_template.jinja', 'special_tokens_map.json'];

function readJson(path: string, required: true): Json;
function readJson(path: string, required: false): Json | undefined;
function readJson(path: string, required: boolean): Json | undefined {
  if (!existsSync(path)) {
    if (required) throw new ModelLoadError(`${path} is missing`);
    return undefined;
  }
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ModelLoadError(`${path} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ModelLoadError(`${path} must hold a JSON object`);
  return value as Json;
}

function idList(value: unknown): number[] {
  if (Number.isInteger(value)) return [value as number];
  if (Array.isArray(value)) return value.filter((v): v is number => Number.isInteger(v));
  return [];
}

/** The shape of a Hugging Face config.json as pdserve's graph needs it, validated. */
export interface HfArchitecture {
  architecture: string;
  modelType: string;
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositions: number;
  /** The attention window when one is set and smaller than maxPositions. */
  slidingWindow: number | null;
  normEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  /** tie_word_embeddings as config.json states it; absent: tied exactly when there is no lm_head. */
  tied: boolean | undefined;
  biases: boolean;
}

export function parseHfConfig(config: Json, path: string): HfArchitecture {
  const archs = Array.isArray(config.architectures) ? config.architectures.map(String) : [];
  const byType = Object.entries(ARCHITECTURES).find(([, a]) => a.modelType === config.model_type)?.[0];
  const architecture = archs.length > 0 ? archs[0] : byType;
  if (!architecture || !(architecture in ARCHITECTURES)) {
    const named = architecture ?? (config.model_type !== undefined ? `model_type ${JSON.stringify(config.model_type)}` : 'none named');
    throw new ModelLoadError(`${path}: unsupported architecture ${named} (pdserve converts ${Object.keys(ARCHITECTURES).join(', ')})`);
  }
  const arch = ARCHITECTURES[architecture];
  const int = (key: string, fallback?: number): number => {
    const v = config[key] ?? fallback;
    if (v === undefined) throw new ModelLoadError(`${path}: required field ${key} is missing`);
    if (!Number.isInteger(v) || (v as number) <= 0) throw new ModelLoadError(`${path}: ${key} must be a positive integer, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const num = (key: string, fallback: number): number => {
    const v = config[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new ModelLoadError(`${path}: ${key} must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  };
  const dim = int('hidden_size');
  const nHeads = int('num_attention_heads');
  const nKvHeads = int('num_key_value_heads', nHeads);
  if (nHeads % nKvHeads !== 0) throw new ModelLoadError(`${path}: num_attention_heads ${nHeads} is not a multiple of num_key_value_heads ${nKvHeads}`);
  const headDim = int('head_dim', dim % nHeads === 0 ? dim / nHeads : undefined);
  if (headDim % 2 !== 0) throw new ModelLoadError(`${path}: head_dim ${headDim} must be even for RoPE`);
  const act = config.hidden_act ?? 'silu';
  if (act !== 'silu') throw new ModelLoadError(`${path}: hidden_act ${JSON.stringify(act)} is not supported (the graph's FFN is SwiGLU)`);
  const maxPositions = int('max_position_embeddings');
  // Mistral (and Qwen2 with use_sliding_window) attend only to the last `sliding_window` tokens.
  // Within that many positions a window changes nothing, so such a model is built for that context.
  const windowed = arch.modelType === 'qwen2' ? config.use_sliding_window === true : config.sliding_window != null;
  const slidingWindow = windowed ? int('sliding_window') : null;
  if (config.partial_rotary_factor !== undefined && config.partial_rotary_factor !== 1) {
    throw new ModelLoadError(`${path}: partial_rotary_factor ${JSON.stringify(config.partial_rotary_factor)} is not supported`);
  }
  return {
    architecture,
    modelType: arch.modelType,
    dim,
    hiddenDim: int('intermediate_size'),
    nLayers: int('num_hidden_layers'),
    nHeads,
    nKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    maxPositions,
    slidingWindow: slidingWindow !== null && slidingWindow < maxPositions ? slidingWindow : null,
    normEps: num('rms_norm_eps', 1e-6), // transformers' LlamaConfig default
    ropeTheta: num('rope_theta', 10000),
    ropeScaling: parseRopeScaling(config.rope_scaling, path),
    tied: typeof config.tie_word_embeddings === 'boolean' ? config.tie_word_embeddings : undefined,
    biases: arch.biases || config.attention_bias === true,
  };
}

function parseRopeScaling(value: unknown, path: string): RopeScaling | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'object') throw new ModelLoadError(`${path}: rope_scaling must be an object or null`);
  const s = value as Json;
  const type = s.rope_type ?? s.type;
  const pos = (key: string): number => {
    const v = s[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new ModelLoadError(`${path}: rope_scaling.${key} must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  };
  if (type === 'default') return null;
  if (type === 'linear') return { rope_type: 'linear', factor: pos('factor') };
  if (type === 'llama3') {
    const r: RopeScaling = {
      rope_type: 'llama3', factor: pos('factor'), low_freq_factor: pos('low_freq_factor'), high_freq_factor: pos('high_freq_factor'),
      original_max_position_embeddings: pos('original_max_position_embeddings'),
    };
    if (r.high_freq_factor <= r.low_freq_factor) throw new ModelLoadError(`${path}: rope_scaling.high_freq_factor must exceed low_freq_factor`);
    return r;
  }
  throw new ModelLoadError(`${path}: rope_scaling type ${JSON.stringify(type)} is not supported (supported: llama3, linear, default)`);
}

/** Tensor names of each layer, and the shapes the config implies. */
function layerTensors(a: HfArchitecture, l: number): Record<keyof LlamaLayerWeights, { name: string; shape: number[] }> {
  const p = `model.layers.${l}.`;
  const q = a.nHeads * a.headDim;
  const kv = a.nKvHeads * a.headDim;
  return {
    attnNorm: { name: `${p}input_layernorm.weight`, shape: [a.dim] },
    wq: { name: `${p}self_attn.q_proj.weight`, shape: [q, a.dim] },
    wk: { name: `${p}self_attn.k_proj.weight`, shape: [kv, a.dim] },
    wv: { name: `${p}self_attn.v_proj.weight`, shape: [kv, a.dim] },
    wo: { name: `${p}self_attn.o_proj.weight`, shape: [a.dim, q] },
    ffnNorm: { name: `${p}post_attention_layernorm.weight`, shape: [a.dim] },
    w1: { name: `${p}mlp.gate_proj.weight`, shape: [a.hiddenDim, a.dim] },
    w2: { name: `${p}mlp.down_proj.weight`, shape: [a.dim, a.hiddenDim] },
    w3: { name: `${p}mlp.up_proj.weight`, shape: [a.hiddenDim, a.dim] },
    bq: { name: `${p}self_attn.q_proj.bias`, shape: [q] },
    bk: { name: `${p}self_attn.k_proj.bias`, shape: [kv] },
    bv: { name: `${p}self_attn.v_proj.bias`, shape: [kv] },
  };
}

const BIAS_KEYS = new Set(['bq', 'bk', 'bv']);
/** Buffers some older checkpoints saved along with the weights; recomputed by the graph. */
const IGNORED = /\.rotary_emb\.inv_freq$/;

/**
 * Checks that the checkpoint holds exactly the tensors the architecture needs, with the right
 * shapes, and returns the weight source that reads them on demand.
 */
function weightSource(ckpt: SafetensorsCheckpoint, a: HfArchitecture, dir: string): { weights: LlamaWeightSource; tied: boolean } {
  const expected = new Map<string, number[]>();
  expected.set('model.embed_tokens.weight', [a.vocabSize, a.dim]);
  expected.set('model.norm.weight', [a.dim]);
  const hasHead = ckpt.info('lm_head.weight') !== undefined;
  if (a.tied === false && !hasHead) throw new ModelLoadError(`${dir}: the checkpoint has no lm_head.weight and config.json sets tie_word_embeddings false`);
  const tied = a.tied ?? !hasHead;
  if (hasHead) expected.set('lm_head.weight', [a.vocabSize, a.dim]);
  for (let l = 0; l < a.nLayers; l++) {
    for (const [key, t] of Object.entries(layerTensors(a, l))) {
      if (BIAS_KEYS.has(key) && !a.biases) continue;
      expected.set(t.name, t.shape);
    }
  }
  const unknown = ckpt.names().filter((n) => !expected.has(n) && !IGNORED.test(n));
  if (unknown.length > 0) {
    const shown = unknown.slice(0, 8).join(', ') + (unknown.length > 8 ? `, ... (${unknown.length} in all)` : '');
    throw new ModelLoadError(`${dir}: unexpected tensors for ${a.architecture}: ${shown}`);
  }
  for (const [name, shape] of expected) {
    const info = ckpt.info(name);
    if (!info) throw new ModelLoadError(`${dir}: tensor ${name} is missing from the checkpoint`);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new ModelLoadError(`${dir}: tensor ${name} has shape [${info.shape}], config.json implies [${shape}]`);
    }
  }
  const weights: LlamaWeightSource = {
    tokenEmbedding: () => ckpt.readFloat32('model.embed_tokens.weight'),
    finalNorm: () => ckpt.readFloat32('model.norm.weight'),
    // A tied model's checkpoint may still carry lm_head.weight (a copy); the embedding is used.
    classifier: () => (tied ? null : ckpt.readFloat32('lm_head.weight')),
    layer: (l) => {
      const names = layerTensors(a, l);
      const w = {} as LlamaLayerWeights;
      for (const [key, t] of Object.entries(names) as Array<[keyof LlamaLayerWeights, { name: string }]>) {
        if (BIAS_KEYS.has(key) && !a.biases) continue;
        w[key] = ckpt.readFloat32(t.name);
      }
      return w;
    },
  };
  return { weights, tied };
}

export function convertHf(opts: ConvertHfOptions): ModelConfig {
  const dir = opts.dir;
  if (!existsSync(dir)) throw new ModelLoadError(`Hugging Face model folder ${dir} does not exist`);
  const configPath = join(dir, 'config.json');
  const config = readJson(configPath, true);
  const a = parseHfConfig(config, configPath);
  if (!existsSync(join(dir, 'tokenizer.json'))) {
    throw new ModelLoadError(`${join(dir, 'tokenizer.json')} is missing (pdserve reads the fast-tokenizer file; convert tokenizer.model with transformers' AutoTokenizer.save_pretrained)`);
  }
  const generationConfig = readJson(join(dir, 'generation_config.json'), false) ?? {};
  const tokenizerConfig = readJson(join(dir, 'tokenizer_config.json'), false) ?? {};
  readJson(join(dir, 'tokenizer.json'), true); // fail here, not at serve time, on a corrupt file

  const bos = idList(generationConfig.bos_token_id)[0] ?? idList(config.bos_token_id)[0] ?? null;
  // Every listed EOS ends generation (vLLM does the same): e.g. <|eot_id|> and <|end_of_text|>.
  const eos = [...new Set([...idList(generationConfig.eos_token_id), ...idList(config.eos_token_id)])];
  for (const id of [...(bos === null ? [] : [bos]), ...eos]) {
    if (id < 0 || id >= a.vocabSize) throw new ModelLoadError(`${dir}: token id ${id} (BOS/EOS) is outside the vocabulary of ${a.vocabSize}`);
  }
  const limit = a.slidingWindow ?? a.maxPositions;
  const maxSeqLen = Math.min(opts.maxSeqLen ?? limit, limit);

  const tokenizerFiles: Record<string, Uint8Array> = {};
  for (const name of TOKENIZER_FILES) if (existsSync(join(dir, name))) tokenizerFiles[name] = readFileSync(join(dir, name));

  const ckpt = SafetensorsCheckpoint.open(dir);
  try {
    const { weights, tied } = weightSource(ckpt, a, dir);
    const dtypes = [...new Set(ckpt.names().map((n) => ckpt.info(n)!.dtype))].sort();
    return writeLlamaModelDir(opts.out, {
      name: opts.name ?? basename(resolve(opts.out)),
      dim: a.dim,
      hidden_dim: a.hiddenDim,
      n_layers: a.nLayers,
      n_heads: a.nHeads,
      n_kv_heads: a.nKvHeads,
      head_dim: a.headDim,
      vocab_size: a.vocabSize,
      max_seq_len: maxSeqLen,
      rope_theta: a.ropeTheta,
      rope_layout: 'rotate-half',
      rope_scaling: a.ropeScaling,
      norm_eps: a.normEps,
      tied_embeddings: tied,
      generation: { bos_token_id: bos, eos_token_ids: eos, add_bos: bos !== null && tokenizerConfig.add_bos_token !== false },
      source: {
        kind: 'hf',
        architecture: a.architecture,
        model_type: a.modelType,
        folder: resolve(dir),
        weight_dtypes: dtypes,
        ...(a.slidingWindow !== null ? { note: `context capped at the sliding window of ${a.slidingWindow}` } : {}),
        ...opts.source,
      },
    }, weights, { kind: 'hf', files: tokenizerFiles }, { dtype: opts.dtype ?? 'fp32', blockSize: opts.blockSize });
  } finally {
    ckpt.close();
  }
}
