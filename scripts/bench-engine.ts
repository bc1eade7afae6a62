// Engine benchmark: measures this machine's physical limits (memory read bandwidth, single-thread fp32
// MatMul rate through ONNX Runtime) and the engine's prefill/decode throughput in one process, and
// sets each engine number against its roofline.
//
//   node --import tsx scripts/bench-engine.ts [--model DIR] [--threads 1] [--bandwidth-mib 1024]
//
// Without --model it builds (or reuses) the smollm2-135m dummy model in .cache/bench-models/.
// --bandwidth-mib sizes the GEMV that measures the read bandwidth (1 GiB by default, well past every
// cache; the smoke test passes a small one).
// Prints a markdown table, then a JSON blob. Every timing is the median of several repetitions.
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../packages/engine/src/engine.ts';
import { kvBytesPerToken, readModelConfig, type ModelConfig } from '../packages/engine/src/model/config.ts';
import { ONNX_DATA_FILE } from '../packages/engine/src/model/llama-graph.ts';
import { writeDummyModel } from '../packages/engine/src/model/dummy.ts';
import { GraphBuilder } from '../packages/engine/src/onnx/graph-builder.ts';
import { DataType } from '../packages/engine/src/onnx/onnx-proto.ts';
import type { KvSequence } from '../packages/engine/src/kv/slot-cache.ts';
import type { LlamaRunner } from '../packages/engine/src/runner/llama-runner.ts';
import { createSession, ort } from '../packages/engine/src/runtime/session.ts';
import { gemvReadBandwidth } from './lib/read-bandwidth.ts';
import { timeRuns } from './lib/time-session.ts';

const MiB = 1024 * 1024;
const { values: args } = parseArgs({
  options: { model: { type: 'string' }, threads: { type: 'string', default: '1' }, 'bandwidth-mib': { type: 'string', default: '1024' } },
});
const threads = Number(args.threads);
if (!Number.isInteger(threads) || threads < 0) throw new Error(`--threads must be a non-negative integer, got ${args.threads}`);

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const log = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);

// ---------------------------------------------------------------------------------------------
// Model
let modelDir: string;
let modelBuiltThisRun = false;
if (args.model) {
  modelDir = resolve(args.model);
} else {
  modelDir = resolve('.cache/bench-models/smollm2-135m');
  if (!existsSync(join(modelDir, 'config.json'))) {
    log(`building dummy smollm2-135m into ${modelDir}`);
    mkdirSync(modelDir, { recursive: true });
    writeDummyModel('smollm2-135m', modelDir, { maxSeqLen: 2048 });
    modelBuiltThisRun = true;
  }
}
const cfg: ModelConfig = readModelConfig(modelDir);
const dataPath = join(modelDir, cfg.onnx.file === 'model.onnx' ? ONNX_DATA_FILE : `${cfg.onnx.file}.data`); // external weights
const weightBytes = (existsSync(dataPath) ? statSync(dataPath).size : 0) + statSync(join(modelDir, cfg.onnx.file)).size;

// FLOP accounting (multiply-add = 2 FLOPs), Llama architecture:
//   per layer matmul params = dim*dim (wq) + 2*kvDim*dim (wk, wv) + dim*dim (wo) + 3*hidden*dim (w1, w2, w3)
//   per token: 2 * layerParams * layers
//   attention, per layer per token attending to c positions: QK^T 2*heads*headDim*c + PV 2*heads*headDim*c
//   classifier: 2 * vocab * dim, once per logits row the graph computes (one per prompt / per sequence)
const kvDim = cfg.n_kv_heads * cfg.head_dim;
const qDim = cfg.n_heads * cfg.head_dim;
const layerParams = cfg.dim * qDim + 2 * kvDim * cfg.dim + qDim * cfg.dim + 3 * cfg.hidden_dim * cfg.dim;
const matmulParams = layerParams * cfg.n_layers;
const classifierParams = cfg.vocab_size * cfg.dim;
// Bytes of weights a decode step reads, at the model's dtype: every matrix once (the classifier
// included) plus the norms; the embedding table contributes one row per token, not counted. q8/q4
// store one float32 scale per block of `block_size` weights.
const bytesPerWeight = cfg.dtype === 'fp32' ? 4 : ((cfg.dtype === 'q8' ? 8 : 4) / 8 + 4 / Number(cfg.quantization?.block_size ?? 32));
const decodeWeightBytes = (matmulParams + classifierParams) * bytesPerWeight;
const attnFlops = (ctx: number) => 4 * cfg.n_heads * cfg.head_dim * ctx * cfg.n_layers;
/** Useful FLOPs of a prefill of L tokens from an empty cache (causal: token p attends to p+1 positions). */
const prefillFlops = (L: number) => 2 * matmulParams * L + 4 * qDim * cfg.n_layers * (L * (L + 1)) / 2 + 2 * classifierParams;
/** Useful FLOPs of a decode step: B rows each attending to ctx+1 positions (its past plus itself). */
const decodeFlops = (B: number, ctx: number) => B * (2 * matmulParams + attnFlops(ctx + 1) + 2 * classifierParams);

