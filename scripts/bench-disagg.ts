// Disaggregated vs colocated goodput on the same code and model: 1 prefill + 1 decode worker, each
// pinned to its own core, against one unified worker with both cores, for the `summarize` and
// `chat` workloads, sweeping the request rate. Writes bench-results/disagg-<workload>.{json,svg}
// (attainment curves of both systems on one chart) and prints a table.
//
//   node --import tsx scripts/bench-disagg.ts [--model DIR] [--requests 12] [--workload summarize|chat] [--rates R1,R2,...]
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { renderAttainmentSvg, sweepSeries } from '../packages/bench/src/index.ts';
import { writeDummyModel } from '../packages/engine/src/index.ts';
import { freePort } from '../packages/common/src/index.ts';

const { values } = parseArgs({ options: { model: { type: 'string' }, requests: { type: 'string', default: '12' }, out: { type: 'string', default: 'bench-results' }, workload: { type: 'string' }, rates: { type: 'string' } } });
const root = new URL('..', import.meta.url).pathname;
const main = join(root, 'packages/cli/src/main.ts');

// SLOs from the engine's measured speed on this machine (BENCHMARKS.md, engine section):
// prefill ~260-420 tok/s on one core, decode 40 ms/step at batch 1 and ~100 ms at batch 16.
export const experiments = [
  // Prompts 256-512 tokens (summarize's 512-1024 halved): ~1-2 s of prefill alone; TTFT SLO 4 s
  // allows one prompt of queueing. Outputs 16-64 tokens; TPOT SLO 150 ms allows a batched step
  // but not a step stalled behind a 256-token prefill chunk (~0.7 s).
  { workload: 'summarize', scale: ['--input-len-scale', '0.5'], ttft: 4000, tpot: 150, rates: [0.1, 0.2, 0.3, 0.45] },
  // Prompts 64-256, outputs 64-128 tokens (chat's 128-256 halved); TTFT SLO 2 s, TPOT 150 ms.
  { workload: 'chat', scale: ['--output-len-scale', '0.5'], ttft: 2000, tpot: 150, rates: [0.2, 0.4, 0.6, 0.9] },
];

const systems = [
  // --planner off: both are fixed configurations (`pdserve up` starts the planner by default).
  { name: 'disaggregated 1P+1D (1 core each)', args: ['--prefill', '1', '--decode', '1', '--pin', '--threads', '1', '--planner', 'off'] },
  { name: 'colocated unified (2 cores)', args: ['--unified', '1', '--threads', '2', '--planner', 'off'] },
];

async function startCluster(model: string, args: string[]) {
  const port = await freePort();
  const proc = spawn(process.execPath, ['--import', 'tsx', main, 'up', '--model', model, '--port', String(port), '--max-sequences', '16', ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  const url = await new Promise<string>((resolve, reject) => {
    proc.stdout!.on('data', (d) => { const m = /ready (\S+)/.exec(String(d)); if (m) resolve(m[1]); });
    proc.on('exit', (c) => reject(new Error(`up exited ${c}`)));
  });
  return { url, stop: () => new Promise((r) => { proc.once('exit', r); proc.kill('SIGTERM'); }) };
}

async function run(): Promise<void> {
  const model = values.model ?? join(root, '.cache/bench-models/smollm2-135m-4k');
  if (!existsSync(join(model, 'config.json'))) writeDummyModel('smollm2-135m', model, { maxSeqLen: 4096 });
  mkdirSync(values.out!, { recursive: true });
  const rows: string[] = [];
  for (const exp of experiments.filter((e) => !values.workload || e.workload === values.workload)) {
    if (values.rates) exp.rates = values.rates.split(',').map(Number);
    const series = [];
    for (const sys of systems) {
      const cluster = await startCluster(model, sys.args);
      const file = join(values.out!, `disagg-${exp.workload}-${sys.args.includes('--unified') ? 'colocated' : 'disaggregated'}.json`);
      const r = spawnSync(process.execPath, ['--import', 'tsx', main, 'bench', '--url', cluster.url, '--workload', exp.workload, ...exp.scale,
        '--sweep', exp.rates.join(','), '--requests', values.requests!, '--slo-ttft-ms', String(exp.ttft), '--slo-tpot-ms', String(exp.tpot),
        '--seed', '1', '--warmup', '2', '--series-name', sys.name, '--out', file, '--quiet'], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
      await cluster.stop();
      if (r.status !== 0) throw new Error(`bench failed for ${exp.workload} on ${sys.name}`);
      const sweep = JSON.parse(readFileSync(file, 'utf8'));
      series.push(sweepSeries(sweep, sys.name));
      for (const res of sweep.results) {
        rows.push(`| ${exp.workload} | ${sys.name} | ${res.rate} | ${res.completed}/${res.completed + res.failed} | ${res.goodput.toFixed(3)} | ${(100 * res.slo_attainment).toFixed(0)}% | ${res.ttft_ms.p50?.toFixed(0)} / ${res.ttft_ms.p99?.toFixed(0)} | ${res.tpot_ms.p50?.toFixed(1)} / ${res.tpot_ms.p99?.toFixed(1)} |`);
      }
      rows.push(`| ${exp.workload} | ${sys.name} | **rate at 90% attainment** | | max swept ${sweep.max_rate_at_90pct_attainment ?? 'none'}, interpolated ${sweep.interpolated_rate_at_90pct?.toFixed?.(3) ?? 'none'} | | | |`);
    }
    writeFileSync(join(values.out!, `disagg-${exp.workload}.svg`), renderAttainmentSvg(series, { title: `${exp.workload}: SLO attainment vs rate (TTFT <= ${exp.ttft} ms, TPOT <= ${exp.tpot} ms)` }));
  }
  console.log('| workload | system | rate (req/s) | completed | goodput (req/s) | attainment | TTFT p50/p99 ms | TPOT p50/p99 ms |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) console.log(r);
}

await run();
