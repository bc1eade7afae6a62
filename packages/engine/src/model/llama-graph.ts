// Builds pdserve's Llama decoder graph, following llama2.c's run.c forward pass step by step:
// embedding -> per layer [RMSNorm -> QKV (+ bias) -> RoPE -> grouped-query attention ->
// output projection -> residual -> RMSNorm -> SwiGLU FFN -> residual] -> RMSNorm -> classifier.
// Hugging Face checkpoints differ only in options that the config and weights carry: the RoPE
// feature layout (`rope_layout`), frequency scaling (`rope_scaling`), q/k/v biases (Qwen2).
//
// I/O convention `pdserve-kv-in/1`:
//   input_ids int64 [B, S], position_ids int64 [B, S]
//   past_key.L / past_value.L  float [B, kv_heads, P, head_dim]   the cache, read in place
//   attn_bias_past float [B, P]   0 where a past position belongs to the sequence, -1e30 elsewhere
//   attn_bias_new  float [S, S]   causal mask among the new tokens (0 on and below the diagonal)
//   logit_rows int64 [N]          rows of the flattened [B*S] token axis whose logits are wanted
// outputs logits float [N, vocab] and new_key.L / new_value.L float [B, kv_heads, S, head_dim]:
// only the new tokens' keys (after RoPE) and values come back, and the caller writes them into its
// cache. The past is an input only, so onnxruntime-node never copies the cache out of a step (it
// copies every fetched output into a fresh JS buffer, which made in-place GQA caches cost a full
// cache copy per step).
import { GraphBuilder } from '../onnx/graph-builder.ts';
import { DataType } from '../onnx/onnx-proto.ts';
import type { ModelConfig } from './config.ts';
import { WeightStorage, type WeightFormat } from './weight-storage.ts';

/** Weights in llama2.c's layout: linear layers are [out, in], row-major. */
export interface LlamaLayerWeights {
  attnNorm: Float32Array;
  wq: Float32Array;
  wk: Float32Array;
  wv: Float32Array;
  wo: Float32Array;
  ffnNorm: Float32Array;
  w1: Float32Array;
  w2: Float32Array;
  w3: Float32Array;
  /** Biases of the q/k/v projections (Qwen2); absent: none. */
  bq?: Float32Array;
  bk?: Float32Array;
  bv?: Float32Array;
}

export interface LlamaWeightSource {
  tokenEmbedding(): Float32Array; // [vocab, dim]
  layer(index: number): LlamaLayerWeights;
  finalNorm(): Float32Array;
  /** [vocab, dim], or null when the classifier shares the token embedding. */
  classifier(): Float32Array | null;
}

export const ONNX_FILE = 'model.onnx';
export const ONNX_DATA_FILE = 'model.onnx.data';

/** Concatenates [out_k, in] matrices along `out`: one matrix whose product gives all parts at once. */
function concatRows(parts: Float32Array[]): Float32Array {
  const into = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    into.set(p, at);
    at += p.length;
  }
  return into;
}

/** RoPE frequencies, in float32 as run.c computes them (freq = 1 / theta^(2i/hd)), then scaled. */
export function ropeFrequencies(cfg: Pick<ModelConfig, 'head_dim' | 'rope_theta' | 'rope_scaling'>): Float32Array {
  const half = cfg.head_dim / 2;
  const f = Math.fround;
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) freqs[i] = f(1 / f(Math.pow(cfg.rope_theta, f(f(2 * i) / cfg.head_dim))));
  const s = cfg.rope_scaling;
  if (!s) return freqs;
  if (s.rope_type === 'linear') return freqs.map((x) => x / s.factor);
  // transformers' _compute_llama3_parameters.
  const lowWavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const highWavelen = s.original_max_position_embeddings / s.high_freq_factor;
  return freqs.map((x) => {
    const wavelen = (2 * Math.PI) / x;
    if (wavelen < highWavelen) return x;
    if (wavelen > lowWavelen) return x / s.factor;
    const smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    return (1 - smooth) * (x / s.factor) + smooth * x;
  });
}

