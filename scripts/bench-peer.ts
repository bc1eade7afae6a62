// pdserve beside llama.cpp on the same weights, at every weight dtype: decode at batch 1 and 16
// (context 256) and a 512-token prefill, on 1 and 2 threads, each decode figure also as a share of
// the machine's memory roofline at that dtype.
//
//   /work/tools/heavy node --import tsx scripts/bench-peer.ts [--node-llama-cpp /tmp/nlc] [--threads 1,2] [--dtypes fp32,q8,q4]
//
// The peer is node-llama-cpp (prebuilt llama.cpp) installed OUTSIDE this repository, never a
// dependency of the product: `mkdir /tmp/nlc && cd /tmp/nlc && npm i -E node-llama-cpp@3.21.1`.
// Both engines run the smollm2-135m dummy (seed 0): pdserve from its model directory at each dtype,
// llama.cpp from GGUF files this script writes from the same weights (scripts/lib/gguf.ts: F32, and
// Q8_0 / Q4_0 quantized by ggml's block formats). Roofline: bytes a decode step must read (weights
// at the dtype's bytes per weight + the KV cache at the engine's KV dtype) over the read bandwidth
// of ORT's own 1 GiB GEMV at that thread count (scripts/lib/read-bandwidth.ts).
// The machine is shared: each figure is the median over --rounds rounds (pdserve and llama.cpp
// alternate within a round), and the read reference is the fastest GEMV run seen at that thread
// count (what the machine can read; a contended run only reads slower).
// Prints a markdown table, then a JSON blob.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../packages/engine/src/engine.ts';
import { DUMMY_PRESETS, dummyWeights, writeDummyModel } from '../packages/engine/src/model/dummy.ts';
import { parseWeightDtype, type WeightDtype } from '../packages/engine/src/model/weight-storage.ts';
import type { KvSequence } from '../packages/engine/src/kv/slot-cache.ts';
import { llama2cVocab, writeGguf, type GgufType } from './lib/gguf.ts';
import { gemvReadBandwidth, type ReadBandwidth } from './lib/read-bandwidth.ts';

const { values: args } = parseArgs({
  options: {
    'node-llama-cpp': { type: 'string', default: '/tmp/nlc' },
    threads: { type: 'string', default: '1,2' },
    dtypes: { type: 'string', default: 'fp32,q8,q4' },
    rounds: { type: 'string', default: '2' },
    one: { type: 'string' }, // internal: "pdserve|llama.cpp:DTYPE:THREADS", run in a child process
  },
});
const threadCounts = args.threads!.split(',').map(Number);
// A dtype, or dtype-bN for a quantization block of N weights (default 32), e.g. q8-b16.
type Variant = string;
const dtypes: Variant[] = args.dtypes!.split(',');
const dtypeOf = (v: Variant) => parseWeightDtype(v.split('-b')[0]);
const blockOf = (v: Variant) => (v.includes('-b') ? Number(v.split('-b')[1]) : undefined);
const GGUF_TYPE: Record<WeightDtype, GgufType> = { fp32: 'F32', q8: 'Q8_0', q4: 'Q4_0' };
const PRESET = 'smollm2-135m';
const p = DUMMY_PRESETS[PRESET];
const CTX = 256;
const PREFILL = 512;
const BATCH = 16;
const STEPS = 8;
const REPS = 3;
const log = (msg: string) => process.stderr.write(`[bench-peer] ${msg}\n`);
const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };

let rng = 0x2545f491;
const randomTokens = (n: number): number[] => Array.from({ length: n }, () => {
  rng ^= rng << 13; rng >>>= 0; rng ^= rng >>> 17; rng ^= rng << 5; rng >>>= 0;
  return 3 + (rng % 256); // byte pieces: valid for both tokenizers' vocabularies
});

