// The planner on a shifting workload: the same cluster (`pdserve up --prefill 1 --decode 1
// --threads 1`, smollm2-135m dummy) with roles fixed (no planner) and with a `pdserve planner`,
// under `pdserve bench --workload shifting` (summarize, chat, summarize), side by side in one run.
// Prints overall and per-phase attainment and goodput, and the planner's decisions.
//
//   node --import tsx scripts/bench-planner-shifting.ts [--model DIR] [--requests 60] [--rate 0.8]
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeDummyModel } from '../packages/engine/src/index.ts';
import { clusterKeys, createRedisClient, freePort, startRedisServer, waitForReady } from '../packages/common/src/index.ts';
import { readDecisions } from '../services/planner/src/index.ts';

const { values } = parseArgs({ options: { model: { type: 'string' }, requests: { type: 'string', default: '60' }, rate: { type: 'string', default: '0.8' }, out: { type: 'string', default: 'bench-results' } } });
const root = new URL('..', import.meta.url).pathname;
const main = join(root, 'packages/cli/src/main.ts');
const SLO = { ttft: 4000, tpot: 150 };

async function system(model: string, planner: boolean) {
  const redisServer = await startRedisServer();
  const port = await freePort();
  const up = spawn(process.execPath, ['--import', 'tsx', main, 'up', '--model', model, '--port', String(port), '--redis-url', redisServer.url,
    '--prefill', '1', '--decode', '1', '--threads', '1', '--planner', 'off', '--max-sequences', '16', '--role-grace-ms', '2000'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const url = await new Promise<string>((resolve, reject) => {
    up.stdout!.on('data', (d) => { const m = /ready (\S+)/.exec(String(d)); if (m) resolve(m[1]!); });
    up.on('exit', (c) => reject(new Error(`up exited ${c}`)));
  });
  const p = planner
    ? spawn(process.execPath, ['--import', 'tsx', main, 'planner', '--redis-url', redisServer.url, '--slo-ttft-ms', String(SLO.ttft), '--slo-tpot-ms', String(SLO.tpot),
      '--min-requests', '8', '--min-dwell-ms', '15000', '--interval-ms', '1000'], { stdio: 'ignore' })
    : undefined;
  const file = join(values.out!, `planner-shifting-${planner ? 'planner' : 'fixed'}.json`);
  const r = spawnSync(process.execPath, ['--import', 'tsx', main, 'bench', '--url', url, '--workload', 'shifting', '--input-len-scale', '0.5', '--output-len-scale', '0.5',
    '--rate', values.rate!, '--requests', values.requests!, '--slo-ttft-ms', String(SLO.ttft), '--slo-tpot-ms', String(SLO.tpot), '--seed', '1', '--warmup', '2', '--out', file, '--quiet'],
  { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  const redis = createRedisClient({ url: redisServer.url });
  await waitForReady(redis, 5000);
  const decisions = await readDecisions(redis, clusterKeys());
  redis.disconnect();
  if (p) { p.kill('SIGTERM'); await new Promise((res) => p.once('exit', res)); }
  up.kill('SIGTERM');
  await new Promise((res) => up.once('exit', res));
  await redisServer.stop();
  if (r.status !== 0) throw new Error(`bench failed: ${r.stdout}`);
  return { result: JSON.parse(readFileSync(file, 'utf8')), decisions };
}

const model = values.model ?? join(root, '.cache/bench-models/smollm2-135m-4k');
if (!existsSync(join(model, 'config.json'))) writeDummyModel('smollm2-135m', model, { maxSeqLen: 4096 });
mkdirSync(values.out!, { recursive: true });
const fixed = await system(model, false);
const planned = await system(model, true);
console.log(`shifting (summarize, chat, summarize), ${values.requests} requests at ${values.rate} req/s, TTFT <= ${SLO.ttft} ms, TPOT <= ${SLO.tpot} ms`);
console.log('| system | attainment | goodput (req/s) | failed | phase 1 summarize | phase 2 chat | phase 3 summarize |');
console.log('|---|---|---|---|---|---|---|');
for (const [name, s] of [['1P+1D fixed', fixed], ['1P+1D + planner', planned]] as const) {
  const r = s.result;
  const ph = r.phases.map((p: { slo_attainment: number; goodput: number }) => `${(100 * p.slo_attainment).toFixed(0)}%, ${p.goodput.toFixed(2)} req/s`);
  console.log(`| ${name} | ${(100 * r.slo_attainment).toFixed(1)}% | ${r.goodput.toFixed(3)} | ${r.failed} | ${ph.join(' | ')} |`);
}
console.log(`goodput planner / fixed: ${(planned.result.goodput / fixed.result.goodput).toFixed(2)}x`);
for (const d of planned.decisions) console.log(`decision ${d.id}: ${d.reason}`);
