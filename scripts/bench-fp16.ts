// Why pdserve offers no fp16 weights on CPU: a [1 x 2048] x [2048 x 32768] GEMV (256 MiB of fp32
// weights) three ways, each in a fresh process: fp32 weights; fp16 weights Cast to fp32 in the graph
// (storage only); and a float16 MatMul (activations cast to fp16). Reports ms per run and the
// resident memory the session added. ORT 1.30's CPU provider has no x86 float16 MatMul kernel and
// folds the Casts at load, so both fp16 forms keep float32 weights in memory.
//
//   /work/tools/heavy node --import tsx scripts/bench-fp16.ts [--threads 1] [--n 32768]
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { GraphBuilder } from '../packages/engine/src/onnx/graph-builder.ts';
import { DataType } from '../packages/engine/src/onnx/onnx-proto.ts';
import { createSession, ort } from '../packages/engine/src/runtime/session.ts';

const { values: args } = parseArgs({ options: { threads: { type: 'string', default: '1' }, mode: { type: 'string' }, n: { type: 'string', default: '32768' } } });
const MODES = ['fp32', 'fp16-storage', 'fp16-matmul'] as const;
const K = 2048;
const N = Number(args.n); // output columns: 32768 is 256 MiB of fp32 weights (a smoke test passes fewer)

if (args.mode) {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-fp16-'));
  try {
    const g = new GraphBuilder(join(dir, 'm.onnx.data'));
    const x = g.input('x', DataType.FLOAT, [1, K]);
    const half = () => g.weightOf('w', DataType.FLOAT16, new Uint16Array(K * N).fill(0x3c00), [K, N]); // 1.0
    if (args.mode === 'fp32') g.node('MatMul', [x, g.weight('w', new Float32Array(K * N).fill(1), [K, N])], ['y']);
    else if (args.mode === 'fp16-storage') g.node('MatMul', [x, g.node('Cast', [half()], 1, { to: DataType.FLOAT })[0]], ['y']);
    else g.node('Cast', [g.node('MatMul', [g.node('Cast', [x], 1, { to: DataType.FLOAT16 })[0], half()])[0]], ['y'], { to: DataType.FLOAT });
    g.output('y', DataType.FLOAT, [1, N]);
    g.save(join(dir, 'm.onnx'), { '': 17 });
    // The weight arrays built above are garbage now; collect them so RSS counts only the session.
    (globalThis as { gc?: () => void }).gc?.();
    await new Promise((r) => setTimeout(r, 100));
    const rss0 = process.memoryUsage().rss;
    const s = await createSession(join(dir, 'm.onnx'), { threads: Number(args.threads) });
    const feeds = { x: new ort.Tensor('float32', new Float32Array(K).fill(0.5), [1, K]) };
    for (let i = 0; i < 3; i++) await s.run(feeds);
    const ms: number[] = [];
    for (let i = 0; i < 15; i++) { const t0 = performance.now(); await s.run(feeds); ms.push(performance.now() - t0); }
    ms.sort((a, b) => a - b);
    console.log(JSON.stringify({ mode: args.mode, msPerRun: ms[ms.length >> 1], sessionRssMiB: (process.memoryUsage().rss - rss0) / 2 ** 20 }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  process.exit(0);
}

console.log(`| weights (${args.threads} thread(s)) | ms per [1x${K}]x[${K}x${N}] GEMV | resident memory the session added |`);
console.log('|---|---|---|');
for (const mode of MODES) {
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', fileURLToPath(import.meta.url), '--mode', mode, '--threads', args.threads!, '--n', String(N)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${mode}: ${r.stderr}`);
  const m = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
  console.log(`| ${mode} | ${m.msPerRun.toFixed(2)} | ${m.sessionRssMiB.toFixed(0)} MiB |`);
}
