// Attention kernels for a decode step, one layer, side by side in one process: the engine's grouped
// attention (FusedMatMul over the cache window, bias-masked, as llama-graph.ts builds it) against
// ONNX Runtime's fused com.microsoft.GroupQueryAttention. GQA reads only each sequence's own length
// (seqlens_k) instead of the whole stride, and with its present outputs pre-allocated on the past
// inputs' buffers it appends the new key/value in place. The question it answers: would moving the
// engine to GQA (issues 8 and 13) make decode steps faster on this CPU?
//
//   node --import tsx scripts/bench-attention.ts [--shapes 1x256,1x1024,16x256,16x608] [--threads 1]
//
// Shapes are batch x stride (positions per slot); each sequence's length is drawn from [64, stride).
// The smollm2-135m attention shape (9 query heads, 3 KV heads, head_dim 64). Before timing, the two
// outputs are compared (they must agree to float32 rounding) and GQA's in-place append is checked.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { groupedAttention, groupedAttentionConstants } from '../packages/engine/src/model/llama-graph.ts';
import { GraphBuilder } from '../packages/engine/src/onnx/graph-builder.ts';
import { DataType } from '../packages/engine/src/onnx/onnx-proto.ts';
import { ort } from '../packages/engine/src/runtime/session.ts';

const { values } = parseArgs({ options: { shapes: { type: 'string', default: '1x256,1x1024,16x256,16x608' }, threads: { type: 'string', default: '1' } } });
const NH = 9, KVH = 3, HD = 64, Q_DIM = NH * HD, KV_DIM = KVH * HD;
const SCALE = { float: Math.fround(1 / Math.sqrt(HD)) };

/** The engine's attention for one layer, from the rotated q/k/v on: llama-graph.ts's own builder, S = 1. Returns its output's name. */
function buildGrouped(path: string): string {
  const g = new GraphBuilder(`${path}.data`);
  const q = g.input('q', DataType.FLOAT, ['batch', 1, Q_DIM]);
  const k = g.input('k', DataType.FLOAT, ['batch', 1, KV_DIM]);
  const v = g.input('v', DataType.FLOAT, ['batch', 1, KV_DIM]);
  const biasPastIn = g.input('attn_bias_past', DataType.FLOAT, ['batch', 'past']);
  const biasNew = g.input('attn_bias_new', DataType.FLOAT, [1, 1]);
  const pastK = g.input('past_key', DataType.FLOAT, ['batch', KVH, 'past', HD]);
  const pastV = g.input('past_value', DataType.FLOAT, ['batch', KVH, 'past', HD]);
  const heads = (n: number) => g.constInt64([0, 0, n, HD]);
  const toBhsd = [0, 2, 1, 3];
  const qr = g.node('Reshape', [g.node('Transpose', [g.node('Reshape', [q, heads(NH)])[0]], 1, { perm: toBhsd })[0], g.constInt64([0, KVH, -1, HD])])[0];
  const kNew = g.node('Transpose', [g.node('Reshape', [k, heads(KVH)])[0]], ['new_key'], { perm: toBhsd })[0];
  const vNew = g.node('Transpose', [g.node('Reshape', [v, heads(KVH)])[0]], ['new_value'], { perm: toBhsd })[0];
  const constants = groupedAttentionConstants(g, { nh: NH, kvh: KVH, hd: HD, biasPastIn, biasNew, pastKey: pastK, tokens: q });
  const out = groupedAttention(g, constants, qr, kNew, vNew, pastK, pastV);
  g.output(out, DataType.FLOAT, ['batch', 1, Q_DIM]);
  g.output('new_key', DataType.FLOAT, ['batch', KVH, 1, HD]);
  g.output('new_value', DataType.FLOAT, ['batch', KVH, 1, HD]);
  g.save(path, { '': 17, 'com.microsoft': 1 });
  return out;
}

function buildGqa(path: string): void {
  const g = new GraphBuilder(`${path}.data`);
  const inputs = [
    g.input('q', DataType.FLOAT, ['batch', 1, Q_DIM]), g.input('k', DataType.FLOAT, ['batch', 1, KV_DIM]), g.input('v', DataType.FLOAT, ['batch', 1, KV_DIM]),
    g.input('past_key', DataType.FLOAT, ['batch', KVH, 'past', HD]), g.input('past_value', DataType.FLOAT, ['batch', KVH, 'past', HD]),
    g.input('seqlens_k', DataType.INT32, ['batch']), g.input('total_sequence_length', DataType.INT32, []),
  ];
  g.node('GroupQueryAttention', inputs, ['out', 'present_key', 'present_value'], { num_heads: NH, kv_num_heads: KVH, scale: SCALE }, 'com.microsoft');
  g.output('out', DataType.FLOAT, ['batch', 1, Q_DIM]);
  g.output('present_key', DataType.FLOAT, ['batch', KVH, 'total', HD]);
  g.output('present_value', DataType.FLOAT, ['batch', KVH, 'total', HD]);
  g.save(path, { '': 17, 'com.microsoft': 1 });
}

