// The floor a batch-1 decode step cannot go below inside ONNX Runtime: the step's weight matrix
// products alone (every layer's q/k/v, output, gate/up and down projections and the classifier of a
// preset's shape), built with the engine's own WeightStorage (the nodes the engine's graph uses:
// MatMul/Gemm at fp32, MatMulNBits at q8/q4 with its block size and accuracy level), chained so ORT
// runs them one after another as in a step. No attention, norms, RoPE or cache: what this measures is
// what ORT's kernels (MLAS) take to multiply by the weights once, per dtype and block size.
//
//   node --import tsx scripts/bench-weight-matmuls.ts [--preset smollm2-135m] [--threads 1] [--dtypes fp32,q8,q4,q4-b64,q4-b128] [--reps 100]
//
// Per variant: median and fastest ms per step, the bytes the weights take, what that is in GB/s and
// in billions of weights a second, and the decode rate (tok/s) the matrix products alone would allow.
// Compare that ceiling with a full engine step (scripts/bench-peer.ts) and with llama.cpp's.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { DUMMY_PRESETS, randomFill } from '../packages/engine/src/model/dummy.ts';
import { WeightStorage, parseWeightDtype, type WeightFormat } from '../packages/engine/src/model/weight-storage.ts';
import { GraphBuilder } from '../packages/engine/src/onnx/graph-builder.ts';
import { DataType } from '../packages/engine/src/onnx/onnx-proto.ts';
import { createSession, ort } from '../packages/engine/src/runtime/session.ts';
import { timeRuns } from './lib/time-session.ts';

const { values: args } = parseArgs({
  options: {
    preset: { type: 'string', default: 'smollm2-135m' },
    threads: { type: 'string', default: '1' },
    dtypes: { type: 'string', default: 'fp32,q8,q4,q4-b64,q4-b128' },
    reps: { type: 'string', default: '100' },
  },
});
const p = DUMMY_PRESETS[args.preset!];
if (!p) throw new Error(`unknown preset ${args.preset}`);
const threads = Number(args.threads);
const reps = Number(args.reps);
const hd = p.dim / p.n_heads;
const qkvOut = p.dim + 2 * p.n_kv_heads * hd;

/** "q4-b64" -> { dtype: q4, blockSize: 64 }. */
function formatOf(variant: string): WeightFormat {
  const [dtype, block] = variant.split('-b');
  return { dtype: parseWeightDtype(dtype), ...(block ? { blockSize: Number(block) } : {}) };
}

/** Bytes of one [out, in] matrix at a format: codes plus one float32 scale per block. */
function matrixBytes(f: WeightFormat, out: number, inDim: number): number {
  if (f.dtype === 'fp32') return out * inDim * 4;
  const block = f.blockSize ?? 32;
  return out * (Math.ceil(inDim / block) * ((block * (f.dtype === 'q8' ? 8 : 4)) / 8) + Math.ceil(inDim / block) * 4);
}

// Weights in [-0.05, 0.05): the values do not change what the kernels read or compute.
const rng = { s: 1 };
const randomMatrix = (n: number) => randomFill(n, 0.05, rng);

async function measure(variant: string): Promise<{ variant: string; medianMs: number; bestMs: number; bytes: number; params: number }> {
  const format = formatOf(variant);
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-wmm-'));
  try {
    const g = new GraphBuilder(join(dir, 'm.onnx.data'));
    const store = new WeightStorage(g, format);
    let x = g.input('x', DataType.FLOAT, [1, p.dim]);
    let bytes = 0;
    let params = 0;
    // The first `keep` features of y: the next product's input (Slice is a ~2 us kernel, 60 a step).
    const narrow = (y: string, keep: number) => g.node('Slice', [y, g.constInt64([0]), g.constInt64([keep]), g.constInt64([1])])[0];
    const linear = (name: string, input: string, out: number, inDim: number) => {
      bytes += matrixBytes(format, out, inDim);
      params += out * inDim;
      return store.linear(name, input, randomMatrix(out * inDim), out, inDim);
    };
    for (let l = 0; l < p.n_layers; l++) {
      const qkv = linear(`l${l}.wqkv`, x, qkvOut, p.dim);
      const o = linear(`l${l}.wo`, narrow(qkv, p.dim), p.dim, p.dim);
      const h13 = linear(`l${l}.w13`, o, 2 * p.hidden_dim, p.dim);
      x = linear(`l${l}.w2`, narrow(h13, p.hidden_dim), p.dim, p.hidden_dim);
    }
    bytes += matrixBytes(format, p.vocab_size, p.dim);
    params += p.vocab_size * p.dim;
    store.logits('classifier', x, randomMatrix(p.vocab_size * p.dim), p.vocab_size, p.dim, 'logits');
    g.output('logits', DataType.FLOAT, [1, p.vocab_size]);
    g.save(join(dir, 'm.onnx'), { '': 17, 'com.microsoft': 1 });
    const session = await createSession(join(dir, 'm.onnx'), { threads });
    const feeds = { x: new ort.Tensor('float32', new Float32Array(p.dim).fill(0.1), [1, p.dim]) };
    const ms = await timeRuns(session, feeds, { warmup: 10, reps });
    await session.release();
    ms.sort((a, b) => a - b);
    return { variant, medianMs: ms[ms.length >> 1], bestMs: ms[0], bytes, params };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const rows = [];
for (const v of args.dtypes!.split(',')) rows.push(await measure(v));
console.log(`${args.preset}, batch 1, ${threads} thread(s), ${reps} runs each: the weight matrix products of one decode step alone`);
console.log('| weights | ms per step (median / fastest) | MB read | GB/s (median) | G weights/s (median) | tok/s the products alone allow (median / fastest) |');
console.log('|---|---|---|---|---|---|');
for (const r of rows) {
  console.log(`| ${r.variant} | ${r.medianMs.toFixed(2)} / ${r.bestMs.toFixed(2)} | ${(r.bytes / 1e6).toFixed(1)} | ${(r.bytes / r.medianMs / 1e6).toFixed(1)} | ${(r.params / r.medianMs / 1e6).toFixed(1)} | ${(1000 / r.medianMs).toFixed(0)} / ${(1000 / r.bestMs).toFixed(0)} |`);
}
console.log('\n```json\n' + JSON.stringify({ date: new Date().toISOString(), preset: args.preset, threads, reps, rows }, null, 2) + '\n```');
