// `pdserve convert --from llama2c`: turns a llama2.c checkpoint and tokenizer into a model
// directory (config.json, model.onnx + model.onnx.data, tokenizer.bin).
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { ModelLoadError, type ModelConfig } from './config.ts';
import { writeLlamaModelDir } from './model-dir.ts';
import { readLlama2cCheckpoint } from './llama2c.ts';
import type { WeightDtype } from './weight-storage.ts';

export interface ConvertLlama2cOptions {
  checkpoint: string;
  tokenizer: string;
  out: string;
  name?: string;
  /** Weight storage (default fp32, exact to run.c). */
  dtype?: WeightDtype;
  /** Quantization block length for q8/q4 (default 32). */
  blockSize?: number;
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

export function convertLlama2c(opts: ConvertLlama2cOptions): ModelConfig {
  if (!existsSync(opts.tokenizer)) throw new ModelLoadError(`tokenizer file ${opts.tokenizer} does not exist`);
  const { header, weights } = readLlama2cCheckpoint(opts.checkpoint);
  return writeLlamaModelDir(opts.out, {
    name: opts.name ?? basename(resolve(opts.out)),
    dim: header.dim,
    hidden_dim: header.hiddenDim,
    n_layers: header.nLayers,
    n_heads: header.nHeads,
    n_kv_heads: header.nKvHeads,
    vocab_size: header.vocabSize,
    max_seq_len: header.seqLen,
    rope_theta: 10000,
    tied_embeddings: header.sharedClassifier,
    // run.c prepends BOS (1) and stops when the model emits BOS.
    generation: { bos_token_id: 1, eos_token_ids: [1], add_bos: true },
    source: {
      kind: 'llama2c',
      checkpoint: basename(opts.checkpoint),
      checkpoint_sha256: sha256(opts.checkpoint),
      tokenizer: basename(opts.tokenizer),
      tokenizer_sha256: sha256(opts.tokenizer),
    },
  }, weights, { kind: 'llama2c', bin: readFileSync(opts.tokenizer) }, { dtype: opts.dtype ?? 'fp32', blockSize: opts.blockSize });
}