let rngState = 0x2545f491;
const randomTokens = (n: number): number[] => {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    rngState ^= rngState << 13; rngState >>>= 0;
    rngState ^= rngState >>> 17;
    rngState ^= rngState << 5; rngState >>>= 0;
    out.push(3 + (rngState % (cfg.vocab_size - 3)));
  }
  return out;
};

// ---------------------------------------------------------------------------------------------
// Engine: prefill and decode. Runs first so the RSS reading is not inflated by the bandwidth test's
// buffers (the physical limits are measured afterwards, in the same process).
log(`loading engine from ${modelDir} (threads ${threads})`);
const rssBeforeLoad = process.memoryUsage().rss;
const tLoad = performance.now();
const engine = await Engine.load(modelDir, { threads, maxSequences: 16, maxModelLen: 2048, prefillChunk: 512 });
const loadMs = performance.now() - tLoad;
const rssAfterLoad = process.memoryUsage().rss;
const runner = engine.runner as LlamaRunner;

const PREFILL_LENGTHS = [128, 512];
const PREFILL_REPS = 3;
const prefill: Record<number, { ms: number[]; tokensPerS: number }> = {};
{
  // warm-up (first run pays one-time allocation and kernel setup costs)
  const s = engine.newSequence('warm');
  await engine.prefill(s, randomTokens(32));
  engine.release(s);
}
for (const L of PREFILL_LENGTHS) {
  const ms: number[] = [];
  for (let r = 0; r < PREFILL_REPS; r++) {
    const toks = randomTokens(L);
    const s = engine.newSequence(`p${L}-${r}`);
    const t0 = performance.now();
    await engine.prefill(s, toks);
    ms.push(performance.now() - t0);
    engine.release(s);
  }
  prefill[L] = { ms, tokensPerS: L / (median(ms) / 1000) };
  log(`prefill ${L}: ${ms.map((x) => x.toFixed(0)).join(', ')} ms`);
}

const CTX = 256;
const DECODE_BATCHES = [1, 4, 16];
const DECODE_STEPS = 10;
const DECODE_REPS = 3;
log(`prefilling 16 sequences to ${CTX} tokens`);
const seqs: KvSequence[] = [];
const ctxPrefillMs: number[] = [];
for (let i = 0; i < 16; i++) {
  const s = engine.newSequence(`d${i}`);
  const t0 = performance.now();
  await engine.prefill(s, randomTokens(CTX));
  ctxPrefillMs.push(performance.now() - t0);
  seqs.push(s);
}
interface DecodeResult { stepMs: number[]; msPerStep: number; tokensPerS: number; stride: number; timings: { assembleMs: number; runMs: number; writebackMs: number }[] }
const decode: Record<number, DecodeResult> = {};
for (const B of DECODE_BATCHES) {
  const batchSeqs = seqs.slice(0, B); // slots 0..B-1: consecutive, so no compaction moves
  const stepMs: number[] = [];
  const timings: DecodeResult['timings'] = [];
  for (let r = 0; r < DECODE_REPS; r++) {
    // Rewind to context CTX: positions past seq.length are masked, so the cache is as if freshly prefilled.
    for (const s of batchSeqs) s.length = CTX;
    await engine.decode(batchSeqs.map((seq) => ({ seq, token: randomTokens(1)[0] }))); // warm-up step
    for (let k = 0; k < DECODE_STEPS; k++) {
      const batch = batchSeqs.map((seq) => ({ seq, token: randomTokens(1)[0] }));
      const t0 = performance.now();
      await engine.decode(batch);
      stepMs.push(performance.now() - t0);
      timings.push({ ...runner.lastTimings });
    }
  }
  const msPerStep = median(stepMs);
  decode[B] = { stepMs, msPerStep, tokensPerS: B / (msPerStep / 1000), stride: runner.cache.stride, timings };
  log(`decode batch ${B}: median ${msPerStep.toFixed(1)} ms/step (stride ${runner.cache.stride})`);
}
const t16 = decode[16].timings;
const overheadFrac = median(t16.map((t) => (t.assembleMs + t.writebackMs) / (t.assembleMs + t.runMs + t.writebackMs)));
const assembleMs16 = median(t16.map((t) => t.assembleMs));
const runMs16 = median(t16.map((t) => t.runMs));
const writebackMs16 = median(t16.map((t) => t.writebackMs));