// ---------------------------------------------------------------------------------------------
// Models: one pdserve directory per dtype, one GGUF per llama.cpp type, all from seed 0.
const cacheDir = resolve('.cache/bench-models');
mkdirSync(cacheDir, { recursive: true });
const modelDir = (v: Variant) => join(cacheDir, v === 'fp32' ? PRESET : `${PRESET}-${v}`);
for (const v of args.one ? [] : dtypes) {
  if (!existsSync(join(modelDir(v), 'config.json'))) {
    log(`building ${PRESET} ${v} into ${modelDir(v)}`);
    writeDummyModel(PRESET, modelDir(v), { maxSeqLen: 2048, dtype: dtypeOf(v), blockSize: blockOf(v) });
  }
  const type = GGUF_TYPE[dtypeOf(v)];
  const gguf = join(cacheDir, `${PRESET}-${type}.gguf`);
  if (!existsSync(gguf)) {
    log(`writing ${gguf}`);
    const cfg = JSON.parse(readFileSync(join(modelDir(v), 'config.json'), 'utf8'));
    const vocab = llama2cVocab(readFileSync(join(modelDir(v), 'tokenizer.bin')), p.vocab_size);
    writeGguf(gguf, { ...cfg, ...vocab, bos: 1, eos: 2 }, dummyWeights(p, cfg.source.seed), type);
  }
}

// Bytes a decode step reads: every matrix once (classifier included; the embedding contributes one
// row per token) plus each sequence's KV cache.
const hd = p.dim / p.n_heads;
const kvDim = p.n_kv_heads * hd;
const matrixParams = p.n_layers * (p.dim * p.dim + 2 * kvDim * p.dim + p.dim * p.dim + 3 * p.hidden_dim * p.dim) + p.vocab_size * p.dim;
const kvElemsPerToken = p.n_layers * 2 * kvDim;
// pdserve: codes + one float32 scale per block; llama.cpp: codes + one fp16 scale per 32 weights.
const pdserveBytesPerWeight = (v: Variant) => (dtypeOf(v) === 'fp32' ? 4 : (dtypeOf(v) === 'q8' ? 1 : 0.5) + 4 / (blockOf(v) ?? 32));
const GGUF_BYTES_PER_WEIGHT: Record<GgufType, number> = { F32: 4, Q8_0: 34 / 32, Q4_0: 18 / 32 };
const stepBytes = (bytesPerWeight: number, batch: number, kvBytesPerElem: number) => matrixParams * bytesPerWeight + batch * CTX * kvElemsPerToken * kvBytesPerElem;

interface Figures { version?: string; rssMiB?: number; prefillTokS: number; decode1TokS: number; decode16TokS: number; prefillMs: number[]; decode1Ms: number[]; decode16Ms: number[] }

async function benchPdserve(v: Variant, threads: number): Promise<Figures> {
  const engine = await Engine.load(modelDir(v), { threads, maxSequences: BATCH, maxModelLen: 1024, prefillChunk: PREFILL });
  try {
    const warm = engine.newSequence('warm');
    await engine.prefill(warm, randomTokens(32));
    engine.release(warm);
    const prefillMs: number[] = [];
    for (let r = 0; r < REPS; r++) {
      const s = engine.newSequence(`p${r}`);
      const toks = randomTokens(PREFILL);
      const t0 = performance.now();
      await engine.prefill(s, toks);
      prefillMs.push(performance.now() - t0);
      engine.release(s);
    }
    const seqs: KvSequence[] = [];
    for (let i = 0; i < BATCH; i++) {
      const s = engine.newSequence(`d${i}`);
      await engine.prefill(s, randomTokens(CTX));
      seqs.push(s);
    }
    const decode = async (B: number): Promise<number[]> => {
      const ms: number[] = [];
      for (let r = 0; r < REPS; r++) {
        for (const s of seqs) s.length = CTX; // rewind: positions past length are masked
        await engine.decode(seqs.slice(0, B).map((seq) => ({ seq, token: 5 })));
        for (let k = 0; k < STEPS; k++) {
          const batch = seqs.slice(0, B).map((seq) => ({ seq, token: randomTokens(1)[0] }));
          const t0 = performance.now();
          await engine.decode(batch);
          ms.push(performance.now() - t0);
        }
      }
      return ms;
    };
    const decode1Ms = await decode(1);
    const decode16Ms = await decode(BATCH);
    return { prefillMs, decode1Ms, decode16Ms, prefillTokS: PREFILL / (median(prefillMs) / 1000), decode1TokS: 1000 / median(decode1Ms), decode16TokS: BATCH * 1000 / median(decode16Ms) };
  } finally {
    // the process exits after one measurement: nothing to release
  }
}