/** cos/sin of position x frequency for every position, in float32 as run.c computes them. */
export function ropeTables(cfg: ModelConfig): { cos: Float32Array; sin: Float32Array } {
  const half = cfg.head_dim / 2;
  const cos = new Float32Array(cfg.max_seq_len * half);
  const sin = new Float32Array(cfg.max_seq_len * half);
  const f = Math.fround;
  const freqs = ropeFrequencies(cfg);
  for (let pos = 0; pos < cfg.max_seq_len; pos++) {
    for (let i = 0; i < half; i++) {
      const val = f(pos * freqs[i]);
      cos[pos * half + i] = f(Math.cos(val));
      sin[pos * half + i] = f(Math.sin(val));
    }
  }
  return { cos, sin };
}

/** What every layer's grouped attention shares, made once per graph (groupedAttentionConstants). */
export interface GroupedAttentionConstants {
  /** attn_bias_past as [B, 1, 1, P]. */
  biasPast: string;
  /** attn_bias_new repeated per group member: [group*S, S]. */
  biasNewGrouped: string;
  /** [P, S]: where the softmax's columns split into past and new. */
  probSplit: string;
  /** [B, nh, S, hd] and [B, S, nh*hd]: the context's shapes on the way out. */
  qUngroupedShape: string;
  attnOutShape: string;
  scale: { float: number };
}

/**
 * The constants of groupedAttention: the masks in the shapes the grouped scores take, the split of
 * their columns (P from `pastKey`'s dim 2, S from `tokens`' dim 1) and the scale 1/sqrt(hd).
 */
export function groupedAttentionConstants(
  g: GraphBuilder, o: { nh: number; kvh: number; hd: number; biasPastIn: string; biasNew: string; pastKey: string; tokens: string },
): GroupedAttentionConstants {
  const qUngroupedShape = g.constInt64([0, o.nh, -1, o.hd]); // [B, nh, S, hd]
  const attnOutShape = g.constInt64([0, 0, o.nh * o.hd]);
  const biasPast = g.node('Unsqueeze', [o.biasPastIn, g.constInt64([1, 2])])[0]; // [B, 1, 1, P]
  const scale = { float: Math.fround(1 / Math.sqrt(o.hd)) };
  // Rows of the grouped scores are (group member, token): the [S, S] causal mask repeats per member.
  const biasNewGrouped = g.node('Tile', [o.biasNew, g.constInt64([o.nh / o.kvh, 1])])[0];
  const pastLen = g.node('Shape', [o.pastKey], 1, { start: 2, end: 3 })[0];
  const newLen = g.node('Shape', [o.tokens], 1, { start: 1, end: 2 })[0];
  const probSplit = g.node('Concat', [pastLen, newLen], 1, { axis: 0 })[0];
  return { biasPast, biasNewGrouped, probSplit, qUngroupedShape, attnOutShape, scale };
}

/**
 * One layer's attention over the cache read in place: the queries of a KV head's group
 * (`qr`, [B, kvh, group*S, hd]) score against that head's past keys and the new ones in one matrix
 * product each, one softmax over both, then the values; returns [B, S, nh*hd].
 */
export function groupedAttention(
  g: GraphBuilder, c: GroupedAttentionConstants,
  qr: string, kNew: string, vNew: string, pastK: string, pastV: string,
): string {
  const sPast = g.node('Add', [g.node('FusedMatMul', [qr, pastK], 1, { transB: 1, alpha: c.scale }, 'com.microsoft')[0], c.biasPast])[0];
  const sNewRaw = g.node('FusedMatMul', [qr, kNew], 1, { transB: 1, alpha: c.scale }, 'com.microsoft')[0];
  const sNew = g.node('Add', [sNewRaw, c.biasNewGrouped])[0];
  const probs = g.node('Softmax', [g.node('Concat', [sPast, sNew], 1, { axis: -1 })[0]], 1, { axis: -1 })[0];
  const [pPast, pNew] = g.node('Split', [probs, c.probSplit], 2, { axis: -1 });
  const ctx = g.node('Add', [g.node('MatMul', [pPast, pastV])[0], g.node('MatMul', [pNew, vNew])[0]])[0];
  const ctxHeads = g.node('Transpose', [g.node('Reshape', [ctx, c.qUngroupedShape])[0]], 1, { perm: [0, 2, 1, 3] })[0];
  return g.node('Reshape', [ctxHeads, c.attnOutShape])[0];
}

