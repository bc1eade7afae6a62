// Writes a pdserve model directory for pdserve's own Llama graph: the fields every such model
// shares, the graph and its weights, the llama2.c-format tokenizer and config.json. The converter
// and the dummy-weight builder differ only in shapes, ids, provenance and where weights come from.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MODEL_FORMAT, type ModelConfig } from './config.ts';
import { buildLlamaGraph, ONNX_DATA_FILE, ONNX_FILE, type LlamaWeightSource } from './llama-graph.ts';
import { checkWeightFormat, quantizationInfo, type WeightFormat } from './weight-storage.ts';

export type LlamaModelFields = Pick<ModelConfig,
  'name' | 'dim' | 'hidden_dim' | 'n_layers' | 'n_heads' | 'n_kv_heads' | 'vocab_size' | 'max_seq_len' |
  'rope_theta' | 'tied_embeddings' | 'generation' | 'source'>;

export function writeLlamaModelDir(out: string, fields: LlamaModelFields, weights: LlamaWeightSource, tokenizerBin: Uint8Array, format: WeightFormat = { dtype: 'fp32' }): ModelConfig {
  const { dtype } = checkWeightFormat(format); // before anything is written
  const quantization = quantizationInfo(format);
  mkdirSync(out, { recursive: true });
  const cfg: ModelConfig = {
    format: MODEL_FORMAT,
    architecture: 'llama',
    head_dim: fields.dim / fields.n_heads,
    norm_eps: 1e-5,
    dtype,
    ...(quantization ? { quantization } : {}),
    onnx: { file: ONNX_FILE, io: 'pdserve-kv-in/1' },
    tokenizer: { kind: 'llama2c', file: 'tokenizer.bin' },
    ...fields,
  };
  buildLlamaGraph(cfg, weights, join(out, ONNX_FILE), join(out, ONNX_DATA_FILE), format);
  writeFileSync(join(out, 'tokenizer.bin'), tokenizerBin); // written, not copied: keeps no read-only mode
  writeFileSync(join(out, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
  return cfg;
}