// node-llama-cpp, loaded from outside the repository (its types are not available here).
const nlcEntry = join(resolve(args['node-llama-cpp']!), 'node_modules/node-llama-cpp/dist/index.js');
const haveLlamaCpp = existsSync(nlcEntry);
if (!haveLlamaCpp && !args.one) log(`node-llama-cpp not found at ${nlcEntry}: llama.cpp columns are skipped`);

async function benchLlamaCpp(type: GgufType, threads: number): Promise<Figures & { version: string }> {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const nlc: any = await import(nlcEntry);
  const llama = await nlc.getLlama({ gpu: false, build: 'never', logLevel: nlc.LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: join(cacheDir, `${PRESET}-${type}.gguf`), gpuLayers: 0 });
  const context = await model.createContext({ contextSize: BATCH * 1024, sequences: BATCH, batchSize: PREFILL, threads });
  try {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const seqs: any[] = Array.from({ length: BATCH }, () => context.getSequence());
    await seqs[0].evaluateWithoutGeneratingNewTokens(randomTokens(32));
    await seqs[0].clearHistory();
    const prefillMs: number[] = [];
    for (let r = 0; r < REPS; r++) {
      const toks = randomTokens(PREFILL);
      const t0 = performance.now();
      await seqs[0].evaluateWithoutGeneratingNewTokens(toks);
      prefillMs.push(performance.now() - t0);
      await seqs[0].clearHistory();
    }
    for (const s of seqs) await s.evaluateWithoutGeneratingNewTokens(randomTokens(CTX));
    // One decode step per call: each sequence feeds one token and asks for the next one.
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const step = (B: number) => Promise.all(seqs.slice(0, B).map((s: any) => s.controlledEvaluate([[randomTokens(1)[0], { generateNext: { token: true } }]])));
    const decode = async (B: number): Promise<number[]> => {
      const ms: number[] = [];
      for (let r = 0; r < REPS; r++) {
        for (const s of seqs) if (s.nextTokenIndex > CTX) await s.eraseContextTokenRanges([{ start: CTX, end: s.nextTokenIndex }]);
        await step(B);
        for (let k = 0; k < STEPS; k++) {
          const t0 = performance.now();
          await step(B);
          ms.push(performance.now() - t0);
        }
      }
      return ms;
    };
    const decode1Ms = await decode(1);
    const decode16Ms = await decode(BATCH);
    return { version: llama.llamaCppRelease.release as string, prefillMs, decode1Ms, decode16Ms, prefillTokS: PREFILL / (median(prefillMs) / 1000), decode1TokS: 1000 / median(decode1Ms), decode16TokS: BATCH * 1000 / median(decode16Ms) };
  } finally {
    await context.dispose();
    await model.dispose();
  }
}

if (args.one) {
  const [engineName, v, t] = args.one.split(':');
  const figures = engineName === 'pdserve' ? await benchPdserve(v, Number(t)) : await benchLlamaCpp(GGUF_TYPE[dtypeOf(v)], Number(t));
  process.stdout.write(`${JSON.stringify({ ...figures, rssMiB: process.memoryUsage().rss / 2 ** 20 })}\n`);
  process.exit(0);
}

/** Each measurement in a fresh process: no engine's memory or threads linger into the next. */
function runOne(spec: string): Figures & { version?: string; rssMiB: number } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--one', spec, '--node-llama-cpp', args['node-llama-cpp']!], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`${spec} failed (exit ${r.status})`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