export function buildLlamaGraph(cfg: ModelConfig, weights: LlamaWeightSource, modelPath: string, dataPath: string, format: WeightFormat = { dtype: 'fp32' }): void {
  const g = new GraphBuilder(dataPath);
  // Every weight matrix goes through `store`: the dtype decides how it is stored and multiplied.
  const store = new WeightStorage(g, format);
  const { dim, n_heads: nh, n_kv_heads: kvh, head_dim: hd, hidden_dim: hidden, vocab_size: vocab } = cfg;
  const qDim = nh * hd;
  const kvDim = kvh * hd;
  const eps = { float: cfg.norm_eps };

  const inputIds = g.input('input_ids', DataType.INT64, ['batch', 'seq']);
  const positionIds = g.input('position_ids', DataType.INT64, ['batch', 'seq']);
  const biasPastIn = g.input('attn_bias_past', DataType.FLOAT, ['batch', 'past']);
  const biasNew = g.input('attn_bias_new', DataType.FLOAT, ['seq', 'seq']);
  const logitRows = g.input('logit_rows', DataType.INT64, ['rows']);

  const embedding = store.embedding('tok_embeddings', inputIds, weights.tokenEmbedding(), vocab, dim);
  let x = embedding.rows;

  // RoPE: ORT's fused RotaryEmbedding (com.microsoft) over [B, S, heads*hd], one kernel per q/k
  // instead of the ~9 small ones (Reshape, Split, four Mul, Sub, Add, Concat) that spelled it out:
  // at batch 1 those small kernels were about half of a quantized decode step. `interleaved` 1
  // rotates adjacent pairs (llama2.c's layout), 0 the members hd/2 apart (HF's rotate-half). Its
  // arithmetic is run.c's: v0*c - v1*s, v1*c + v0*s, with the tables computed below in float32.
  const interleaved = (cfg.rope_layout ?? 'adjacent-pairs') === 'rotate-half' ? 0 : 1;
  const tables = ropeTables(cfg);
  const cosTable = g.weight('rope_cos', tables.cos, [cfg.max_seq_len, hd / 2]);
  const sinTable = g.weight('rope_sin', tables.sin, [cfg.max_seq_len, hd / 2]);
  const rope = (t: string, heads: number): string =>
    g.node('RotaryEmbedding', [t, positionIds, cosTable, sinTable], 1, { interleaved, num_heads: heads }, 'com.microsoft')[0];

  // Attention shapes. Query heads are grouped by the KV head they share (run.c: kv head = h / group),
  // so scores for a whole group come from one matrix product against that KV head.
  const headsShape = (heads: number) => g.constInt64([0, 0, heads, hd]);
  const qHeads = headsShape(nh);
  const kvHeads = headsShape(kvh);
  const toBhsd = [0, 2, 1, 3];
  const qGroupedShape = g.constInt64([0, kvh, -1, hd]); // [B, kvh, group*S, hd]
  const attention = groupedAttentionConstants(g, { nh, kvh, hd, biasPastIn, biasNew, pastKey: 'past_key.0', tokens: inputIds });

  const qkvSplit = g.constInt64([qDim, kvDim, kvDim]);
  const ffnSplit = g.constInt64([hidden, hidden]);
  for (let l = 0; l < cfg.n_layers; l++) {
    const w = weights.layer(l);
    const attnNorm = g.weight(`layers.${l}.attention_norm`, w.attnNorm, [dim]);
    const xn = g.node('SimplifiedLayerNormalization', [x, attnNorm], 1, { axis: -1, epsilon: eps })[0];
    let qkv = store.linear(`layers.${l}.wqkv`, xn, concatRows([w.wq, w.wk, w.wv]), qDim + 2 * kvDim, dim);
    if (w.bq || w.bk || w.bv) {
      const bias = new Float32Array(qDim + 2 * kvDim);
      if (w.bq) bias.set(w.bq, 0);
      if (w.bk) bias.set(w.bk, qDim);
      if (w.bv) bias.set(w.bv, qDim + kvDim);
      qkv = g.node('Add', [qkv, g.weight(`layers.${l}.bqkv`, bias, [qDim + 2 * kvDim])])[0];
    }
    const [q, k, v] = g.node('Split', [qkv, qkvSplit], 3, { axis: -1 });
    const qr = g.node('Reshape', [g.node('Transpose', [g.node('Reshape', [rope(q, nh), qHeads])[0]], 1, { perm: toBhsd })[0], qGroupedShape])[0];
    const kNew = g.node('Transpose', [g.node('Reshape', [rope(k, kvh), kvHeads])[0]], [`new_key.${l}`], { perm: toBhsd })[0];
    const vNew = g.node('Transpose', [g.node('Reshape', [v, kvHeads])[0]], [`new_value.${l}`], { perm: toBhsd })[0];
    g.output(kNew, DataType.FLOAT, ['batch', kvh, 'seq', hd]);
    g.output(vNew, DataType.FLOAT, ['batch', kvh, 'seq', hd]);
    const pastK = g.input(`past_key.${l}`, DataType.FLOAT, ['batch', kvh, 'past', hd]);
    const pastV = g.input(`past_value.${l}`, DataType.FLOAT, ['batch', kvh, 'past', hd]);
    const attn = groupedAttention(g, attention, qr, kNew, vNew, pastK, pastV);
    x = g.node('Add', [x, store.linear(`layers.${l}.wo`, attn, w.wo, dim, qDim)])[0];

    const ffnNorm = g.weight(`layers.${l}.ffn_norm`, w.ffnNorm, [dim]);
    const hn = g.node('SimplifiedLayerNormalization', [x, ffnNorm], 1, { axis: -1, epsilon: eps })[0];
    const h13 = store.linear(`layers.${l}.w13`, hn, concatRows([w.w1, w.w3]), 2 * hidden, dim);
    const [h1, h3] = g.node('Split', [h13, ffnSplit], 2, { axis: -1 });
    // SiLU(h1) * h3, in run.c's order: (h1 * sigmoid(h1)) * h3.
    const gated = g.node('Mul', [g.node('Mul', [h1, g.node('Sigmoid', [h1])[0]])[0], h3])[0];
    x = g.node('Add', [x, store.linear(`layers.${l}.w2`, gated, w.w2, dim, hidden)])[0];
  }

  // Only the requested rows reach the classifier: a prefill needs one row, not the whole prompt.
  const rows = g.node('Gather', [g.node('Reshape', [x, g.constInt64([-1, dim])])[0], logitRows], 1, { axis: 0 })[0];
  const finalNorm = g.weight('norm', weights.finalNorm(), [dim]);
  const xf = g.node('SimplifiedLayerNormalization', [rows, finalNorm], 1, { axis: -1, epsilon: eps })[0];
  const cls = weights.classifier();
  if (cls) store.logits('output', xf, cls, vocab, dim, 'logits');
  else embedding.tiedLogits(xf, 'logits');
  g.output('logits', DataType.FLOAT, ['rows', vocab]);

  g.save(modelPath, { '': 17, 'com.microsoft': 1 }, { 'pdserve.io': 'pdserve-kv-in/1' });
}
