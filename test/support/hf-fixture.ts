// Test fixture: a llama2.c checkpoint re-exported as a Hugging Face model folder, the way
// transformers' convert_llama_weights_to_hf.py lays one out: safetensors weights under HF names,
// q/k rows permuted from Meta's adjacent-pair RoPE layout to rotate-half, config.json,
// generation_config.json, and a tokenizer.json + tokenizer_config.json that reproduce the llama2.c
// tokenizer (SentencePiece BPE: merges in score order, byte fallback when the vocabulary has byte
// pieces). Converting such a folder with `--from hf` must give the llama2.c goldens exactly.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readLlama2cCheckpoint } from '../../packages/engine/src/model/llama2c.ts';
import { writeSafetensors, type TensorToWrite } from '../../packages/engine/src/model/safetensors.ts';
import { loadLlama2cTokenizer, type Llama2cTokenizer } from '../../packages/engine/src/tokenizer/llama2c.ts';
import { sharedPath } from './shared.ts';

export interface HfExportOptions {
  checkpoint: string;
  tokenizer: string;
  out: string;
  /** Storage dtype of the weights (default F32). */
  dtype?: 'F32' | 'F16' | 'BF16';
  /** Split the weights over this many shards with a model.safetensors.index.json (default: one file). */
  shards?: number;
  /** A chat template for tokenizer_config.json. */
  chatTemplate?: string;
}

/** The shared models, by name: their llama2.c files. */
export const LLAMA2C_MODELS: Record<string, { checkpoint: string; tokenizer: string }> = {
  stories260K: { checkpoint: 'stories260K.bin', tokenizer: 'tok512.bin' },
  babyllama105: { checkpoint: 'model.bin', tokenizer: 'tok105.bin' },
};

export function exportSharedModelToHf(name: string, out: string, opts: Omit<HfExportOptions, 'checkpoint' | 'tokenizer' | 'out'> = {}): void {
  const m = LLAMA2C_MODELS[name];
  exportLlama2cToHf({ checkpoint: sharedPath('models', name, m.checkpoint), tokenizer: sharedPath('models', name, m.tokenizer), out, ...opts });
}

/**
 * convert_llama_weights_to_hf.py's `permute`: w.view(heads, rows/heads/2, 2, cols).transpose(1, 2).
 * Row 2i + j of each head (pair i, member j) moves to row j*hd/2 + i.
 */
export function permuteRotateHalf(w: Float32Array, heads: number, rows: number, cols: number): Float32Array {
  const hd = rows / heads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < hd / 2; i++) {
      for (let j = 0; j < 2; j++) {
        const from = (h * hd + 2 * i + j) * cols;
        const to = (h * hd + j * (hd / 2) + i) * cols;
        out.set(w.subarray(from, from + cols), to);
      }
    }
  }
  return out;
}

