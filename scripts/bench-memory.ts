// Resident memory of a (quantized) model, in-process and in a 1 prefill + 1 decode cluster, against
// the bound weights + KV budget + 300 MiB per worker. Defaults: the llama-1b dummy at q4.
//
//   /work/tools/heavy node --import tsx scripts/bench-memory.ts [--preset llama-1b] [--dtype q4] [--kv-budget-mb 256]
//
// Builds (or reuses) the model in .cache/bench-models/, runs `pdserve generate` (16 tokens) and
// reads its peak resident set (/usr/bin/time-style, from the child's rusage), then starts `pdserve up
// --prefill 1 --decode 1`, sends one completion, and reads each worker's VmRSS from /proc, split into
// anonymous and file-backed, and how much of the file-backed part is pages of the model's own
// weight file (ONNX Runtime maps external-data initializers from it; see BENCHMARKS.md).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { freePort } from '../packages/common/src/index.ts';
import { kvBytesPerToken, parseWeightDtype, readModelConfig, writeDummyModel } from '../packages/engine/src/index.ts';

const { values: args } = parseArgs({ options: { preset: { type: 'string', default: 'llama-1b' }, dtype: { type: 'string', default: 'q4' }, 'kv-budget-mb': { type: 'string', default: '256' } } });
const dtype = parseWeightDtype(args.dtype!);
const kvBudgetMb = Number(args['kv-budget-mb']);
const MiB = 2 ** 20;
const root = resolve(new URL('..', import.meta.url).pathname);
const main = join(root, 'packages/cli/src/main.ts');
const dir = join(root, '.cache/bench-models', `${args.preset}-${dtype}`);
const log = (m: string) => process.stderr.write(`[bench-memory] ${m}\n`);
if (!existsSync(join(dir, 'config.json'))) {
  log(`building ${args.preset} ${dtype} into ${dir}`);
  writeDummyModel(args.preset!, dir, { dtype });
}
const cfg = readModelConfig(dir);
const weightBytes = readdirSync(dir).filter((f) => f.startsWith('model.onnx')).reduce((s, f) => s + statSync(join(dir, f)).size, 0);

// 1. generate, in one process: its KV cache is one sequence of the model's full context.
const gen = spawnSync('/usr/bin/time', ['-f', '%M', process.execPath, '--import', 'tsx', main, 'generate', '--model', dir, '--prompt', 'Once upon a time', '--max-tokens', '16', '--threads', '2', '--json'], { encoding: 'utf8' });
if (gen.status !== 0) throw new Error(`generate failed: ${gen.stderr}`);
const genPeakMiB = Number(gen.stderr.trim().split('\n').at(-1)) / 1024;
const genKvMiB = (cfg.max_seq_len * kvBytesPerToken(cfg)) / MiB;
const genOut = JSON.parse(gen.stdout.trim().split('\n').at(-1)!);
log(`generate: ${genOut.ids.length} tokens, peak RSS ${genPeakMiB.toFixed(0)} MiB`);

// 2. a 1P+1D cluster with a fixed KV budget per worker.
const port = await freePort();
const up = spawn(process.execPath, ['--import', 'tsx', main, 'up', '--model', dir, '--port', String(port), '--prefill', '1', '--decode', '1', '--kv-budget-mb', String(kvBudgetMb), '--max-sequences', '4'], { stdio: ['ignore', 'pipe', 'pipe'] });
let out = '';
up.stdout!.on('data', (d) => { out += d; });
up.stderr!.on('data', (d) => { out += d; });
const url = await new Promise<string>((res, rej) => {
  const timer = setTimeout(() => rej(new Error(`cluster not ready:\n${out.slice(-3000)}`)), 300_000);
  up.stdout!.on('data', () => { const m = /^ready (http:\S+)$/m.exec(out); if (m) { clearTimeout(timer); res(m[1]); } });
  up.on('exit', (c) => rej(new Error(`pdserve up exited ${c}:\n${out.slice(-3000)}`)));
});
const status = (pid: number, key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
const rss = (pid: number) => status(pid, 'VmRSS');
/** Resident MiB of the process's mappings of the model's weight file (model.onnx.data), from smaps. */
const modelFileMiB = (pid: number) => {
  let inModel = false;
  let kb = 0;
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inModel = line.includes(join(realpathSync(dir), 'model.onnx'));
    else if (inModel && line.startsWith('Rss:')) kb += Number(line.split(/\s+/)[1]);
  }
  return kb / 1024;
};
try {
  const served = ((await (await fetch(`${url}/v1/models`)).json()) as any).data[0].id as string;
  const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: served, prompt: 'Once upon a time', max_tokens: 16, temperature: 0, ignore_eos: true }) });
  const body = (await r.json()) as any;
  if (r.status !== 200) throw new Error(`completion failed: ${JSON.stringify(body)}`);
  log(`cluster completion: ${body.usage.completion_tokens} tokens`);
  const workers = ((await (await fetch(`${url}/workers`)).json()) as any).workers as any[];
  const children = spawnSync('pgrep', ['-P', String(up.pid)], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).map(Number);
  const workerRss = children
    .map((pid) => ({ pid, cmd: readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' '), rssMiB: rss(pid), anonMiB: status(pid, 'RssAnon'), fileMiB: status(pid, 'RssFile'), modelFileMiB: modelFileMiB(pid) }))
    .filter((p) => / worker /.test(p.cmd))
    .map((p) => ({ role: /--role (\w+)/.exec(p.cmd)?.[1] ?? '?', rssMiB: p.rssMiB, anonMiB: p.anonMiB, fileMiB: p.fileMiB, modelFileMiB: p.modelFileMiB }));
  const bound = weightBytes / MiB + kvBudgetMb + 300;
  const genBound = weightBytes / MiB + genKvMiB + 300;
  console.log(`| where | resident | bound (weights ${(weightBytes / MiB).toFixed(0)} MiB + KV + 300 MiB) | within |`);
  console.log('|---|---|---|---|');
  console.log(`| \`pdserve generate\` (peak; KV ${genKvMiB.toFixed(0)} MiB for one ${cfg.max_seq_len}-token sequence) | ${genPeakMiB.toFixed(0)} MiB | ${genBound.toFixed(0)} MiB | ${genPeakMiB <= genBound ? 'yes' : 'no'} |`);
  for (const w of workerRss) console.log(`| cluster ${w.role} worker (KV budget ${kvBudgetMb} MiB) | ${w.rssMiB.toFixed(0)} MiB (anonymous ${w.anonMiB.toFixed(0)}, file-backed ${w.fileMiB.toFixed(0)} of which the weight file ${w.modelFileMiB.toFixed(0)}) | ${bound.toFixed(0)} MiB | ${w.rssMiB <= bound ? 'yes' : 'no'} |`);
  console.log('\n```json\n' + JSON.stringify({ date: new Date().toISOString(), model: dir, dtype, weightBytes, genPeakMiB, genKvMiB, kvBudgetMb, workers: workerRss, workersSeen: workers.length }, null, 2) + '\n```');
} finally {
  up.kill('SIGTERM');
  await new Promise((r) => up.once('exit', r));
}
