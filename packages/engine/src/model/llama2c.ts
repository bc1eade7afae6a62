// Reads llama2.c checkpoints in the legacy fp32 layout (run.c's `read_checkpoint`): a header of 7
// int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab size
// means the classifier is stored separately), then the weights in run.c's order.
import { readFileSync } from 'node:fs';
import type { LlamaLayerWeights, LlamaWeightSource } from './llama-graph.ts';
import { ModelLoadError } from './config.ts';

export interface Llama2cHeader {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  sharedClassifier: boolean;
}

const HEADER_BYTES = 7 * 4;
const VERSIONED_MAGIC = 0x616b3432; // "ak42": llama2.c's newer export formats

export function readLlama2cCheckpoint(path: string): { header: Llama2cHeader; weights: LlamaWeightSource } {
  let file: Buffer;
  try {
    file = readFileSync(path);
  } catch (err) {
    throw new ModelLoadError(`cannot read checkpoint ${path}: ${(err as Error).message}`);
  }
  if (file.byteLength < HEADER_BYTES) throw new ModelLoadError(`checkpoint ${path} is truncated (${file.byteLength} bytes)`);
  if (file.readUInt32LE(0) === VERSIONED_MAGIC) {
    throw new ModelLoadError(`checkpoint ${path} uses llama2.c's versioned export format; only the legacy fp32 layout (export --version 0) is supported`);
  }
  const h = new Int32Array(file.buffer.slice(file.byteOffset, file.byteOffset + HEADER_BYTES));
  const header: Llama2cHeader = {
    dim: h[0], hiddenDim: h[1], nLayers: h[2], nHeads: h[3], nKvHeads: h[4],
    vocabSize: Math.abs(h[5]), seqLen: h[6], sharedClassifier: h[5] > 0,
  };
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen } = header;
  const sane = [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen].every((v) => Number.isInteger(v) && v > 0 && v < 1 << 24);
  if (!sane || dim % nHeads !== 0 || nHeads % nKvHeads !== 0) {
    throw new ModelLoadError(`checkpoint ${path} has an implausible header ${JSON.stringify(header)}: not a legacy llama2.c checkpoint`);
  }
  const headSize = dim / nHeads;
  const kvDim = (dim * nKvHeads) / nHeads;
  const floats = new Float32Array(file.buffer, file.byteOffset + HEADER_BYTES, Math.floor((file.byteLength - HEADER_BYTES) / 4));
  let offset = 0;
  const take = (count: number): Float32Array => {
    if (offset + count > floats.length) throw new ModelLoadError(`checkpoint ${path} is truncated: header promises more weights than the file holds`);
    const view = floats.subarray(offset, offset + count);
    offset += count;
    return view;
  };
  const tokenEmbedding = take(vocabSize * dim);
  const rmsAtt = take(nLayers * dim);
  const wq = take(nLayers * dim * nHeads * headSize);
  const wk = take(nLayers * dim * kvDim);
  const wv = take(nLayers * dim * kvDim);
  const wo = take(nLayers * nHeads * headSize * dim);
  const rmsFfn = take(nLayers * dim);
  const w1 = take(nLayers * dim * hiddenDim);
  const w2 = take(nLayers * hiddenDim * dim);
  const w3 = take(nLayers * dim * hiddenDim);
  const rmsFinal = take(dim);
  take(seqLen * headSize); // legacy freq_cis_real and freq_cis_imag, unused (RoPE is recomputed)
  const wcls = header.sharedClassifier ? null : take(vocabSize * dim);
  if (offset !== floats.length) {
    throw new ModelLoadError(`checkpoint ${path} has ${(floats.length - offset) * 4} unexpected trailing bytes for its header ${JSON.stringify(header)}`);
  }
  const slice = (all: Float32Array, l: number, size: number) => all.subarray(l * size, (l + 1) * size);
  const weights: LlamaWeightSource = {
    tokenEmbedding: () => tokenEmbedding,
    finalNorm: () => rmsFinal,
    classifier: () => wcls,
    layer: (l): LlamaLayerWeights => ({
      attnNorm: slice(rmsAtt, l, dim),
      wq: slice(wq, l, dim * dim),
      wk: slice(wk, l, dim * kvDim),
      wv: slice(wv, l, dim * kvDim),
      wo: slice(wo, l, dim * dim),
      ffnNorm: slice(rmsFfn, l, dim),
      w1: slice(w1, l, dim * hiddenDim),
      w2: slice(w2, l, hiddenDim * dim),
      w3: slice(w3, l, dim * hiddenDim),
    }),
  };
  return { header, weights };
}