export function exportLlama2cToHf(opts: HfExportOptions): void {
  const { header: h, weights } = readLlama2cCheckpoint(opts.checkpoint);
  const dtype = opts.dtype ?? 'F32';
  const hd = h.dim / h.nHeads;
  const kvDim = h.nKvHeads * hd;
  const tensors: TensorToWrite[] = [];
  const add = (name: string, shape: number[], data: Float32Array) => tensors.push({ name, shape, data, dtype });
  add('model.embed_tokens.weight', [h.vocabSize, h.dim], weights.tokenEmbedding());
  for (let l = 0; l < h.nLayers; l++) {
    const w = weights.layer(l);
    const p = `model.layers.${l}.`;
    add(`${p}input_layernorm.weight`, [h.dim], w.attnNorm);
    add(`${p}self_attn.q_proj.weight`, [h.dim, h.dim], permuteRotateHalf(w.wq, h.nHeads, h.dim, h.dim));
    add(`${p}self_attn.k_proj.weight`, [kvDim, h.dim], permuteRotateHalf(w.wk, h.nKvHeads, kvDim, h.dim));
    add(`${p}self_attn.v_proj.weight`, [kvDim, h.dim], w.wv);
    add(`${p}self_attn.o_proj.weight`, [h.dim, h.dim], w.wo);
    add(`${p}post_attention_layernorm.weight`, [h.dim], w.ffnNorm);
    add(`${p}mlp.gate_proj.weight`, [h.hiddenDim, h.dim], w.w1);
    add(`${p}mlp.down_proj.weight`, [h.dim, h.hiddenDim], w.w2);
    add(`${p}mlp.up_proj.weight`, [h.hiddenDim, h.dim], w.w3);
  }
  add('model.norm.weight', [h.dim], weights.finalNorm());
  const cls = weights.classifier();
  if (cls) add('lm_head.weight', [h.vocabSize, h.dim], cls);

  mkdirSync(opts.out, { recursive: true });
  const shards = opts.shards ?? 1;
  if (shards <= 1) {
    writeSafetensors(join(opts.out, 'model.safetensors'), tensors);
  } else {
    const weightMap: Record<string, string> = {};
    const per = Math.ceil(tensors.length / shards);
    let total = 0;
    for (let s = 0; s < shards; s++) {
      const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
      const part = tensors.slice(s * per, (s + 1) * per);
      writeSafetensors(join(opts.out, file), part);
      for (const t of part) {
        weightMap[t.name] = file;
        total += t.data.length * (dtype === 'F32' ? 4 : 2);
      }
    }
    writeJson(join(opts.out, 'model.safetensors.index.json'), { metadata: { total_size: total }, weight_map: weightMap });
  }

  writeJson(join(opts.out, 'config.json'), {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: h.dim,
    intermediate_size: h.hiddenDim,
    num_hidden_layers: h.nLayers,
    num_attention_heads: h.nHeads,
    num_key_value_heads: h.nKvHeads,
    vocab_size: h.vocabSize,
    max_position_embeddings: h.seqLen,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    rope_scaling: null,
    hidden_act: 'silu',
    tie_word_embeddings: h.sharedClassifier,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype],
  });
  // run.c ends a story when the model emits BOS, so BOS is an end-of-sequence id here too.
  writeJson(join(opts.out, 'generation_config.json'), { bos_token_id: 1, eos_token_id: [1, 2] });
  const tok = loadLlama2cTokenizer(opts.tokenizer, { vocabSize: h.vocabSize });
  writeJson(join(opts.out, 'tokenizer.json'), llama2cTokenizerJson(tok));
  writeJson(join(opts.out, 'tokenizer_config.json'), {
    bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', add_bos_token: true, add_eos_token: false,
    model_max_length: h.seqLen, tokenizer_class: 'LlamaTokenizer',
    ...(opts.chatTemplate !== undefined ? { chat_template: opts.chatTemplate } : {}),
  });
}

function writeJson(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value, null, 2) + '\n');
}

const SPECIAL = ['<unk>', '<s>', '</s>'];
const BYTE_PIECE = /^<0x[0-9A-F]{2}>$/;

/**
 * A tokenizer.json equal to the llama2.c tokenizer, as transformers' LlamaConverter builds one from
 * a SentencePiece model: every split of a piece into two pieces is a merge, ranked by the piece's
 * score (run.c merges the best-scoring pair first; these vocabularies have no tied scores).
 */
export function llama2cTokenizerJson(tok: Llama2cTokenizer): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  const piece = (id: number) => (id < SPECIAL.length ? SPECIAL[id] : tok.pieces[id].replaceAll(' ', '▁'));
  for (let id = 0; id < tok.vocabSize; id++) {
    const p = piece(id);
    if (p in vocab) throw new Error(`piece ${JSON.stringify(p)} appears twice (ids ${vocab[p]} and ${id})`);
    vocab[p] = id;
  }
  const mergeable = (p: string) => !SPECIAL.includes(p) && !BYTE_PIECE.test(p);
  const merges: Array<{ l: string; r: string; score: number; lid: number; rid: number }> = [];
  for (const [p, id] of Object.entries(vocab)) {
    if (!mergeable(p)) continue;
    const chars = [...p];
    for (let k = 1; k < chars.length; k++) {
      const l = chars.slice(0, k).join('');
      const r = chars.slice(k).join('');
      if (l in vocab && r in vocab && mergeable(l) && mergeable(r)) merges.push({ l, r, score: tok.scores[id], lid: vocab[l], rid: vocab[r] });
    }
  }
  merges.sort((a, b) => b.score - a.score || a.lid - b.lid || a.rid - b.rid);
  const special = (id: number) => ({ id, content: SPECIAL[id], single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0), special(1), special(2)],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: tok.hasBytePieces, ignore_merges: false, vocab,
      merges: merges.map((m) => [m.l, m.r]),
    },
  };
}
