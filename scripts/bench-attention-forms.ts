// Three ways to write the engine's decode-step attention as ONNX nodes, timed over 30 layers of the
// smollm2-135m attention shape (9 query heads, 3 KV heads, head_dim 64; each layer its own cache, so
// the reads come from memory as in a step), S = 1, side by side in one process:
//  - grouped: llama-graph.ts's own groupedAttention (the engine's): the queries of a KV head's group
//    as one [group, hd] matrix against the cache, M = group rows per product;
//  - per-head: each query head its own [1, hd] product against its KV head's cache (broadcast over
//    the group, nothing copied), M = 1, scaled after the product (MLAS's M = 1 kernels want alpha 1);
//  - transposed: scores as K x q^T (the cache is MLAS's A operand, read where it lies instead of
//    packed as B), softmax down the columns, the context as probs^T x V.
// Outputs are compared with the engine's (float32 rounding). The question: is the engine's attention
// (about 2.5-3.5 ms of a ~13 ms q4 batch-1 step here, and most of a batch-16 step at long contexts)
// held back by how it is written?
//
//   node --import tsx scripts/bench-attention-forms.ts [--threads 1] [--shapes 1x320,1x1024,16x320,16x608]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { groupedAttention, groupedAttentionConstants } from '../packages/engine/src/model/llama-graph.ts';
import { GraphBuilder } from '../packages/engine/src/onnx/graph-builder.ts';
import { DataType } from '../packages/engine/src/onnx/onnx-proto.ts';
import { ort } from '../packages/engine/src/runtime/session.ts';
import { timeRuns } from './lib/time-session.ts';
const NH = 9, KVH = 3, HD = 64, G = NH / KVH, L = 30;
const { values } = parseArgs({ options: { threads: { type: 'string', default: '1' }, shapes: { type: 'string', default: '1x320,1x1024,16x320,16x608' } } });
const dir = mkdtempSync(join(tmpdir(), 'pdserve-attention-forms-'));
function build(variant: string): string {
  const path = join(dir, `${variant}.onnx`);
  const g = new GraphBuilder(`${path}.data`);
  const q = g.input('q', DataType.FLOAT, ['batch', 1, NH * HD]);
  const biasPastIn = g.input('attn_bias_past', DataType.FLOAT, ['batch', 'past']);
  const biasNew = g.input('attn_bias_new', DataType.FLOAT, [1, 1]);
  const outs: string[] = [];
  const toBhsd = [0, 2, 1, 3];
  const c = groupedAttentionConstants(g, { nh: NH, kvh: KVH, hd: HD, biasPastIn, biasNew, pastKey: 'past_key.0', tokens: q });
  // [B, nh, S, hd] -> [B, S, nh*hd], as groupedAttention ends.
  const ungroup = (ctx: string) => g.node('Reshape', [g.node('Transpose', [g.node('Reshape', [ctx, c.qUngroupedShape])[0]], 1, { perm: toBhsd })[0], c.attnOutShape])[0];
  // Only the per-head form scales after its products and masks with a 5-d bias.
  const perHead = variant === 'per-head'
    ? { biasPast5: g.node('Unsqueeze', [biasPastIn, g.constInt64([1, 2, 3])])[0], scale: g.constFloat([Math.fround(1 / Math.sqrt(HD))], []) } // bias [B,1,1,1,P]
    : undefined;
  for (let l = 0; l < L; l++) {
    const pastK = g.input(`past_key.${l}`, DataType.FLOAT, ['batch', KVH, 'past', HD]);
    const pastV = g.input(`past_value.${l}`, DataType.FLOAT, ['batch', KVH, 'past', HD]);
    const k = g.input(`k.${l}`, DataType.FLOAT, ['batch', KVH, 1, HD]);
    const v = g.input(`v.${l}`, DataType.FLOAT, ['batch', KVH, 1, HD]);
    const qh = g.node('Transpose', [g.node('Reshape', [q, g.constInt64([0, 0, NH, HD])])[0]], 1, { perm: toBhsd })[0];
    if (variant === 'grouped') {
      const qr = g.node('Reshape', [qh, g.constInt64([0, KVH, -1, HD])])[0];
      outs.push(groupedAttention(g, c, qr, k, v, pastK, pastV));
    } else if (variant === 'transposed') {
      // scores transposed: K [P, hd] x q^T [hd, G]: K is the unpacked A operand
      const qT = g.node('Transpose', [g.node('Reshape', [qh, g.constInt64([0, KVH, -1, HD])])[0]], 1, { perm: [0, 1, 3, 2] })[0]; // [B,kvh,hd,G]
      const biasPastT = g.node('Unsqueeze', [biasPastIn, g.constInt64([1, 3])])[0]; // [B,1,P,1]
      const sPast = g.node('Add', [g.node('FusedMatMul', [pastK, qT], 1, { alpha: c.scale }, 'com.microsoft')[0], biasPastT])[0];
      const sNew = g.node('FusedMatMul', [k, qT], 1, { alpha: c.scale }, 'com.microsoft')[0]; // [B,kvh,1,G]
      const probsT = g.node('Softmax', [g.node('Concat', [sPast, sNew], 1, { axis: -2 })[0]], 1, { axis: -2 })[0];
      const [pp, pn] = g.node('Split', [probsT, c.probSplit], 2, { axis: -2 });
      const ctx = g.node('Add', [g.node('FusedMatMul', [pp, pastV], 1, { transA: 1 }, 'com.microsoft')[0], g.node('FusedMatMul', [pn, v], 1, { transA: 1 }, 'com.microsoft')[0]])[0]; // [B,kvh,G,hd]
      outs.push(ungroup(ctx));
    } else {
      const { biasPast5, scale } = perHead!;
      // per-head: [B, kvh, G, S, hd] against [B, kvh, 1, P, hd]: M = S per product
      const q5 = g.node('Reshape', [qh, g.constInt64([0, KVH, G, -1, HD])])[0];
      const k5 = g.node('Unsqueeze', [pastK, g.constInt64([2])])[0];
      const v5 = g.node('Unsqueeze', [pastV, g.constInt64([2])])[0];
      const kn5 = g.node('Unsqueeze', [k, g.constInt64([2])])[0];
      const vn5 = g.node('Unsqueeze', [v, g.constInt64([2])])[0];
      const mm = (a: string, b: string) => g.node('Mul', [g.node('FusedMatMul', [a, b], 1, { transB: 1, alpha: { float: 1 } }, 'com.microsoft')[0], scale])[0];
      const sPast = g.node('Add', [mm(q5, k5), biasPast5])[0];
      const sNew = g.node('Add', [mm(q5, kn5), biasNew])[0];
      const probs = g.node('Softmax', [g.node('Concat', [sPast, sNew], 1, { axis: -1 })[0]], 1, { axis: -1 })[0];
      const [pp, pn] = g.node('Split', [probs, c.probSplit], 2, { axis: -1 });
      const ctx = g.node('Add', [g.node('MatMul', [pp, v5])[0], g.node('MatMul', [pn, vn5])[0]])[0]; // [B,kvh,G,S,hd]
      outs.push(ungroup(ctx));
    }
  }
  g.node('Sum', outs, ['out']);
  g.output('out', DataType.FLOAT, ['batch', 1, NH * HD]);
  g.save(path, { '': 17, 'com.microsoft': 1 });
  return path;
}
let seed = 1;
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) - 0.5;
const f32 = (d: Float32Array, dims: number[]) => new ort.Tensor('float32', d, dims);
const threads = Number(values.threads);
const sessions: Record<string, ort.InferenceSession> = {};
for (const v of ['grouped', 'per-head', 'transposed']) sessions[v] = await ort.InferenceSession.create(build(v), { intraOpNumThreads: threads, graphOptimizationLevel: 'all', logSeverityLevel: 3 });
console.log(`${threads} thread(s), ${L} layers per run, median (fastest) of 40 runs`);
console.log('| batch x stride | grouped (engine) ms | per-head (M = 1) ms | transposed (K x q^T) ms | max abs diff vs engine |');
console.log('|---|---|---|---|---|');
for (const [B, P] of values.shapes!.split(',').map((x) => x.split('x').map(Number))) {
  const lens = Array.from({ length: B }, () => 64 + Math.floor((rnd() + 0.5) * (P - 65)));
  const bias = new Float32Array(B * P).fill(-1e30);
  lens.forEach((n, b) => bias.fill(0, b * P, b * P + n));
  const feeds: Record<string, InstanceType<typeof ort.Tensor>> = { q: f32(new Float32Array(B * NH * HD).map(rnd), [B, 1, NH * HD]), attn_bias_past: f32(bias, [B, P]), attn_bias_new: f32(new Float32Array(1), [1, 1]) };
  for (let l = 0; l < L; l++) {
    feeds[`past_key.${l}`] = f32(new Float32Array(B * KVH * P * HD).map(rnd), [B, KVH, P, HD]);
    feeds[`past_value.${l}`] = f32(new Float32Array(B * KVH * P * HD).map(rnd), [B, KVH, P, HD]);
    feeds[`k.${l}`] = f32(new Float32Array(B * KVH * HD).map(rnd), [B, KVH, 1, HD]);
    feeds[`v.${l}`] = f32(new Float32Array(B * KVH * HD).map(rnd), [B, KVH, 1, HD]);
  }
  const ref = (await sessions.grouped.run(feeds)).out.data as Float32Array;
  const res: string[] = [];
  let maxDiff = 0;
  for (const [name, s] of Object.entries(sessions)) {
    const o = (await s.run(feeds)).out.data as Float32Array;
    let d = 0; for (let i = 0; i < o.length; i++) d = Math.max(d, Math.abs(o[i] - ref[i]));
    const ts = (await timeRuns(s, feeds, { warmup: 5, reps: 40 })).sort((a, b) => a - b);
    if (!(d < 1e-5)) throw new Error(`${name} disagrees with the engine's attention at ${B}x${P}: max |diff| ${d}`);
    maxDiff = Math.max(maxDiff, d);
    res.push(`${ts[20].toFixed(2)} (${ts[0].toFixed(2)})`);
  }
  console.log(`| ${B} x ${P} | ${res.join(' | ')} | ${maxDiff.toExponential(1)} |`);
}
rmSync(dir, { recursive: true, force: true });
process.exit(0);
