// Writes a llama.cpp GGUF (v3) file from the weights pdserve builds its graph from, so a benchmark
// can run llama.cpp on exactly the same model: F32, or Q8_0 / Q4_0 quantized here following ggml's
// block formats (ggml-common.h: block_q8_0 = fp16 d + 32 int8, d = absmax/127; block_q4_0 = fp16 d +
// 16 bytes, d = (value of largest magnitude)/-8, code = min(15, trunc(x/d + 8.5)), element j in the
// low nibble of byte j and element j+16 in its high nibble). Benchmark tooling only: the product
// never reads or writes GGUF.
import { closeSync, openSync, writeSync } from 'node:fs';
import type { LlamaWeightSource } from '../../packages/engine/src/model/llama-graph.ts';

export type GgufType = 'F32' | 'Q8_0' | 'Q4_0';
const GGML_TYPE: Record<GgufType, number> = { F32: 0, Q4_0: 2, Q8_0: 8 };
const FTYPE: Record<GgufType, number> = { F32: 0, Q4_0: 2, Q8_0: 7 }; // llama_ftype: ALL_F32, MOSTLY_Q4_0, MOSTLY_Q8_0
const ALIGN = 32;
const QK = 32;

export interface GgufModel {
  name: string;
  dim: number; hidden_dim: number; n_layers: number; n_heads: number; n_kv_heads: number;
  vocab_size: number; max_seq_len: number; rope_theta: number; norm_eps: number;
  /** the token pieces and scores of the model's llama2.c tokenizer */
  tokens: string[]; scores: number[]; tokenTypes: number[];
  bos: number; eos: number;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** float32 -> IEEE half bits, round to nearest even. */
export function toHalf(x: number): number {
  f32[0] = x;
  const b = u32[0];
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return sign | h;
}
export function fromHalf(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 0x1f) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Rows of `cols` floats (cols % 32 == 0) in ggml's Q8_0 or Q4_0 blocks. */
export function quantizeGgml(w: Float32Array, type: 'Q8_0' | 'Q4_0'): Uint8Array {
  if (w.length % QK) throw new Error(`${type}: ${w.length} values are not whole blocks of ${QK}`);
  const blocks = w.length / QK;
  const bytes = type === 'Q8_0' ? 34 : 18;
  const out = new Uint8Array(blocks * bytes);
  const view = new DataView(out.buffer);
  for (let b = 0; b < blocks; b++) {
    const x = w.subarray(b * QK, (b + 1) * QK);
    const o = b * bytes;
    if (type === 'Q8_0') {
      let amax = 0;
      for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(x[j]));
      const d = amax / 127;
      const id = d ? 1 / d : 0;
      view.setUint16(o, toHalf(d), true);
      for (let j = 0; j < QK; j++) view.setInt8(o + 2 + j, Math.round(x[j] * id));
    } else {
      let max = 0;
      for (let j = 0; j < QK; j++) if (Math.abs(x[j]) > Math.abs(max)) max = x[j];
      const d = max / -8;
      const id = d ? 1 / d : 0;
      view.setUint16(o, toHalf(d), true);
      for (let j = 0; j < QK / 2; j++) {
        const q0 = Math.min(15, Math.trunc(x[j] * id + 8.5));
        const q1 = Math.min(15, Math.trunc(x[j + QK / 2] * id + 8.5));
        out[o + 2 + j] = q0 | (q1 << 4);
      }
    }
  }
  return out;
}

class Bytes {
  private parts: Buffer[] = [];
  length = 0;
  push(b: Buffer): void { this.parts.push(b); this.length += b.length; }
  u32(v: number): void { const b = Buffer.alloc(4); b.writeUInt32LE(v); this.push(b); }
  i32(v: number): void { const b = Buffer.alloc(4); b.writeInt32LE(v); this.push(b); }
  u64(v: number): void { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); this.push(b); }
  f32(v: number): void { const b = Buffer.alloc(4); b.writeFloatLE(v); this.push(b); }
  str(s: string): void { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.push(b); }
  concat(): Buffer { return Buffer.concat(this.parts); }
}

const T = { UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9 } as const;
type Meta = [string, 'u32' | 'f32' | 'bool' | 'str' | 'strs' | 'f32s' | 'i32s', unknown];

function writeMeta(out: Bytes, [key, kind, v]: Meta): void {
  out.str(key);
  switch (kind) {
    case 'u32': out.u32(T.UINT32); out.u32(v as number); break;
    case 'f32': out.u32(T.FLOAT32); out.f32(v as number); break;
    case 'bool': out.u32(T.BOOL); out.push(Buffer.from([v ? 1 : 0])); break;
    case 'str': out.u32(T.STRING); out.str(v as string); break;
    case 'strs': out.u32(T.ARRAY); out.u32(T.STRING); out.u64((v as string[]).length); for (const s of v as string[]) out.str(s); break;
    case 'f32s': out.u32(T.ARRAY); out.u32(T.FLOAT32); out.u64((v as number[]).length); for (const x of v as number[]) out.f32(x); break;
    case 'i32s': out.u32(T.ARRAY); out.u32(T.INT32); out.u64((v as number[]).length); for (const x of v as number[]) out.i32(x); break;
  }
}

interface TensorOut { name: string; dims: number[]; type: number; data: Uint8Array }