async function medianMs(run: () => Promise<unknown>): Promise<number> {
  for (let i = 0; i < 20; i++) await run();
  const ts: number[] = [];
  for (let i = 0; i < 200; i++) {
    const t = performance.now();
    await run();
    ts.push(performance.now() - t);
  }
  return ts.sort((a, b) => a - b)[100];
}

const dir = mkdtempSync(join(tmpdir(), 'pdserve-attention-'));
try {
  const groupedOut = buildGrouped(join(dir, 'grouped.onnx'));
  buildGqa(join(dir, 'gqa.onnx'));
  const threads = Number(values.threads);
  const opts = { intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential' as const };
  const grouped = await ort.InferenceSession.create(join(dir, 'grouped.onnx'), opts);
  const gqa = await ort.InferenceSession.create(join(dir, 'gqa.onnx'), opts);
  let seed = 1;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) - 0.5;
  const f32 = (data: Float32Array, dims: number[]) => new ort.Tensor('float32', data, dims);
  console.log(`| batch | stride | mean length | engine's grouped attention (ms) | GQA, appending in place (ms) | GQA, present copied out (ms) | GQA in place / engine |`);
  console.log('|---|---|---|---|---|---|---|');
  for (const shape of values.shapes!.split(',')) {
    const [B, P] = shape.split('x').map(Number);
    const lens = Array.from({ length: B }, () => 64 + Math.floor((rnd() + 0.5) * (P - 65)));
    const pastK = new Float32Array(B * KVH * P * HD).map(rnd), pastV = new Float32Array(B * KVH * P * HD).map(rnd);
    const q = new Float32Array(B * Q_DIM).map(rnd), k = new Float32Array(B * KV_DIM).map(rnd), v = new Float32Array(B * KV_DIM).map(rnd);
    const bias = new Float32Array(B * P).fill(-1e30);
    lens.forEach((L, b) => bias.fill(0, b * P, b * P + L));
    const groupedFeeds = {
      q: f32(q, [B, 1, Q_DIM]), k: f32(k, [B, 1, KV_DIM]), v: f32(v, [B, 1, KV_DIM]), attn_bias_past: f32(bias, [B, P]),
      attn_bias_new: f32(new Float32Array(1), [1, 1]), past_key: f32(pastK, [B, KVH, P, HD]), past_value: f32(pastV, [B, KVH, P, HD]),
    };
    // GQA's cache: its own copy, which the in-place runs append to (always at the same positions).
    const cacheK = pastK.slice(), cacheV = pastV.slice();
    const gqaFeeds = () => ({
      q: f32(q, [B, 1, Q_DIM]), k: f32(k, [B, 1, KV_DIM]), v: f32(v, [B, 1, KV_DIM]), past_key: f32(cacheK, [B, KVH, P, HD]), past_value: f32(cacheV, [B, KVH, P, HD]),
      seqlens_k: new ort.Tensor('int32', Int32Array.from(lens), [B]), total_sequence_length: new ort.Tensor('int32', Int32Array.of(Math.max(...lens) + 1), []),
    });
    const inPlace = () => ({ out: null, present_key: f32(cacheK, [B, KVH, P, HD]), present_value: f32(cacheV, [B, KVH, P, HD]) }) as unknown as ort.InferenceSession.FetchesType;
    const a = (await grouped.run(groupedFeeds))[groupedOut].data as Float32Array;
    const b = (await gqa.run(gqaFeeds(), inPlace())).out.data as Float32Array;
    let maxDiff = 0;
    for (let i = 0; i < a.length; i++) maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
    if (!(maxDiff < 1e-5)) throw new Error(`the kernels disagree at ${shape}: max |diff| ${maxDiff}`);
    const at = ((0 * KVH) * P + lens[0]) * HD;
    if (cacheK[at] !== k[0] || pastK[at] === k[0]) throw new Error(`GQA did not append in place at ${shape}`);
    const tGrouped = await medianMs(() => grouped.run(groupedFeeds));
    const tInPlace = await medianMs(() => gqa.run(gqaFeeds(), inPlace()));
    const tCopied = await medianMs(() => gqa.run(gqaFeeds()));
    const mean = lens.reduce((s, x) => s + x, 0) / B;
    console.log(`| ${B} | ${P} | ${mean.toFixed(0)} | ${tGrouped.toFixed(3)} | ${tInPlace.toFixed(3)} | ${tCopied.toFixed(3)} | ${(tInPlace / tGrouped).toFixed(2)}x |`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
