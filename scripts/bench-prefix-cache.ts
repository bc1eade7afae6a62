// Prefix caching on the smollm2-135m dummy model, side by side in one run:
//
//   --part ttft     TTFT of a 1024-token (--prefix-len) shared prefix + a 32-token turn, cold (a prefix never seen)
//                   and warm (the same prefix again, a new turn), interleaved round by round, on
//                   1 prefill + 1 decode (remote placement: the hit skips the prefill but every
//                   block still crosses to the decode worker) and on 1 unified worker. A request of
//                   max_tokens 1, so its latency is its TTFT.
//   --part goodput  `pdserve bench --workload chat` (random prompts: nothing repeats) with the
//                   prefix cache on and off, alternating on/off/on/off clusters, 1P+1D.
//   --part routing  prefix-aware against load-only routing on 2 unified workers (1 thread each,
//                   pinned, --max-sequences 4, so a worker's idle slots hold only a few cached
//                   prefixes): `pdserve bench --workload prefix --prefix-groups 4` (--groups: 4 distinct
//                   1024-token system prompts) or `--workload multiturn` (--bench-workload), at
//                   each --rates rate, the two routings alternating per rate.
//
//   node --import tsx scripts/bench-prefix-cache.ts --part ttft|goodput|routing [--model DIR] [--rounds 4] [--requests 24] [--rate 0.5]
//        [--prefix-len 1024] [--rates 0.25,0.5] [--groups 4] [--bench-workload prefix|multiturn]
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeDummyModel } from '../packages/engine/src/index.ts';
import { freePort } from '../packages/common/src/index.ts';

const { values } = parseArgs({ options: {
  part: { type: 'string', default: 'ttft' }, model: { type: 'string' }, rounds: { type: 'string', default: '4' },
  requests: { type: 'string', default: '24' }, rate: { type: 'string', default: '0.5' }, out: { type: 'string', default: 'bench-results' },
  rates: { type: 'string', default: '0.25,0.5' }, 'prefix-len': { type: 'string', default: '1024' }, 'bench-workload': { type: 'string', default: 'prefix' }, groups: { type: 'string', default: '4' },
} });
const root = new URL('..', import.meta.url).pathname;
const main = join(root, 'packages/cli/src/main.ts');

