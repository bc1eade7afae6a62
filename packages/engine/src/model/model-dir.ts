// Writes a pdserve model directory for pdserve's own Llama graph: the fields every such model
// shares, the graph and its weights, the tokenizer files and config.json. The converters and the
// dummy-weight builder differ only in shapes, ids, provenance and where weights come from.
//
// The directory is built under a temporary name beside `out` and renamed into place when complete,
// so a conversion that fails (bad input, full disk, Ctrl-C) never leaves a partial model behind.
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { MODEL_FORMAT, ModelLoadError, type ModelConfig } from './config.ts';
import { buildLlamaGraph, ONNX_DATA_FILE, ONNX_FILE, type LlamaWeightSource } from './llama-graph.ts';
import { checkWeightFormat, quantizationInfo, type WeightFormat } from './weight-storage.ts';

export type LlamaModelFields = Pick<ModelConfig,
  'name' | 'dim' | 'hidden_dim' | 'n_layers' | 'n_heads' | 'n_kv_heads' | 'vocab_size' | 'max_seq_len' |
  'rope_theta' | 'tied_embeddings' | 'generation' | 'source'> &
  Partial<Pick<ModelConfig, 'head_dim' | 'norm_eps' | 'rope_layout' | 'rope_scaling'>>;

/** The tokenizer written beside the graph: llama2.c's tokenizer.bin, or Hugging Face files by name. */
export type TokenizerFiles =
  | { kind: 'llama2c'; bin: Uint8Array }
  | { kind: 'hf'; files: Record<string, string | Uint8Array> };

export function writeLlamaModelDir(out: string, fields: LlamaModelFields, weights: LlamaWeightSource, tok: TokenizerFiles, format: WeightFormat = { dtype: 'fp32' }): ModelConfig {
  const { dtype } = checkWeightFormat(format); // before anything is written
  const quantization = quantizationInfo(format);
  const cfg: ModelConfig = {
    format: MODEL_FORMAT,
    architecture: 'llama',
    head_dim: fields.dim / fields.n_heads,
    norm_eps: 1e-5,
    dtype,
    ...(quantization ? { quantization } : {}),
    onnx: { file: ONNX_FILE, io: 'pdserve-kv-in/1' },
    tokenizer: tok.kind === 'llama2c' ? { kind: 'llama2c', file: 'tokenizer.bin' } : { kind: 'hf', file: 'tokenizer.json' },
    ...fields,
  };
  return writeDirAtomically(out, (dir) => {
    buildLlamaGraph(cfg, weights, join(dir, ONNX_FILE), join(dir, ONNX_DATA_FILE), format);
    // Written, not copied: keeps no read-only mode from the source.
    if (tok.kind === 'llama2c') writeFileSync(join(dir, 'tokenizer.bin'), tok.bin);
    else for (const [name, content] of Object.entries(tok.files)) writeFileSync(join(dir, name), content);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
    return cfg;
  });
}

/**
 * Runs `build` on a fresh temporary directory beside `out`, then moves it to `out`. An existing
 * `out` is replaced only when it is empty or a model directory (has config.json), so a mistyped
 * --out cannot delete an unrelated folder.
 */
export function writeDirAtomically<T>(out: string, build: (dir: string) => T): T {
  const target = resolve(out);
  if (existsSync(target)) {
    if (!statSync(target).isDirectory()) throw new ModelLoadError(`${out} exists and is not a directory`);
    if (readdirSync(target).length > 0 && !existsSync(join(target, 'config.json'))) {
      throw new ModelLoadError(`${out} exists, is not empty and is not a model directory: refusing to replace it`);
    }
  }
  mkdirSync(dirname(target), { recursive: true });
  const tmp = join(dirname(target), `.${basename(target)}.partial-${process.pid}-${Date.now()}`);
  mkdirSync(tmp);
  try {
    const result = build(tmp);
    const old = existsSync(target) ? `${tmp}.old` : undefined;
    if (old) renameSync(target, old);
    renameSync(tmp, target);
    if (old) rmSync(old, { recursive: true, force: true });
    return result;
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}
