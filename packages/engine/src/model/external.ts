// Third-party ONNX decoder exports: a folder that is not a pdserve model directory but holds an ONNX
// decoder with past/present KV inputs and outputs, a tokenizer.json and the exporter's config files.
// Two I/O conventions are understood, both read from the graph's input and output names and shapes
// (and from genai_config.json's name templates when it has them), never hard-coded to one file:
//
//   'hf-past-key-values'  optimum / transformers.js / onnxruntime-genai builder:
//                         past_key_values.N.key / .value [B, H, past, D] -> present.N.key / .value
//                         [B, H, past + S, D]
//   'stacked-past'        older onnxruntime-genai / convert_to_onnx GPT-2 exports:
//                         past_N [2, B, H, past, D] -> present_N [2, B, H, past + S, D]
//
// Optional inputs (attention_mask, position_ids, a merged decoder's use_cache_branch) are used when
// the graph has them. Layers, KV heads and head size come from the graph's shapes where they are
// fixed numbers, else from config.json (Hugging Face) or genai_config.json, and the sources must
// agree. The result is a ModelConfig like a pdserve directory's plus the detected I/O names.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as ortTypes from 'onnxruntime-node';
import { createSession, type SessionOptions } from '../runtime/session.ts';
import { MODEL_FORMAT, ModelLoadError, type ModelConfig } from './config.ts';

export type ExternalConvention = 'hf-past-key-values' | 'stacked-past';
export type IdType = 'int32' | 'int64';

export interface ExternalLayerIo {
  /** 'hf-past-key-values': [key, value] names; 'stacked-past': one name holding both. */
  past: string[];
  present: string[];
}

export interface ExternalIo {
  convention: ExternalConvention;
  inputIds: { name: string; type: IdType };
  attentionMask: { name: string; type: IdType } | null;
  positionIds: { name: string; type: IdType } | null;
  /** Merged decoders (decoder_model_merged.onnx) pick the with-past branch with this boolean. */
  useCacheBranch: string | null;
  logits: string;
  layers: ExternalLayerIo[];
}

export interface ExternalModel {
  config: ModelConfig;
  io: ExternalIo;
  /** Absolute path of the ONNX file. */
  path: string;
}

/** Where a third-party export keeps its decoder, in the order they are tried. */
export const EXTERNAL_ONNX_CANDIDATES = [
  'model.onnx',
  'decoder_model_merged.onnx',
  'decoder_with_past_model.onnx',
  'onnx/model.onnx',
  'onnx/decoder_model_merged.onnx',
  'onnx/decoder_with_past_model.onnx',
];

type Json = Record<string, unknown>;

