// pdserve's default mode (`pdserve up` without role flags: 2 unified workers sharing the cores, the planner,
// conditional disaggregation + SLO admission)
// against the fixed configurations, side by side in one run, on the smollm2-135m dummy, for the
// `chat` and `summarize` workloads; then the overload target: the default mode at 3x the rate where
// its attainment (good / sent) falls below 90%.
//
//   node --import tsx scripts/bench-slo.ts [--model DIR] [--requests 12] [--workload chat|summarize|shifting]
//     [--systems default,remote,...] [--skip-sweep] [--skip-overload] [--overload-rate R]
//     [--overload-systems default,default-nice0] [--rates 3,6,10 (instead of the workload's own)]
//
// Writes bench-results/slo-<workload>-<system>.json (pdserve bench sweeps), slo-overload.json, and
// prints markdown tables. Attainment here is good / SENT (a refused request counts as a miss, so
// admission cannot buy attainment by refusing); bench's own slo_attainment (good / completed) is the
// "admitted" column.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeDummyModel } from '../packages/engine/src/index.ts';
import { freePort } from '../packages/common/src/index.ts';

const { values } = parseArgs({ options: {
  model: { type: 'string' }, requests: { type: 'string', default: '12' }, out: { type: 'string', default: 'bench-results' },
  workload: { type: 'string' }, systems: { type: 'string' }, 'skip-overload': { type: 'boolean' }, 'skip-sweep': { type: 'boolean' }, 'overload-rate': { type: 'string' }, 'overload-systems': { type: 'string', default: 'default' }, rates: { type: 'string' },
} });
const root = new URL('..', import.meta.url).pathname;
const main = join(root, 'packages/cli/src/main.ts');

// The SLOs and scales of scripts/bench-disagg.ts (chosen there from the engine's measured speed).
const experiments = [
  { workload: 'chat', scale: ['--output-len-scale', '0.5'], ttft: 2000, tpot: 150, rates: [1.5, 3, 5] },
  { workload: 'summarize', scale: ['--input-len-scale', '0.5'], ttft: 4000, tpot: 150, rates: [0.6, 1.2, 2] },
  // summarize, chat, summarize in thirds (scripts/bench-planner-shifting.ts's scales and SLOs): the
  // mix the planner and placement must follow mid-run. Only with --workload shifting.
  { workload: 'shifting', scale: ['--input-len-scale', '0.5', '--output-len-scale', '0.5'], ttft: 4000, tpot: 150, rates: [0.6, 1.2, 2], optIn: true },
];

if (values.rates) {
  const rates = values.rates.split(',').map(Number);
  if (rates.some((r) => !(r > 0))) throw new Error('--rates: positive numbers, comma-separated');
  for (const e of experiments) e.rates = rates;
}