async function startCluster(model: string, args: string[]) {
  const port = await freePort();
  const proc = spawn(process.execPath, ['--import', 'tsx', main, 'up', '--model', model, '--port', String(port), '--planner', 'off', '--admission', 'off', ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  const url = await new Promise<string>((resolve, reject) => {
    proc.stdout!.on('data', (d) => { const m = /ready (\S+)/.exec(String(d)); if (m) resolve(m[1]); });
    proc.on('exit', (c) => reject(new Error(`up exited ${c}`)));
  });
  return { url, stop: () => new Promise((r) => { proc.once('exit', r); proc.kill('SIGTERM'); }) };
}

const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
const r1 = (x: number) => Math.round(x * 10) / 10;

let seed = 12345;
// Token ids 3 .. 3 + idSpan - 1: below 49003 on smollm2-135m (as always), within the vocabulary of a smaller model.
let idSpan = 49000;
function randomIds(n: number): number[] {
  return Array.from({ length: n }, () => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return 3 + (seed % idSpan); });
}

async function timed(url: string, model: string, prompt: number[]): Promise<{ ms: number; cached: number }> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt, max_tokens: 1, temperature: 0, ignore_eos: true }),
  });
  const body = (await res.json()) as any;
  const ms = performance.now() - t0;
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${JSON.stringify(body)}`);
  return { ms, cached: body.usage.prompt_tokens_details.cached_tokens };
}

async function ttftPart(model: string): Promise<void> {
  const rounds = Number(values.rounds);
  const systems = [
    { name: '1 prefill + 1 decode (remote prefill, 1 thread each, pinned)', args: ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote', '--threads', '1', '--pin'] },
    { name: '1 unified worker (2 threads)', args: ['--unified', '1', '--threads', '2'] },
  ];
  const out = [];
  for (const sys of systems) {
    const c = await startCluster(model, [...sys.args, '--max-sequences', '4']);
    try {
      const name = ((await (await fetch(`${c.url}/v1/models`)).json()) as any).data[0].id;
      await timed(c.url, name, randomIds(64)); // warm the engines up
      const cold: number[] = [];
      const warm: number[] = [];
      const cachedWarm: number[] = [];
      for (let i = 0; i < rounds; i++) {
        const prefix = randomIds(Number(values['prefix-len']));
        const a = await timed(c.url, name, [...prefix, ...randomIds(32)]);
        if (a.cached !== 0) throw new Error(`cold request hit the cache (${a.cached})`);
        const b = await timed(c.url, name, [...prefix, ...randomIds(32)]);
        cold.push(a.ms);
        warm.push(b.ms);
        cachedWarm.push(b.cached);
      }
      const row = { system: sys.name, cold_ms: cold.map(r1), warm_ms: warm.map(r1), warm_cached_tokens: cachedWarm, median_cold_ms: r1(median(cold)), median_warm_ms: r1(median(warm)), warm_over_cold: Math.round((median(warm) / median(cold)) * 1000) / 1000 };
      out.push(row);
      console.log(JSON.stringify(row));
    } finally {
      await c.stop();
    }
  }
}

async function goodputPart(model: string): Promise<void> {
  mkdirSync(values.out!, { recursive: true });
  const results: Record<string, Array<{ goodput: number; attainment: number; hit_rate: number }>> = { on: [], off: [] };
  for (const mode of ['on', 'off', 'on', 'off']) {
    const c = await startCluster(model, ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote', '--threads', '1', '--pin', '--max-sequences', '16', '--prefix-cache', mode]);
    const file = join(values.out!, `prefix-goodput-${mode}-${results[mode].length}.json`);
    try {
      const r = spawnSync(process.execPath, ['--import', 'tsx', main, 'bench', '--url', c.url, '--workload', 'chat', '--output-len-scale', '0.25',
        '--rate', values.rate!, '--requests', values.requests!, '--slo-ttft-ms', '2000', '--slo-tpot-ms', '150', '--seed', '1', '--warmup', '2', '--out', file, '--quiet'],
      { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`bench failed (${mode})`);
    } finally {
      await c.stop();
    }
    const j = JSON.parse(readFileSync(file, 'utf8'));
    results[mode].push({ goodput: j.goodput, attainment: j.slo_attainment, hit_rate: j.prefix_cache_hit_rate });
    console.log(JSON.stringify({ prefix_cache: mode, goodput: j.goodput, slo_attainment: j.slo_attainment, completed: j.completed, hit_rate: j.prefix_cache_hit_rate, ttft_p50_ms: j.ttft_ms?.p50 ?? j.median_ttft_ms }));
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const on = mean(results.on.map((r) => r.goodput));
  const off = mean(results.off.map((r) => r.goodput));
  console.log(JSON.stringify({ goodput_on: r1(on * 1000) / 1000, goodput_off: r1(off * 1000) / 1000, on_over_off: Math.round((on / off) * 1000) / 1000 }));
}

async function routingPart(model: string): Promise<void> {
  mkdirSync(values.out!, { recursive: true });
  const workload = values['bench-workload']!;
  if (workload !== 'prefix' && workload !== 'multiturn') throw new Error('--bench-workload prefix|multiturn');
  const shape = workload === 'prefix'
    ? ['--prefix-len', '1024', '--prefix-groups', values.groups!, '--output-len-scale', '0.25']
    : ['--turns', '4', '--output-len-scale', '0.5'];
  const rows: Array<{ prefix_routing: string; goodput: number }> = [];
  for (const rate of values.rates!.split(',')) {
    for (const routing of ['on', 'off']) {
      const c = await startCluster(model, ['--unified', '2', '--threads', '1', '--pin', '--max-sequences', '4', '--prefix-routing', routing]);
      const file = join(values.out!, `prefix-routing-${workload}-${routing}-${rate}.json`);
      try {
        const r = spawnSync(process.execPath, ['--import', 'tsx', main, 'bench', '--url', c.url, '--workload', workload, ...shape,
          '--rate', rate, '--requests', values.requests!, '--slo-ttft-ms', '2000', '--slo-tpot-ms', '150', '--seed', '1', '--warmup', '1', '--out', file, '--quiet'],
        { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`bench failed (${routing} at ${rate})`);
      } finally {
        await c.stop();
      }
      const j = JSON.parse(readFileSync(file, 'utf8'));
      const row = { workload, rate: Number(rate), prefix_routing: routing, goodput: j.goodput, slo_attainment: j.slo_attainment, completed: j.completed, failed: j.failed,
        hit_rate: j.prefix_cache_hit_rate, ttft_p50_ms: r1(j.ttft_ms.p50), ttft_p99_ms: r1(j.ttft_ms.p99), tpot_p99_ms: r1(j.tpot_ms.p99) };
      rows.push(row);
      console.log(JSON.stringify(row));
    }
  }
  const peak = (routing: string) => Math.max(...rows.filter((r) => r.prefix_routing === routing).map((r) => r.goodput));
  console.log(JSON.stringify({ workload, peak_goodput_prefix_aware: peak('on'), peak_goodput_load_only: peak('off'), ratio: Math.round((peak('on') / peak('off')) * 1000) / 1000 }));
}

async function run(): Promise<void> {
  const model = values.model ?? join(root, '.cache/bench-models/smollm2-135m-2k');
  if (!existsSync(join(model, 'config.json'))) writeDummyModel('smollm2-135m', model, { maxSeqLen: 2048 });
  idSpan = Math.min(49000, JSON.parse(readFileSync(join(model, 'config.json'), 'utf8')).vocab_size - 3);
  if (values.part === 'ttft') await ttftPart(model);
  else if (values.part === 'goodput') await goodputPart(model);
  else if (values.part === 'routing') await routingPart(model);
  else throw new Error('--part ttft|goodput|routing');
}

void run().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
