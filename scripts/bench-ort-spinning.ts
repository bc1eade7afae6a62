// Two workers' forward passes on shared cores, with ONNX Runtime's intra-op spinning on and off
// (`--ort-spinning`): a decode process (batch 8 at context 256, step after step) and a prefill
// process (256-token prompts, one after another; --batch and --context change both) run at the
// same time for --seconds, in each of these layouts, one after the other in one run:
//
//   alone             each process by itself, 1 and 2 threads (what a pass costs with the cores free)
//   pinned 1+1        one thread each, each process on its own core (taskset): `--pin --threads 1`
//   shared 2+2 spin   two threads each, unpinned, spinning on (ORT's default)
//   shared 2+2 sleep  two threads each, unpinned, spinning off
//
//   node --import tsx scripts/bench-ort-spinning.ts [--model DIR] [--seconds 20] [--batch 8] [--context 256] [--json]
//
// Without --model it builds (or reuses) the smollm2-135m dummy in .cache/bench-models/. Prints a
// markdown table of the median decode step and prefill pass per layout (and JSON with --json).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Engine, writeDummyModel } from '../packages/engine/src/index.ts';

const { values } = parseArgs({ options: {
  model: { type: 'string' }, seconds: { type: 'string', default: '20' }, batch: { type: 'string', default: '8' }, context: { type: 'string', default: '256' }, json: { type: 'boolean' },
  // Internal: one measuring process.
  role: { type: 'string' }, threads: { type: 'string' }, spinning: { type: 'string' },
} });
const seconds = Number(values.seconds);
const batch = Number(values.batch);
const context = Number(values.context);
if (!(seconds > 0) || !(Number.isInteger(batch) && batch > 0) || !(Number.isInteger(context) && context > 0)) throw new Error('--seconds must be > 0, --batch and --context positive integers');

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[(s.length >> 1) - 1] + s[s.length >> 1]) / 2;
};

interface Measured { role: string; passes: number; medianMs: number }

/** One process's loop: decode steps of `batch` sequences at `context`, or `context`-token prefills. */
async function measure(model: string, role: string, threads: number, spinning: boolean): Promise<Measured> {
  const engine = await Engine.load(model, { threads, spinning, maxSequences: Math.max(batch, 1), maxModelLen: context + 8 });
  const vocab = engine.vocabSize;
  let seed = 1;
  const rnd = (n: number) => Array.from({ length: n }, () => 1 + ((seed = (seed * 48271) % 2147483647) % (vocab - 1)));
  const times: number[] = [];
  if (role === 'decode') {
    const seqs = [];
    for (let i = 0; i < batch; i++) {
      const s = engine.newSequence(`d${i}`);
      await engine.prefill(s, rnd(context));
      seqs.push(s);
    }
    await engine.decode(seqs.map((seq) => ({ seq, token: rnd(1)[0] }))); // a first pass at this shape
    const end = Date.now() + seconds * 1000;
    while (Date.now() < end) {
      // Keep the context fixed: the next step writes its position again.
      const t0 = performance.now();
      await engine.decode(seqs.map((seq) => ({ seq, token: rnd(1)[0] })));
      times.push(performance.now() - t0);
      for (const s of seqs) s.length = context;
    }
  } else {
    const warm = engine.newSequence('warm');
    await engine.prefill(warm, rnd(context));
    engine.release(warm);
    const end = Date.now() + seconds * 1000;
    while (Date.now() < end) {
      const s = engine.newSequence('p');
      const t0 = performance.now();
      await engine.prefill(s, rnd(context));
      times.push(performance.now() - t0);
      engine.release(s);
    }
  }
  return { role, passes: times.length, medianMs: median(times) };
}

if (values.role) {
  const r = await measure(values.model!, values.role, Number(values.threads), values.spinning !== 'off');
  process.stdout.write(`${JSON.stringify(r)}\n`);
  process.exit(0);
}

const self = fileURLToPath(import.meta.url);
function child(model: string, role: string, threads: number, spinning: boolean, core?: number): Promise<Measured> {
  const argv = [process.execPath, '--import', 'tsx', self, '--model', model, '--role', role, '--threads', String(threads), '--spinning', spinning ? 'on' : 'off', '--seconds', String(seconds), '--batch', String(batch), '--context', String(context)];
  const cmd = core === undefined ? argv : ['taskset', '-c', String(core), ...argv];
  return new Promise((res, rej) => {
    const p = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout!.on('data', (d) => { out += d; });
    p.on('error', rej);
    p.on('close', (code) => (code === 0 ? res(JSON.parse(out.trim().split('\n').at(-1)!)) : rej(new Error(`${role} exited ${code}`))));
  });
}

let model: string;
if (values.model) model = resolve(values.model);
else {
  model = resolve('.cache/bench-models/smollm2-135m');
  if (!existsSync(join(model, 'config.json'))) {
    mkdirSync(model, { recursive: true });
    writeDummyModel('smollm2-135m', model, { maxSeqLen: 2048 });
  }
}
const cores = availableParallelism();
const rows: Array<{ layout: string; decodeMs: number; prefillMs: number }> = [];
const both = async (layout: string, threads: number, spinning: boolean, pin: boolean) => {
  const [d, p] = await Promise.all([child(model, 'decode', threads, spinning, pin ? 0 : undefined), child(model, 'prefill', threads, spinning, pin ? 1 % cores : undefined)]);
  rows.push({ layout, decodeMs: d.medianMs, prefillMs: p.medianMs });
};
for (const threads of [1, 2]) {
  const d = await child(model, 'decode', threads, true);
  const p = await child(model, 'prefill', threads, true);
  rows.push({ layout: `alone, ${threads} thread${threads > 1 ? 's' : ''}`, decodeMs: d.medianMs, prefillMs: p.medianMs });
}
await both('both at once: pinned, 1 thread each', 1, true, true);
await both('both at once: unpinned, 2 threads each, spinning on', 2, true, false);
await both('both at once: unpinned, 2 threads each, spinning off', 2, false, false);

console.log(`| layout | decode step, batch ${batch} at context ${context} (ms, median) | prefill of ${context} tokens (ms, median) |`);
console.log('|---|---|---|');
for (const r of rows) console.log(`| ${r.layout} | ${r.decodeMs.toFixed(1)} | ${r.prefillMs.toFixed(1)} |`);
if (values.json) console.log(JSON.stringify({ cores, seconds, batch, context, rows }));