const slo = (e: { ttft: number; tpot: number }) => ['--slo-ttft-ms', String(e.ttft), '--slo-tpot-ms', String(e.tpot)];
// A fixed configuration keeps its split: `pdserve up` runs the planner unless told not to, and
// until 2026-12-07 these systems did not say so (the planner moved `--unified 2` to 1D+1U and the
// remote-only split to 1D+1U mid-sweep; BENCHMARKS.md, issue 8, 2026-12-07).
const systems = [
  // What `pdserve up` does without role flags: two unified workers, each pinned to a core of its
  // own with one thread, placement auto, SLO admission, the planner.
  { key: 'default', name: 'default: starts 2U pinned, planner + placement auto + SLO admission', args: [], admission: true },
  { key: 'auto-noadm', name: 'default, admission off', args: ['--admission', 'off'], admission: false },
  { key: 'unified1x2', name: '--unified 1 --threads 2', args: ['--unified', '1', '--threads', '2', '--admission', 'off', '--planner', 'off'], admission: false },
  { key: 'unified2x1', name: '--unified 2 --threads 1', args: ['--unified', '2', '--threads', '1', '--pin', '--admission', 'off', '--planner', 'off'], admission: false },
  { key: 'remote', name: '--prefill 1 --decode 1 --prefill-placement remote', args: ['--prefill', '1', '--decode', '1', '--pin', '--threads', '1', '--prefill-placement', 'remote', '--admission', 'off', '--planner', 'off'], admission: false },
  // Only when named (--systems / --overload-systems):
  // the default controls started from 1P+1D on shared cores (`up`'s default start until 2026-12-07);
  { key: 'default-1p1d', name: 'default controls, starting as 1P+1D', args: ['--prefill', '1', '--decode', '1'], admission: true, optIn: true },
  // the same, each worker pinned to a core with one thread (the default before 2026-12-06);
  { key: 'default-pinned', name: 'default controls, starting as 1P+1D, each pinned, 1 thread', args: ['--prefill', '1', '--decode', '1', '--pin', '--threads', '1'], admission: true, optIn: true },
  // the default start with the workers sharing the cores, one thread per core each (spinning off);
  { key: 'default-2u-shared', name: 'default controls, starting as 2U sharing the cores', args: ['--no-pin'], admission: true, optIn: true },
  { key: 'unified2x2', name: '--unified 2 --threads 2 (spinning off)', args: ['--unified', '2', '--threads', '2', '--admission', 'off', '--planner', 'off'], admission: false, optIn: true },
  // the default with admission judging the TTFT estimates as they are (no correction by their measured error);
  { key: 'default-nocorr', name: 'default, --ttft-correction off', args: ['--ttft-correction', 'off'], admission: true, optIn: true },
  // the default with the split kept (placement and admission as the default): what the planner's moves do;
  { key: 'default-noplanner', name: 'default, --planner off', args: ['--planner', 'off'], admission: true, optIn: true },
  // the default with the engine threads at the process's own priority, to measure what --engine-nice buys.
  { key: 'default-nice0', name: 'default, --engine-nice 0', args: ['--engine-nice', '0'], admission: true, optIn: true },
];

interface Cluster { url: string; lines: string[]; stop(): Promise<unknown> }