function readJson(dir: string, file: string): Json | undefined {
  const path = join(dir, file);
  if (!existsSync(path)) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ModelLoadError(`${path} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new ModelLoadError(`${path} is not a JSON object`);
  return raw as Json;
}

function obj(v: unknown): Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Json) : {};
}

function int(v: unknown): number | undefined {
  return Number.isInteger(v) ? (v as number) : undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v.length > 0 ? v : undefined;
}

function ids(v: unknown): number[] {
  if (Number.isInteger(v)) return [v as number];
  if (Array.isArray(v)) return v.filter((x): x is number => Number.isInteger(x));
  return [];
}

/**
 * Whether `dir` is a pdserve model directory (config.json with a `pdserve-model/*` format, or a
 * config.json that is not JSON at all, which readModelConfig then reports). Any other folder is a
 * candidate third-party export.
 */
export function isPdserveModelDir(dir: string): boolean {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) return false;
  try {
    const format = (JSON.parse(readFileSync(path, 'utf8')) as Json)?.format;
    return typeof format === 'string' && format.startsWith('pdserve-model/');
  } catch {
    return true; // readModelConfig reports the broken JSON
  }
}

/** The decoder's path relative to `dir`: genai_config.json's decoder.filename, else the usual names. */
export function findExternalOnnx(dir: string): string {
  const genai = readJson(dir, 'genai_config.json');
  const named = str(obj(obj(genai?.model).decoder).filename);
  if (named) {
    if (!existsSync(join(dir, named))) throw new ModelLoadError(`${join(dir, 'genai_config.json')} names decoder ${named}, which is missing`);
    return named;
  }
  const found = EXTERNAL_ONNX_CANDIDATES.find((f) => existsSync(join(dir, f)));
  if (!found) {
    throw new ModelLoadError(
      `${dir} is neither a pdserve model directory (config.json with format "${MODEL_FORMAT}") nor an ONNX decoder export ` +
        `(no genai_config.json decoder.filename, and none of ${EXTERNAL_ONNX_CANDIDATES.join(', ')})`,
    );
  }
  return found;
}

/** Opens the folder's decoder and describes it. The session is returned for the runner to use. */
export async function loadExternalModel(dir: string, opts: SessionOptions = {}): Promise<{ model: ExternalModel; session: ortTypes.InferenceSession }> {
  const file = findExternalOnnx(dir);
  const session = await createSession(join(dir, file), opts);
  try {
    return { model: describeExternalModel(dir, file, session), session };
  } catch (err) {
    await session.release().catch(() => {});
    throw err;
  }
}

/** What describeExternalModel reads from a session: names and shapes. */
export type GraphSignature = Pick<ortTypes.InferenceSession, 'inputNames' | 'outputNames' | 'inputMetadata' | 'outputMetadata'>;

interface TensorMeta {
  type: string;
  shape: ReadonlyArray<number | string>;
}

/** `%d` name template (genai_config.json style) to a regex capturing the layer index. */
function template(t: string): RegExp {
  const parts = t.split('%d').map((p) => p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  if (parts.length !== 2) throw new ModelLoadError(`KV name template ${JSON.stringify(t)} must hold exactly one %d`);
  return new RegExp(`^${parts[0]}(\\d+)${parts[1]}$`);
}

/** Layer index -> name, for the names matching any of `patterns`. */
function byLayer(names: readonly string[], patterns: RegExp[]): Map<number, string> {
  const out = new Map<number, string>();
  for (const n of names) {
    for (const p of patterns) {
      const m = p.exec(n);
      if (m) {
        out.set(Number(m[1]), n);
        break;
      }
    }
  }
  return out;
}

/** A numeric dimension, or undefined when the graph leaves it symbolic. */
function dim(meta: TensorMeta, i: number): number | undefined {
  const d = meta.shape[i];
  return typeof d === 'number' && d > 0 ? d : undefined;
}

/**
 * Classifies the graph's I/O and synthesizes the model's configuration. `file` is the ONNX path
 * relative to `dir`; errors name it together with what was found.
 */
export function describeExternalModel(dir: string, file: string, graph: GraphSignature): ExternalModel {
  const path = join(dir, file);
  const fail = (what: string): never => {
    throw new ModelLoadError(`${path}: ${what} (inputs: ${graph.inputNames.join(', ')}; outputs: ${graph.outputNames.join(', ')})`);
  };
  const meta = new Map<string, TensorMeta>();
  for (const m of [...graph.inputMetadata, ...graph.outputMetadata]) {
    if (m.isTensor) meta.set(m.name, { type: m.type, shape: m.shape });
    else meta.set(m.name, { type: 'non-tensor', shape: [] });
  }
  const metaOf = (name: string): TensorMeta => meta.get(name) ?? { type: 'unknown', shape: [] };

  const hf = readJson(dir, 'config.json') ?? {};
  const genaiModel = obj(readJson(dir, 'genai_config.json')?.model);
  const genaiDecoder = obj(genaiModel.decoder);
  const genaiIn = obj(genaiDecoder.inputs);
  const genaiOut = obj(genaiDecoder.outputs);
  const genConfig = readJson(dir, 'generation_config.json') ?? {};

  // --- Names: genai_config.json's templates when given, else the conventions' usual names.
  const inputs = graph.inputNames;
  const outputs = graph.outputNames;
  const nameOf = (key: string, fallback: string): string => str(genaiIn[key]) ?? fallback;
  const idsName = nameOf('input_ids', 'input_ids');
  const maskName = nameOf('attention_mask', 'attention_mask');
  const posName = nameOf('position_ids', 'position_ids');
  const logitsName = str(genaiOut.logits) ?? 'logits';

  const pastKey = byLayer(inputs, [template(str(genaiIn.past_key_names) ?? 'past_key_values.%d.key')]);
  const pastValue = byLayer(inputs, [template(str(genaiIn.past_value_names) ?? 'past_key_values.%d.value')]);
  const stacked = byLayer(inputs, [template(str(genaiIn.past_names) ?? 'past_%d')]);
  let convention: ExternalConvention;
  if ((pastKey.size || pastValue.size) && stacked.size) fail('mixes per-tensor past_key_values.N.key/value inputs with stacked past_N inputs');
  if (pastKey.size || pastValue.size) convention = 'hf-past-key-values';
  else if (stacked.size) convention = 'stacked-past';
  else {
    convention = fail(
      'no KV-cache inputs found: expected past_key_values.N.key/.value -> present.N.key/.value (optimum, transformers.js) ' +
        'or stacked past_N -> present_N [2, batch, heads, seq, head_dim]; exports without a KV cache are not supported',
    );
  }

  const layers: ExternalLayerIo[] = [];
  const presentKey = byLayer(outputs, [template(str(genaiOut.present_key_names) ?? 'present.%d.key'), /^present_key_values\.(\d+)\.key$/]);
  const presentValue = byLayer(outputs, [template(str(genaiOut.present_value_names) ?? 'present.%d.value'), /^present_key_values\.(\d+)\.value$/]);
  const presentStacked = byLayer(outputs, [template(str(genaiOut.present_names) ?? 'present_%d')]);
  const count = convention === 'stacked-past' ? stacked.size : Math.max(pastKey.size, pastValue.size);
  for (let l = 0; l < count; l++) {
    if (convention === 'stacked-past') {
      const past = stacked.get(l);
      const present = presentStacked.get(l);
      if (!past) fail(`stacked past inputs are not numbered 0..${count - 1}: layer ${l} is missing`);
      if (!present) fail(`input ${past} has no matching present output for layer ${l}`);
      layers.push({ past: [past!], present: [present!] });
    } else {
      const k = pastKey.get(l);
      const v = pastValue.get(l);
      const pk = presentKey.get(l);
      const pv = presentValue.get(l);
      if (!k || !v) fail(`past_key_values inputs are not numbered 0..${count - 1} with a key and a value each: layer ${l} lacks ${k ? 'its value' : 'its key'}`);
      if (!pk || !pv) fail(`layer ${l}: no present.${l}.key / present.${l}.value outputs`);
      layers.push({ past: [k!, v!], present: [pk!, pv!] });
    }
  }

  // --- Shapes: [B, H, S, D] per tensor, or [2, B, H, S, D] stacked; float32 only.
  const rank = convention === 'stacked-past' ? 5 : 4;
  let graphHeads: number | undefined;
  let graphHeadDim: number | undefined;
  for (const name of layers.flatMap((l) => [...l.past, ...l.present])) {
    const m = metaOf(name);
    if (m.type !== 'float32') fail(`${name} is ${m.type}; only float32 KV caches are supported`);
    if (m.shape.length === 0) continue; // shape not recorded in the graph
    if (m.shape.length !== rank) {
      fail(`${name} has shape [${m.shape.join(', ')}]; the ${convention} layout needs ${convention === 'stacked-past' ? '[2, batch, heads, seq, head_dim]' : '[batch, heads, seq, head_dim]'}`);
    }
    if (rank === 5 && m.shape[0] !== 2) fail(`${name} has shape [${m.shape.join(', ')}]: a stacked past needs 2 (key, value) as its first dimension`);
    const h = dim(m, rank - 3);
    const d = dim(m, rank - 1);
    if (h !== undefined) {
      if (graphHeads !== undefined && graphHeads !== h) fail(`KV tensors disagree on the number of heads (${graphHeads} vs ${h} in ${name})`);
      graphHeads = h;
    }
    if (d !== undefined) {
      if (graphHeadDim !== undefined && graphHeadDim !== d) fail(`KV tensors disagree on head size (${graphHeadDim} vs ${d} in ${name})`);
      graphHeadDim = d;
    }
  }

  // --- Other inputs: input_ids required; the rest optional but every input must be understood.
  const idType = (name: string): IdType => {
    const t = metaOf(name).type;
    if (t !== 'int32' && t !== 'int64') fail(`input ${name} is ${t}; expected int32 or int64`);
    return t as IdType;
  };
  if (!inputs.includes(idsName)) fail(`no ${idsName} input`);
  if (!outputs.includes(logitsName)) fail(`no ${logitsName} output`);
  const kvInputs = new Set(layers.flatMap((l) => l.past));
  const useCacheBranch = inputs.includes('use_cache_branch') ? 'use_cache_branch' : null;
  if (useCacheBranch && metaOf(useCacheBranch).type !== 'bool') fail(`input use_cache_branch is ${metaOf(useCacheBranch).type}; expected bool`);
  const unknown = inputs.filter((n) => n !== idsName && n !== maskName && n !== posName && n !== useCacheBranch && !kvInputs.has(n));
  if (unknown.length) fail(`unsupported input${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')}`);
  const logitsMeta = metaOf(logitsName);
  if (logitsMeta.type !== 'float32') fail(`output ${logitsName} is ${logitsMeta.type}; only float32 logits are supported`);
  if (logitsMeta.shape.length !== 0 && logitsMeta.shape.length !== 3) fail(`output ${logitsName} has shape [${logitsMeta.shape.join(', ')}]; expected [batch, seq, vocab]`);
  const io: ExternalIo = {
    convention,
    inputIds: { name: idsName, type: idType(idsName) },
    attentionMask: inputs.includes(maskName) ? { name: maskName, type: idType(maskName) } : null,
    positionIds: inputs.includes(posName) ? { name: posName, type: idType(posName) } : null,
    useCacheBranch,
    logits: logitsName,
    layers,
  };

  // --- Dimensions: the graph's fixed numbers first; config files fill the rest and must agree.
  const files = { graph: path, hf: join(dir, 'config.json'), genai: join(dir, 'genai_config.json') };
  const resolve = (what: string, candidates: Array<[string, number | undefined]>): number | undefined => {
    const known = candidates.filter((c): c is [string, number] => c[1] !== undefined);
    for (const [src, v] of known.slice(1)) {
      if (v !== known[0][1]) throw new ModelLoadError(`${dir}: ${what} is ${known[0][1]} in ${known[0][0]} but ${v} in ${src}`);
    }
    return known[0]?.[1];
  };
  const hfHeads = int(hf.num_attention_heads) ?? int(hf.n_head);
  const hfHidden = int(hf.hidden_size) ?? int(hf.n_embd);
  const nLayers = resolve('the number of layers', [
    [files.graph, layers.length],
    [files.hf, int(hf.num_hidden_layers) ?? int(hf.n_layer)],
    [files.genai, int(genaiDecoder.num_hidden_layers)],
  ])!;
  const kvHeads = resolve('the number of KV heads', [
    [files.graph, graphHeads],
    [files.hf, int(hf.num_key_value_heads) ?? (hf.multi_query === true ? 1 : undefined)],
    [files.genai, int(genaiDecoder.num_key_value_heads)],
  ]) ?? hfHeads;
  const headDim = resolve('the head size', [
    [files.graph, graphHeadDim],
    [files.hf, int(hf.head_dim) ?? (hfHidden !== undefined && hfHeads ? hfHidden / hfHeads : undefined)],
    [files.genai, int(genaiDecoder.head_size)],
  ]);
  const vocab = resolve('the vocabulary size', [
    [files.graph, dim(logitsMeta, 2)],
    [files.genai, int(genaiModel.vocab_size)],
    [files.hf, int(hf.vocab_size)],
  ]);
  const context = int(genaiModel.context_length) ?? int(hf.max_position_embeddings) ?? int(hf.n_positions) ?? int(hf.n_ctx);
  const missing = (what: string, where: string): never => {
    throw new ModelLoadError(`${dir}: cannot tell ${what} of ${file}: the graph leaves it symbolic and ${where}`);
  };
  if (kvHeads === undefined) missing('the number of KV heads', 'neither config.json (num_key_value_heads, num_attention_heads) nor genai_config.json (num_key_value_heads) gives it');
  if (headDim === undefined) missing('the head size', 'neither config.json (head_dim, hidden_size / num_attention_heads) nor genai_config.json (head_size) gives it');
  if (vocab === undefined) missing('the vocabulary size', 'neither config.json nor genai_config.json has vocab_size');
  if (context === undefined) {
    throw new ModelLoadError(`${dir}: cannot tell the context length of ${file}: expected genai_config.json model.context_length or config.json max_position_embeddings / n_positions / n_ctx`);
  }
  const nHeads = hfHeads ?? int(genaiDecoder.num_attention_heads) ?? kvHeads!;
  if (nHeads % kvHeads! !== 0) throw new ModelLoadError(`${dir}: ${nHeads} attention heads are not a multiple of ${kvHeads} KV heads`);

  // --- Generation ids: genai_config.json, generation_config.json, config.json; only ids the model has.
  const inVocab = (id: number) => id >= 0 && id < vocab!;
  const bos = [genaiModel.bos_token_id, genConfig.bos_token_id, hf.bos_token_id].map((v) => ids(v)[0]).find((v) => v !== undefined && inVocab(v)) ?? null;
  const eos = new Set<number>();
  for (const v of [genaiModel.eos_token_id, genConfig.eos_token_id, hf.eos_token_id]) for (const id of ids(v)) if (inVocab(id)) eos.add(id);

  const architecture = str(genaiModel.type) ?? str(hf.model_type) ?? 'unknown';
  const config: ModelConfig = {
    format: MODEL_FORMAT,
    name: str(hf._name_or_path) ?? `${architecture} (${file})`,
    architecture,
    dim: hfHidden ?? nHeads * headDim!,
    hidden_dim: int(hf.intermediate_size) ?? int(hf.n_inner) ?? 4 * (hfHidden ?? nHeads * headDim!),
    n_layers: nLayers,
    n_heads: nHeads,
    n_kv_heads: kvHeads!,
    head_dim: headDim!,
    vocab_size: vocab!,
    max_seq_len: context,
    rope_theta: typeof hf.rope_theta === 'number' ? hf.rope_theta : 0,
    norm_eps: [hf.rms_norm_eps, hf.layer_norm_epsilon, hf.layer_norm_eps].find((v): v is number => typeof v === 'number') ?? 0,
    tied_embeddings: hf.tie_word_embeddings !== false,
    dtype: 'fp32',
    onnx: { file, io: convention },
    tokenizer: { kind: 'hf', file: 'tokenizer.json' },
    // Whether a BOS goes in front is the tokenizer's post-processor's business for these exports.
    generation: { bos_token_id: bos, eos_token_ids: [...eos], add_bos: false },
    source: {
      kind: 'external',
      file,
      convention,
      inputs: [...inputs],
      outputs: [...outputs],
      optional_inputs: { attention_mask: io.attentionMask !== null, position_ids: io.positionIds !== null, use_cache_branch: io.useCacheBranch !== null },
    },
  };
  return { config, io, path };
}
