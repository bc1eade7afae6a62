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
// Prints a markdown table, then a JSON blob.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Engine } from '../packages/engine/src/engine.ts';
import { DUMMY_PRESETS, dummyWeights, writeDummyModel } from '../packages/engine/src/model/dummy.ts';
import type { WeightDtype } from '../packages/engine/src/model/weight-storage.ts';
import type { KvSequence } from '../packages/engine/src/kv/slot-cache.ts';
import { llama2cVocab, writeGguf, type GgufType } from './lib/gguf.ts';
import { gemvReadBandwidth, type ReadBandwidth } from './lib/read-bandwidth.ts';

const { values: args } = parseArgs({
  options: {
    'node-llama-cpp': { type: 'string', default: '/tmp/nlc' },
    threads: { type: 'string', default: '1,2' },
    dtypes: { type: 'string', default: 'fp32,q8,q4' },
    one: { type: 'string' }, // internal: "pdserve|llama.cpp:DTYPE:THREADS", run in a child process
  },
});
const threadCounts = args.threads!.split(',').map(Number);
const dtypes = args.dtypes!.split(',') as WeightDtype[];
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
const modelDir = (dtype: WeightDtype) => join(cacheDir, dtype === 'fp32' ? PRESET : `${PRESET}-${dtype}`);
for (const dtype of args.one ? [] : dtypes) {
  if (!existsSync(join(modelDir(dtype), 'config.json'))) {
    log(`building ${PRESET} ${dtype} into ${modelDir(dtype)}`);
    writeDummyModel(PRESET, modelDir(dtype), { maxSeqLen: 2048, dtype });
  }
  const gguf = join(cacheDir, `${PRESET}-${GGUF_TYPE[dtype]}.gguf`);
  if (!existsSync(gguf)) {
    log(`writing ${gguf}`);
    const cfg = JSON.parse(readFileSync(join(modelDir(dtype), 'config.json'), 'utf8'));
    const vocab = llama2cVocab(readFileSync(join(modelDir(dtype), 'tokenizer.bin')), p.vocab_size);
    writeGguf(gguf, { ...cfg, ...vocab, bos: 1, eos: 2 }, dummyWeights(p, cfg.source.seed), GGUF_TYPE[dtype]);
  }
}

// Bytes a decode step reads: every matrix once (classifier included; the embedding contributes one
// row per token) plus each sequence's KV cache.
const hd = p.dim / p.n_heads;
const kvDim = p.n_kv_heads * hd;
const matrixParams = p.n_layers * (p.dim * p.dim + 2 * kvDim * p.dim + p.dim * p.dim + 3 * p.hidden_dim * p.dim) + p.vocab_size * p.dim;
const kvElemsPerToken = p.n_layers * 2 * kvDim;
const BYTES_PER_WEIGHT: Record<string, number> = {
  // pdserve: codes + one float32 scale per 32-weight block
  fp32: 4, q8: 1 + 4 / 32, q4: 0.5 + 4 / 32,
  // llama.cpp: codes + one fp16 scale per 32-weight block
  F32: 4, Q8_0: 34 / 32, Q4_0: 18 / 32,
};
const stepBytes = (type: string, batch: number, kvBytesPerElem: number) => matrixParams * BYTES_PER_WEIGHT[type] + batch * CTX * kvElemsPerToken * kvBytesPerElem;

interface Figures { prefillTokS: number; decode1TokS: number; decode16TokS: number; prefillMs: number[]; decode1Ms: number[]; decode16Ms: number[] }

async function benchPdserve(dtype: WeightDtype, threads: number): Promise<Figures> {
  const engine = await Engine.load(modelDir(dtype), { threads, maxSequences: BATCH, maxModelLen: 1024, prefillChunk: PREFILL });
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
  const [engineName, dtype, t] = args.one.split(':');
  const figures = engineName === 'pdserve' ? await benchPdserve(dtype as WeightDtype, Number(t)) : await benchLlamaCpp(GGUF_TYPE[dtype as WeightDtype], Number(t));
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
const rows: Array<{ threads: number; dtype: WeightDtype; bandwidth: ReadBandwidth; pdserve: Figures; llamaCpp: (Figures & { version?: string }) | null }> = [];
for (const threads of threadCounts) {
  log(`threads ${threads}: measuring read bandwidth (1 GiB ORT GEMV)`);
  const bandwidth = await gemvReadBandwidth(threads);
  log(`  ${bandwidth.gbPerS.toFixed(1)} GB/s`);
  for (const dtype of dtypes) {
    log(`threads ${threads} ${dtype}: pdserve`);
    const pd = runOne(`pdserve:${dtype}:${threads}`);
    log(`  decode ${pd.decode1TokS.toFixed(1)} / batch16 ${pd.decode16TokS.toFixed(1)} / prefill ${pd.prefillTokS.toFixed(1)} tok/s`);
    let lc = null;
    if (haveLlamaCpp) {
      log(`threads ${threads} ${dtype}: llama.cpp ${GGUF_TYPE[dtype]}`);
      lc = runOne(`llama.cpp:${dtype}:${threads}`);
      log(`  decode ${lc.decode1TokS.toFixed(1)} / batch16 ${lc.decode16TokS.toFixed(1)} / prefill ${lc.prefillTokS.toFixed(1)} tok/s`);
    }
    rows.push({ threads, dtype, bandwidth, pdserve: pd, llamaCpp: lc });
  }
}

const f = (x: number, d = 1) => x.toFixed(d);
const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
const ratio = (a: number, b: number | undefined) => (b ? `${f(a / b, 2)}x` : 'n/a');
console.log('| threads | dtype (llama.cpp type) | read GB/s (ORT GEMV) | decode b=1 pdserve | decode b=1 llama.cpp | pdserve / llama.cpp | pdserve share of roofline | llama.cpp share of roofline | decode b=16 pdserve / llama.cpp | prefill 512 pdserve / llama.cpp |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  const bw = r.bandwidth.gbPerS * 1e9;
  const pdRoof = bw / stepBytes(r.dtype, 1, 4); // tok/s the read rate allows: KV float32
  const lcRoof = bw / stepBytes(GGUF_TYPE[r.dtype], 1, 2); // llama.cpp's KV cache is f16
  const lc = r.llamaCpp;
  console.log(`| ${r.threads} | ${r.dtype} (${GGUF_TYPE[r.dtype]}) | ${f(r.bandwidth.gbPerS)} | ${f(r.pdserve.decode1TokS)} tok/s | ${lc ? `${f(lc.decode1TokS)} tok/s` : 'n/a'} | ${ratio(r.pdserve.decode1TokS, lc?.decode1TokS)} | ${pct(r.pdserve.decode1TokS / pdRoof)} of ${f(pdRoof, 0)} | ${lc ? `${pct(lc.decode1TokS / lcRoof)} of ${f(lcRoof, 0)}` : 'n/a'} | ${f(r.pdserve.decode16TokS)} / ${lc ? f(lc.decode16TokS) : 'n/a'} tok/s (${ratio(r.pdserve.decode16TokS, lc?.decode16TokS)}) | ${f(r.pdserve.prefillTokS)} / ${lc ? f(lc.prefillTokS) : 'n/a'} tok/s (${ratio(r.pdserve.prefillTokS, lc?.prefillTokS)}) |`);
}
console.log('\n```json\n' + JSON.stringify({ date: new Date().toISOString(), node: process.version, preset: PRESET, context: CTX, llamaCpp: rows.find((r) => r.llamaCpp)?.llamaCpp?.version ?? null, matrixParams, rows }, null, 2) + '\n```');
process.exit(0);