async function startCluster(model: string, args: string[]): Promise<Cluster> {
  const port = await freePort();
  const proc = spawn(process.execPath, ['--import', 'tsx', main, 'up', '--model', model, '--port', String(port), '--max-sequences', '16', ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  const lines: string[] = [];
  let rest = '';
  proc.stdout!.on('data', (d) => {
    const parts = (rest + String(d)).split('\n');
    rest = parts.pop()!;
    for (const l of parts) if (l.includes('request completed') || l.includes('incoming request') || l.includes('planner changed the split') || l.startsWith('ready ')) lines.push(l);
  });
  const url = await new Promise<string>((resolve, reject) => {
    const t = setInterval(() => { const l = lines.find((x) => x.startsWith('ready ')); if (l) { clearInterval(t); resolve(l.slice(6).trim()); } }, 100);
    proc.on('exit', (c) => { clearInterval(t); reject(new Error(`up exited ${c}`)); });
  });
  return { url, lines, stop: () => new Promise((r) => { proc.once('exit', r); proc.kill('SIGTERM'); }) };
}

function bench(url: string, exp: (typeof experiments)[number], rates: number[], requests: string, file: string, name: string): any {
  const r = spawnSync(process.execPath, ['--import', 'tsx', main, 'bench', '--url', url, '--workload', exp.workload, ...exp.scale,
    '--sweep', rates.join(','), '--requests', requests, ...slo(exp), '--seed', '1', '--warmup', '2', '--series-name', name, '--out', file, '--quiet'],
  { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bench failed for ${exp.workload} on ${name}`);
  return JSON.parse(readFileSync(file, 'utf8'));
}

interface Row { rate: number; sent: number; completed: number; refused: number; good: number; attainment: number; admitted: number; goodput: number; ttft: string; tpot: string; phases?: string }

function rows(sweep: any): Row[] {
  return sweep.results.map((res: any) => {
    const reqs = res.requests as any[];
    const good = reqs.filter((r) => r.good).length;
    return {
      rate: res.rate, sent: reqs.length, completed: res.completed, refused: reqs.filter((r) => /HTTP 503/.test(r.error ?? '')).length, good,
      attainment: good / reqs.length, admitted: res.slo_attainment, goodput: res.goodput,
      ttft: `${res.ttft_ms.p50?.toFixed(0)} / ${res.ttft_ms.p99?.toFixed(0)}`, tpot: `${res.tpot_ms.p50?.toFixed(1)} / ${res.tpot_ms.p99?.toFixed(1)}`,
      // The shifting workload: good / sent per phase, in order.
      phases: Array.isArray(res.phases) ? res.phases.map((p: any) => `${p.workload ?? '?'} ${p.good ?? '?'}/${p.requests ?? '?'}`).join(', ') : undefined,
    };
  });
}

/** Highest rate with attainment (good / sent) >= 90%, linear between swept rates; '>= r' when the top rate passes. */
function rateAt90(rs: Row[]): string {
  let last: Row | undefined;
  for (const r of rs) {
    if (r.attainment >= 0.9) { last = r; continue; }
    if (!last) return `< ${r.rate}`;
    const x = last.rate + ((last.attainment - 0.9) / (last.attainment - r.attainment)) * (r.rate - last.rate);
    return x.toFixed(2);
  }
  return last ? `>= ${last.rate}` : 'none';
}

/**
 * How good the router's TTFT estimates were: its pdserve_ttft_estimate_ratio histogram (measured
 * TTFT / estimate, per admitted request with an estimate) as the mean and the share above 1.
 */
async function estimateAccuracy(url: string): Promise<string> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const parts: string[] = [];
  for (const where of ['local', 'remote']) {
    const num = (suffix: string, le?: string) => Number(new RegExp(`^pdserve_ttft_estimate_ratio_${suffix}\\{${le ? `le="${le}",` : ''}where="${where}"\\} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
    const count = num('count');
    if (!(count > 0)) continue;
    const atMost1 = num('bucket', '1');
    parts.push(`${where}: mean ${(num('sum') / count).toFixed(2)} over ${count}, ${(100 * (1 - atMost1 / count)).toFixed(0)}% above 1`);
  }
  return parts.join('; ') || 'no estimates';
}

function percentile(xs: number[], p: number): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const rank = (p / 100) * (s.length - 1);
  const lo = Math.floor(rank);
  return s[lo] + (s[Math.ceil(rank)] - s[lo]) * (rank - lo);
}

async function run(): Promise<void> {
  const model = values.model ?? join(root, '.cache/bench-models/smollm2-135m-4k');
  if (!existsSync(join(model, 'config.json'))) writeDummyModel('smollm2-135m', model, { maxSeqLen: 4096 });
  mkdirSync(values.out!, { recursive: true });
  const table: string[] = [];
  const summary: string[] = [];
  const plannerMoves: string[] = [];
  const estimates: string[] = [];
  let chatDefault: Row[] | undefined;
  let warmedUp = false;
  for (const exp of experiments.filter((e) => (values.workload ? e.workload === values.workload : !e.optIn))) {
    if (values['skip-sweep']) {
      // The overload run still needs the default mode's sweep: read it from an earlier run.
      const f = join(values.out!, `slo-${exp.workload}-default.json`);
      if (exp.workload === 'chat' && existsSync(f)) chatDefault = rows(JSON.parse(readFileSync(f, 'utf8')));
      continue;
    }
    // A throwaway run first: the first cluster of a run pays for cold page caches (model files) and
    // ONNX Runtime's first passes at each shape, which would count against whichever system ran first.
    if (!warmedUp) {
      warmedUp = true;
      const warm = await startCluster(model, [...systems[0].args, ...slo(exp)]);
      bench(warm.url, exp, [exp.rates[0]], '4', join(values.out!, 'slo-warmup.json'), 'warm-up');
      await warm.stop();
    }
    for (const sys of systems.filter((x) => (values.systems ? values.systems.split(',').includes(x.key) : !x.optIn))) {
      const cluster = await startCluster(model, [...sys.args, ...slo(exp)]);
      const sweepStart = Date.now();
      const sweep = bench(cluster.url, exp, exp.rates, values.requests!, join(values.out!, `slo-${exp.workload}-${sys.key}.json`), sys.name);
      estimates.push(`${exp.workload} / ${sys.name}: ${await estimateAccuracy(cluster.url).catch((e) => `metrics unreadable: ${(e as Error).message}`)}`);
      await cluster.stop();
      const rs = rows(sweep);
      // When the planner moved workers during the sweep (seconds after the sweep began), and why.
      for (const l of cluster.lines.filter((x) => x.includes('planner changed the split'))) {
        const j = JSON.parse(l) as { time: number; changes: unknown; reason: string };
        plannerMoves.push(`${exp.workload} / ${sys.name}: at ${((j.time - sweepStart) / 1000).toFixed(1)} s ${JSON.stringify(j.changes)}: ${j.reason}`);
      }
      if (exp.workload === 'chat' && sys.key === 'default') chatDefault = rs;
      for (const r of rs) {
        table.push(`| ${exp.workload} | ${sys.name} | ${r.rate} | ${r.good}/${r.sent} good, ${r.refused} refused${r.phases ? ` (${r.phases})` : ''} | ${(100 * r.attainment).toFixed(0)}% | ${(100 * r.admitted).toFixed(0)}% | ${r.goodput.toFixed(3)} | ${r.ttft} | ${r.tpot} |`);
      }
      summary.push(`| ${exp.workload} | ${sys.name} | ${rateAt90(rs)} | ${Math.max(...rs.map((r) => r.goodput)).toFixed(3)} |`);
    }
  }
  console.log('| workload | system | rate (req/s) | requests | attainment (good/sent) | admitted attainment (good/completed) | goodput (req/s) | TTFT p50/p99 ms | TPOT p50/p99 ms |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of table) console.log(r);
  console.log('\n| workload | system | rate at 90% attainment (req/s) | peak goodput (req/s) |\n|---|---|---|---|');
  for (const r of summary) console.log(r);
  console.log(`\nTTFT estimates (measured / estimated, admitted requests):\n${estimates.map((m) => `- ${m}`).join('\n')}`);
  if (plannerMoves.length) console.log(`\nplanner decisions during the sweeps:\n${plannerMoves.map((m) => `- ${m}`).join('\n')}`);

  if (values['skip-overload']) return;
  // Overload: 3x the rate where the default mode's attainment (good / sent) fell below 90%.
  const exp = experiments[0];
  const fail = chatDefault?.find((r) => r.attainment < 0.9)?.rate;
  const rate = values['overload-rate'] ? Number(values['overload-rate']) : 3 * (fail ?? exp.rates.at(-1)!);
  const peak = chatDefault ? Math.max(...chatDefault.map((r) => r.goodput)) : undefined;
  const requests = String(2 * Number(values.requests));
  for (const key of values['overload-systems']!.split(',')) {
    const sys = systems.find((x) => x.key === key);
    if (!sys) throw new Error(`unknown system ${key}`);
    const cluster = await startCluster(model, [...sys.args, ...slo(exp)]);
    const sweep = bench(cluster.url, exp, [rate], requests, join(values.out!, `slo-overload${key === 'default' ? '' : `-${key}`}.json`), `${sys.name} at 3x`);
    await cluster.stop();
    const r = rows(sweep)[0];
    const logged = cluster.lines.map((l) => { try { return JSON.parse(l); } catch { return undefined; } });
    // Only the API's refusals: `pdserve up`'s own /ready polls also answer 503 until the cluster is up.
    const api = new Set(logged.filter((l) => l?.msg === 'incoming request' && String(l.req?.url ?? '').startsWith('/v1/')).map((l) => l.request_id));
    const refusals = logged.filter((l) => l?.msg === 'request completed' && l.res?.statusCode === 503 && api.has(l.request_id)).map((l) => l.responseTime as number);
    console.log(`\noverload (chat, ${sys.name}) at ${rate} req/s (${values['overload-rate'] ? 'as given' : `3 x ${fail ?? '(no failing rate swept; 3x the top rate)'}`}), ${requests} requests:`);
    console.log(`  sent ${r.sent}, completed ${r.completed}, refused ${r.refused}, good ${r.good}`);
    console.log(`  admitted requests meeting the SLO: ${(100 * r.admitted).toFixed(1)}% (target >= 90%)`);
    console.log(`  goodput ${r.goodput.toFixed(3)} req/s; peak of the sweep ${peak?.toFixed(3) ?? '?'} -> ${peak ? (100 * r.goodput / peak).toFixed(0) : '?'}% (target >= 80%)`);
    console.log(`  refusals answered in (router responseTime) p50 ${percentile(refusals, 50)?.toFixed(2)} ms, p99 ${percentile(refusals, 99)?.toFixed(2)} ms, max ${refusals.length ? Math.max(...refusals).toFixed(2) : '-'} ms over ${refusals.length} (target p99 <= 10 ms)`);
    console.log(`  TTFT p50/p99 ${r.ttft} ms, TPOT p50/p99 ${r.tpot} ms`);
  }
}

await run();