export function writeGguf(path: string, m: GgufModel, weights: LlamaWeightSource, type: GgufType): void {
  const hd = m.dim / m.n_heads;
  const matrix = (name: string, w: Float32Array, rows: number, cols: number): TensorOut => {
    if (w.length !== rows * cols) throw new Error(`${name}: ${w.length} values for [${rows}, ${cols}]`);
    const data = type === 'F32' ? new Uint8Array(w.buffer, w.byteOffset, w.byteLength) : quantizeGgml(w, type);
    return { name, dims: [cols, rows], type: GGML_TYPE[type], data }; // ggml lists the contiguous dim first
  };
  const vector = (name: string, w: Float32Array): TensorOut => ({ name, dims: [w.length], type: 0, data: new Uint8Array(w.buffer, w.byteOffset, w.byteLength) });
  const tensors: TensorOut[] = [];
  tensors.push(matrix('token_embd.weight', weights.tokenEmbedding(), m.vocab_size, m.dim));
  const kvDim = m.n_kv_heads * hd;
  for (let l = 0; l < m.n_layers; l++) {
    const w = weights.layer(l);
    tensors.push(vector(`blk.${l}.attn_norm.weight`, w.attnNorm));
    tensors.push(matrix(`blk.${l}.attn_q.weight`, w.wq, m.n_heads * hd, m.dim));
    tensors.push(matrix(`blk.${l}.attn_k.weight`, w.wk, kvDim, m.dim));
    tensors.push(matrix(`blk.${l}.attn_v.weight`, w.wv, kvDim, m.dim));
    tensors.push(matrix(`blk.${l}.attn_output.weight`, w.wo, m.dim, m.n_heads * hd));
    tensors.push(vector(`blk.${l}.ffn_norm.weight`, w.ffnNorm));
    tensors.push(matrix(`blk.${l}.ffn_gate.weight`, w.w1, m.hidden_dim, m.dim));
    tensors.push(matrix(`blk.${l}.ffn_up.weight`, w.w3, m.hidden_dim, m.dim));
    tensors.push(matrix(`blk.${l}.ffn_down.weight`, w.w2, m.dim, m.hidden_dim));
  }
  tensors.push(vector('output_norm.weight', weights.finalNorm()));
  const cls = weights.classifier();
  if (cls) tensors.push(matrix('output.weight', cls, m.vocab_size, m.dim)); // absent: llama.cpp ties it to token_embd

  const meta: Meta[] = [
    ['general.architecture', 'str', 'llama'],
    ['general.name', 'str', m.name],
    ['general.file_type', 'u32', FTYPE[type]],
    ['general.alignment', 'u32', ALIGN],
    ['llama.context_length', 'u32', m.max_seq_len],
    ['llama.embedding_length', 'u32', m.dim],
    ['llama.block_count', 'u32', m.n_layers],
    ['llama.feed_forward_length', 'u32', m.hidden_dim],
    ['llama.rope.dimension_count', 'u32', hd],
    ['llama.attention.head_count', 'u32', m.n_heads],
    ['llama.attention.head_count_kv', 'u32', m.n_kv_heads],
    ['llama.attention.layer_norm_rms_epsilon', 'f32', m.norm_eps],
    ['llama.rope.freq_base', 'f32', m.rope_theta],
    ['llama.vocab_size', 'u32', m.vocab_size],
    ['tokenizer.ggml.model', 'str', 'llama'],
    ['tokenizer.ggml.tokens', 'strs', m.tokens],
    ['tokenizer.ggml.scores', 'f32s', m.scores],
    ['tokenizer.ggml.token_type', 'i32s', m.tokenTypes],
    ['tokenizer.ggml.bos_token_id', 'u32', m.bos],
    ['tokenizer.ggml.eos_token_id', 'u32', m.eos],
    ['tokenizer.ggml.unknown_token_id', 'u32', 0],
    ['tokenizer.ggml.add_bos_token', 'bool', false],
  ];
  const head = new Bytes();
  head.u32(0x46554747); // "GGUF"
  head.u32(3);
  head.u64(tensors.length);
  head.u64(meta.length);
  for (const kv of meta) writeMeta(head, kv);
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    offsets.push(offset);
    head.str(t.name);
    head.u32(t.dims.length);
    for (const d of t.dims) head.u64(d);
    head.u32(t.type);
    head.u64(offset);
    offset += Math.ceil(t.data.length / ALIGN) * ALIGN;
  }
  const fd = openSync(path, 'w');
  try {
    const h = head.concat();
    writeSync(fd, h);
    const pad = (n: number) => { const p = (ALIGN - (n % ALIGN)) % ALIGN; if (p) writeSync(fd, new Uint8Array(p)); };
    pad(h.length);
    for (const t of tensors) {
      writeSync(fd, t.data);
      pad(t.data.length);
    }
  } finally {
    closeSync(fd);
  }
}

/** The pieces of a llama2.c tokenizer.bin as a GGUF "llama" (SentencePiece) vocabulary. */
export function llama2cVocab(bin: Uint8Array, vocabSize: number): Pick<GgufModel, 'tokens' | 'scores' | 'tokenTypes'> {
  const view = new DataView(bin.buffer, bin.byteOffset, bin.byteLength);
  let at = 4;
  const tokens: string[] = [];
  const scores: number[] = [];
  const tokenTypes: number[] = [];
  for (let id = 0; id < vocabSize; id++) {
    scores.push(view.getFloat32(at, true));
    const len = view.getInt32(at + 4, true);
    const piece = Buffer.from(bin.subarray(at + 8, at + 8 + len)).toString('utf8');
    at += 8 + len;
    tokens.push(piece.replaceAll(' ', '\u2581'));
    // llama_token_type: 1 normal, 2 unknown, 3 control, 6 byte
    tokenTypes.push(id === 0 ? 2 : id <= 2 ? 3 : /^<0x[0-9A-F]{2}>$/.test(piece) ? 6 : 1);
  }
  return { tokens, scores, tokenTypes };
}