// ---------------------------------------------------------------------------------------------
const rounds = Number(args.rounds);
type Row = { threads: number; dtype: Variant; bandwidth: ReadBandwidth[]; bestGbPerS: number; pdserve: Figures[]; llamaCpp: Figures[] };
const rows: Row[] = [];
for (const threads of threadCounts) for (const dtype of dtypes) rows.push({ threads, dtype, bandwidth: [], bestGbPerS: 0, pdserve: [], llamaCpp: [] });
for (let round = 0; round < rounds; round++) {
  for (const threads of threadCounts) {
    log(`round ${round + 1}, threads ${threads}: read bandwidth (1 GiB ORT GEMV)`);
    const bw = await gemvReadBandwidth(threads);
    log(`  ${bw.gbPerS.toFixed(1)} GB/s (best ${bw.bestGbPerS.toFixed(1)})`);
    for (const dtype of dtypes) {
      const row = rows.find((r) => r.threads === threads && r.dtype === dtype)!;
      row.bandwidth.push(bw);
      const order = round % 2 === 0 ? ['pdserve', 'llama.cpp'] : ['llama.cpp', 'pdserve'];
      for (const engineName of order) {
        if (engineName === 'llama.cpp' && !haveLlamaCpp) continue;
        log(`round ${round + 1}, threads ${threads}, ${dtype}: ${engineName}`);
        const fig = runOne(`${engineName}:${dtype}:${threads}`);
        log(`  decode ${fig.decode1TokS.toFixed(1)} / batch16 ${fig.decode16TokS.toFixed(1)} / prefill ${fig.prefillTokS.toFixed(1)} tok/s`);
        (engineName === 'pdserve' ? row.pdserve : row.llamaCpp).push(fig);
      }
    }
  }
}
for (const r of rows) r.bestGbPerS = Math.max(...r.bandwidth.map((b) => b.bestGbPerS));
const med = (figs: Figures[], key: 'decode1TokS' | 'decode16TokS' | 'prefillTokS') => (figs.length ? median(figs.map((x) => x[key])) : 0);

const f = (x: number, d = 1) => x.toFixed(d);
const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
const ratio = (a: number, b: number | undefined) => (b ? `${f(a / b, 2)}x` : 'n/a');
console.log('| threads | dtype (llama.cpp type) | read GB/s (fastest ORT GEMV) | decode b=1 pdserve | decode b=1 llama.cpp | pdserve / llama.cpp | pdserve share of roofline | llama.cpp share of roofline | decode b=16 pdserve / llama.cpp | prefill 512 pdserve / llama.cpp |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  const bw = r.bestGbPerS * 1e9;
  const pdRoof = bw / stepBytes(pdserveBytesPerWeight(r.dtype), 1, 4); // tok/s the read rate allows: KV float32
  const lcRoof = bw / stepBytes(GGUF_BYTES_PER_WEIGHT[GGUF_TYPE[dtypeOf(r.dtype)]], 1, 2); // llama.cpp's KV cache is f16
  const pd = { d1: med(r.pdserve, 'decode1TokS'), d16: med(r.pdserve, 'decode16TokS'), p: med(r.pdserve, 'prefillTokS') };
  const lc = r.llamaCpp.length ? { d1: med(r.llamaCpp, 'decode1TokS'), d16: med(r.llamaCpp, 'decode16TokS'), p: med(r.llamaCpp, 'prefillTokS') } : null;
  console.log(`| ${r.threads} | ${r.dtype} (${GGUF_TYPE[dtypeOf(r.dtype)]}) | ${f(r.bestGbPerS)} | ${f(pd.d1)} tok/s | ${lc ? `${f(lc.d1)} tok/s` : 'n/a'} | ${ratio(pd.d1, lc?.d1)} | ${pct(pd.d1 / pdRoof)} of ${f(pdRoof, 0)} | ${lc ? `${pct(lc.d1 / lcRoof)} of ${f(lcRoof, 0)}` : 'n/a'} | ${f(pd.d16)} / ${lc ? f(lc.d16) : 'n/a'} tok/s (${ratio(pd.d16, lc?.d16)}) | ${f(pd.p)} / ${lc ? f(lc.p) : 'n/a'} tok/s (${ratio(pd.p, lc?.p)}) |`);
}
console.log('\n```json\n' + JSON.stringify({ date: new Date().toISOString(), node: process.version, preset: PRESET, context: CTX, rounds, llamaCpp: rows.find((r) => r.llamaCpp.length)?.llamaCpp[0]?.version ?? null, matrixParams, rows }, null, 2) + '\n```');
process.exit(0);
