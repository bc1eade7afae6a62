// `pdserve convert --from llama2c`: turns a llama2.c checkpoint and tokenizer into a model
// directory (config.json, model.onnx + model.onnx.data, tokenizer.bin).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { MODEL_FORMAT, ModelLoadError, type ModelConfig } from './config.ts';
import { buildLlamaGraph, ONNX_DATA_FILE, ONNX_FILE } from './llama-graph.ts';
import { readLlama2cCheckpoint } from './llama2c.ts';

export interface ConvertLlama2cOptions {
  checkpoint: string;
  tokenizer: string;
  out: string;
  name?: string;
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

export function convertLlama2c(opts: ConvertLlama2cOptions): ModelConfig {
  if (!existsSync(opts.tokenizer)) throw new ModelLoadError(`tokenizer file ${opts.tokenizer} does not exist`);
  const { header, weights } = readLlama2cCheckpoint(opts.checkpoint);
  mkdirSync(opts.out, { recursive: true });
  const cfg: ModelConfig = {
    format: MODEL_FORMAT,
    name: opts.name ?? basename(resolve(opts.out)),
    architecture: 'llama',
    dim: header.dim,
    hidden_dim: header.hiddenDim,
    n_layers: header.nLayers,
    n_heads: header.nHeads,
    n_kv_heads: header.nKvHeads,
    head_dim: header.dim / header.nHeads,
    vocab_size: header.vocabSize,
    max_seq_len: header.seqLen,
    rope_theta: 10000,
    norm_eps: 1e-5,
    tied_embeddings: header.sharedClassifier,
    dtype: 'float32',
    onnx: { file: ONNX_FILE, io: 'pdserve-kv-in/1' },
    tokenizer: { kind: 'llama2c', file: 'tokenizer.bin' },
    // run.c prepends BOS (1) and stops when the model emits BOS.
    generation: { bos_token_id: 1, eos_token_ids: [1], add_bos: true },
    source: {
      kind: 'llama2c',
      checkpoint: basename(opts.checkpoint),
      checkpoint_sha256: sha256(opts.checkpoint),
      tokenizer: basename(opts.tokenizer),
      tokenizer_sha256: sha256(opts.tokenizer),
    },
  };
  buildLlamaGraph(cfg, weights, join(opts.out, ONNX_FILE), join(opts.out, ONNX_DATA_FILE));
  writeFileSync(join(opts.out, 'tokenizer.bin'), readFileSync(opts.tokenizer)); // not copyFile: keep no read-only mode
  writeFileSync(join(opts.out, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
  return cfg;
}