const rssAfterRun = process.memoryUsage().rss;
const kvCapacityBytes = runner.capacity().bytes;
const rssBudget = weightBytes + kvCapacityBytes + 300 * MiB;

// ---------------------------------------------------------------------------------------------
// Physical limits: memory read bandwidth, as ORT's own 1 GiB fp32 GEMV reads it at this thread
// count (scripts/lib/read-bandwidth.ts). A Float32Array.set copy, the reference before, read slower
// than the engine's own decode steps and reported them above 100% of "roofline".
const GEMV_K = 8192;
const gemvN = Math.max(1, Math.round((Number(args['bandwidth-mib']) * MiB) / (4 * GEMV_K)));
const gemvLabel = `[1x${GEMV_K}]x[${GEMV_K}x${gemvN}] (${((GEMV_K * gemvN * 4) / MiB).toFixed(0)} MiB)`;
log(`measuring read bandwidth (ORT GEMV ${gemvLabel})`);
const bandwidth = await gemvReadBandwidth(threads, { K: GEMV_K, N: gemvN });

// Physical limits: ORT fp32 MatMul rate.
log('measuring ORT MatMul throughput');
const tmp = mkdtempSync(join(tmpdir(), 'bench-matmul-'));
async function matmulGflops(M: number, K: number, Nn: number, reps: number): Promise<{ gflops: number; bestGflops: number; ms: number[] }> {
  const dir = mkdtempSync(join(tmp, `mm${M}-`));
  const g = new GraphBuilder(join(dir, 'mm.onnx.data'));
  const x = g.input('x', DataType.FLOAT, [M, K]);
  const w = new Float32Array(K * Nn);
  for (let i = 0; i < w.length; i++) w[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
  const wn = g.weight('w', w, [K, Nn]);
  g.node('MatMul', [x, wn], ['y']);
  g.output('y', DataType.FLOAT, [M, Nn]);
  g.save(join(dir, 'mm.onnx'), { '': 17 });
  const session = await createSession(join(dir, 'mm.onnx'), { threads });
  const xs = new Float32Array(M * K).map((_, i) => ((i * 40503) % 997) / 997 - 0.5);
  const feeds = { x: new ort.Tensor('float32', xs, [M, K]) };
  const ms = await timeRuns(session, feeds, { warmup: 3, reps });
  await session.release();
  return { gflops: (2 * M * K * Nn) / (median(ms) / 1000) / 1e9, bestGflops: (2 * M * K * Nn) / (Math.min(...ms) / 1000) / 1e9, ms };
}
const mm = await matmulGflops(512, 576, 1536, 25);
const mm16 = await matmulGflops(16, 576, 1536, 50); // decode-batch-shaped GEMM, for context
rmSync(tmp, { recursive: true, force: true });
const flopRate = mm.gflops * 1e9;
const bwBytes = bandwidth.gbPerS * 1e9;

// ---------------------------------------------------------------------------------------------
// Rooflines
const prefillRows = PREFILL_LENGTHS.map((L) => {
  const roof = L / (prefillFlops(L) / flopRate);
  return { L, tokensPerS: prefill[L].tokensPerS, ms: median(prefill[L].ms), roofTokensPerS: roof, ratio: prefill[L].tokensPerS / roof, gflops: prefillFlops(L) / (median(prefill[L].ms) / 1000) / 1e9 };
});
const kvTok = kvBytesPerToken(cfg);
const decodeRows = DECODE_BATCHES.map((B) => {
  const d = decode[B];
  const bytes = decodeWeightBytes + B * CTX * kvTok;
  const memMs = (bytes / bwBytes) * 1000;
  const compMs = (decodeFlops(B, CTX) / flopRate) * 1000;
  const roofMs = Math.max(memMs, compMs);
  return {
    B, msPerStep: d.msPerStep, tokensPerS: d.tokensPerS, bytesPerStep: bytes, memRoofMs: memMs, computeRoofMs: compMs,
    binding: memMs >= compMs ? 'memory' : 'compute', roofMs, ratio: roofMs / d.msPerStep, stride: d.stride,
    kvBytesAsExecuted: B * d.stride * kvTok,
  };
});

// ---------------------------------------------------------------------------------------------
// Report
const f = (x: number, d = 1) => x.toFixed(d);
const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
const lines: string[] = [];
lines.push(`| Measurement | Result | Roofline | Actual / roofline |`);
lines.push(`|---|---|---|---|`);
lines.push(`| Memory read bandwidth, ORT fp32 GEMV ${gemvLabel}, ${threads} thread(s) | ${f(bandwidth.gbPerS, 2)} GB/s (median; best ${f(bandwidth.bestGbPerS, 2)}) | | |`);
lines.push(`| ORT MatMul fp32 [512x576]x[576x1536], ${threads} thread(s) | ${f(mm.gflops)} GFLOP/s (median; best ${f(mm.bestGflops)}) | | |`);
lines.push(`| ORT MatMul fp32 [16x576]x[576x1536] (for context) | ${f(mm16.gflops)} GFLOP/s (median; best ${f(mm16.bestGflops)}) | | |`);
for (const p of prefillRows) {
  lines.push(`| Prefill ${p.L} tokens (${f(p.ms, 0)} ms, ${f(p.gflops)} useful GFLOP/s) | ${f(p.tokensPerS)} tok/s | ${f(p.roofTokensPerS)} tok/s (compute) | ${pct(p.ratio)} |`);
}
for (const d of decodeRows) {
  lines.push(`| Decode batch ${d.B}, context ${CTX} | ${f(d.tokensPerS)} tok/s, ${f(d.msPerStep)} ms/step | ${f(d.roofMs)} ms/step (${d.binding}; memory ${f(d.memRoofMs)} ms for ${f(d.bytesPerStep / MiB, 0)} MiB, compute ${f(d.computeRoofMs)} ms) | ${pct(d.ratio)} |`);
}
lines.push(`| Decode batch 16 step breakdown (assemble / run / writeback) | ${f(assembleMs16, 2)} / ${f(runMs16, 1)} / ${f(writebackMs16, 2)} ms; assemble+writeback ${pct(overheadFrac)} of step | | |`);
lines.push(`| Resident memory after load + runs | ${f(rssAfterRun / MiB, 0)} MiB | ${f(rssBudget / MiB, 0)} MiB (weights ${f(weightBytes / MiB, 0)} + KV ${f(kvCapacityBytes / MiB, 0)} + 300) | ${pct(rssAfterRun / rssBudget)} |`);
console.log(lines.join('\n'));

const result = {
  date: new Date().toISOString(),
  node: process.version,
  threads,
  model: { dir: modelDir, name: cfg.name, builtThisRun: modelBuiltThisRun, weightBytes, matmulParams, classifierParams, layerParams },
  machine: { readBandwidth: bandwidth, matmul512: mm, matmul16: mm16 },
  engine: { loadMs, rssBeforeLoadMiB: rssBeforeLoad / MiB, rssAfterLoadMiB: rssAfterLoad / MiB },
  prefill: prefillRows.map((p) => ({ ...p, samplesMs: prefill[p.L].ms, flops: prefillFlops(p.L) })),
  ctxPrefillMs,
  decode: decodeRows.map((d) => ({ ...d, flopsPerStep: decodeFlops(d.B, CTX), samplesMs: decode[d.B].stepMs })),
  decodeBatch16Breakdown: { assembleMs: assembleMs16, runMs: runMs16, writebackMs: writebackMs16, overheadFraction: overheadFrac },
  memory: { rssMiB: rssAfterRun / MiB, budgetMiB: rssBudget / MiB, weightMiB: weightBytes / MiB, kvCapacityMiB: kvCapacityBytes / MiB, ratio: rssAfterRun / rssBudget },
};
console.log('\n```json\n' + JSON.stringify(result, null, 2) + '\n```');
