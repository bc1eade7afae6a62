// Soak: N minutes of mixed streaming load on a supervised `pdserve up --prefill 1 --decode 2`
// cluster with random faults injected, then a report of what happened to every request.
//
//   node --import tsx scripts/soak.ts [--minutes 10] [--model DIR] [--rate 2] [--fault-every-s 20] [--seed 1]
//
// Load: Poisson arrivals of streaming completions (stories260K prompts, 32-300 tokens, greedy);
// a fifth of the clients disconnect at a random point. Faults, one every --fault-every-s, chosen
// at random: kill -9 of a decode worker, kill -9 of the prefill worker (both restarted by `up`'s
// supervision; their requests are migrated by the router), or SIGSTOP of a worker past the
// heartbeat TTL followed by SIGCONT. At the end, once the load has drained: every healthy worker's
// KV blocks must all be free again (a leak otherwise), and a failed request (an HTTP error or an
// SSE error event) is a defect unless the cluster had no capacity left.
//
// Prints one JSON line per fault and a summary: requests sent, completed, client-aborted, failed
// (by error), migrated (the router's pdserve_request_migrations_total), worker restarts, KV
// blocks leaked.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { convertLlama2c } from '../packages/engine/src/index.ts';
import { freePort } from '../packages/common/src/index.ts';
import { counterTotal, workerPids } from './lib/cluster-processes.ts';

const { values } = parseArgs({ options: {
  minutes: { type: 'string', default: '10' }, model: { type: 'string' }, rate: { type: 'string', default: '2' },
  'fault-every-s': { type: 'string', default: '20' }, seed: { type: 'string', default: '1' },
} });
const root = new URL('..', import.meta.url).pathname;
const main = join(root, 'packages/cli/src/main.ts');
const durationMs = Number(values.minutes) * 60_000;
const rate = Number(values.rate);
const faultEveryMs = Number(values['fault-every-s']) * 1000;

let seed = Number(values.seed) >>> 0 || 1;
function rand(): number { // xorshift32: the same faults and load for the same seed
  seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0;
  return seed / 2 ** 32;
}
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function modelDir(): { dir: string; cleanup(): void } {
  if (values.model) return { dir: values.model, cleanup: () => {} };
  const src = join(root, '..', 'shared', 'models', 'stories260K');
  if (!existsSync(join(src, 'stories260K.bin'))) throw new Error(`no --model and no ${src}`);
  const tmp = mkdtempSync(join(tmpdir(), 'pdserve-soak-'));
  const out = join(tmp, 'stories260K');
  convertLlama2c({ checkpoint: join(src, 'stories260K.bin'), tokenizer: join(src, 'tok512.bin'), out });
  return { dir: out, cleanup: () => rmSync(tmp, { recursive: true, force: true }) };
}

const PROMPTS = ['Once upon a time', 'The little dog', 'Lily and Ben', 'One day, a girl', 'The sun was', 'Tom had a red ball', 'In the park', 'A big bird'];

type Outcome = 'completed' | 'aborted' | 'failed';
async function oneRequest(url: string, model: string, abortAfterMs: number | undefined): Promise<{ outcome: Outcome; error?: string }> {
  const ac = new AbortController();
  const timer = abortAfterMs !== undefined ? setTimeout(() => ac.abort(), abortAfterMs) : undefined;
  try {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: AbortSignal.any([ac.signal, AbortSignal.timeout(180_000)]),
      body: JSON.stringify({ model, prompt: pick(PROMPTS), max_tokens: 32 + Math.floor(rand() * 268), temperature: 0, stream: true, ignore_eos: true }),
    });
    if (res.status !== 200) return { outcome: 'failed', error: `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}` };
    const text = await res.text();
    const error = /"error":\s*\{[^}]*"code":\s*"?([\w-]+)/.exec(text);
    if (error) return { outcome: 'failed', error: `stream error ${error[1]}` };
    if (!text.includes('data: [DONE]')) return { outcome: 'failed', error: 'stream ended without [DONE]' };
    return { outcome: 'completed' };
  } catch (err) {
    if (ac.signal.aborted) return { outcome: 'aborted' };
    return { outcome: 'failed', error: (err as Error).message };
  } finally {
    clearTimeout(timer);
  }
}

async function run(): Promise<void> {
  const model = modelDir();
  const port = await freePort();
  const up = spawn(process.execPath, ['--import', 'tsx', main, 'up', '--model', model.dir, '--port', String(port), '--prefill', '1', '--decode', '2', '--planner', 'off', '--max-sequences', '8'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  up.stdout!.on('data', (d) => { log += d; });
  up.stderr!.on('data', (d) => { log += d; if (log.length > 1e6) log = log.slice(-5e5); });
  const url = await new Promise<string>((resolve, reject) => {
    const t = setInterval(() => { const m = /^ready (http:\S+)$/m.exec(log); if (m) { clearInterval(t); resolve(m[1]); } }, 100);
    up.once('exit', (c) => { clearInterval(t); reject(new Error(`up exited ${c}:\n${log.slice(-3000)}`)); });
  });
  const modelName = ((await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data[0].id;
  const upMetrics = /supervision metrics (?:URL )?(http:\S+)/.exec(log)?.[1];
  const t0 = Date.now();
  const counts = { sent: 0, completed: 0, aborted: 0, failed: 0 };
  const errors = new Map<string, number>();
  const pending: Promise<void>[] = [];
  const faults: Array<Record<string, unknown>> = [];

  const faultLoop = (async () => {
    while (Date.now() - t0 < durationMs - faultEveryMs / 2) {
      await sleep(faultEveryMs * (0.5 + rand()));
      if (Date.now() - t0 >= durationMs) break;
      const kind = pick(['kill_decode', 'kill_decode', 'kill_prefill', 'sigstop'] as const);
      const role = kind === 'kill_prefill' ? 'prefill' : kind === 'kill_decode' ? 'decode' : pick(['prefill', 'decode']);
      const pids = workerPids(up.pid!, role);
      if (pids.length === 0) { faults.push({ at_s: (Date.now() - t0) / 1000, kind, skipped: `no ${role} worker running` }); continue; }
      const pid = pick(pids);
      const fault = { at_s: Math.round((Date.now() - t0) / 100) / 10, kind, role, pid, in_flight: counts.sent - counts.completed - counts.aborted - counts.failed };
      faults.push(fault);
      console.log(JSON.stringify({ fault }));
      try {
        if (kind === 'sigstop') {
          process.kill(pid, 'SIGSTOP');
          await sleep(6000); // past the 3 s heartbeat TTL: it leaves routing
          process.kill(pid, 'SIGCONT');
        } else process.kill(pid, 'SIGKILL');
      } catch { /* it died on its own meanwhile */ }
    }
  })();

  // Poisson arrivals until the time is up.
  while (Date.now() - t0 < durationMs) {
    await sleep((-Math.log(1 - rand()) / rate) * 1000);
    counts.sent++;
    const abortAfter = rand() < 0.2 ? 50 + rand() * 2000 : undefined;
    pending.push(oneRequest(url, modelName, abortAfter).then((r) => {
      counts[r.outcome]++;
      if (r.error) errors.set(r.error, (errors.get(r.error) ?? 0) + 1);
    }));
  }
  await faultLoop;
  await Promise.all(pending);

  // Drained: every healthy worker's KV blocks free again (heartbeats carry them; allow a few).
  let leaked = -1;
  let workers: Array<{ id: string; role: string; healthy: boolean; load: { free_kv_blocks: number; total_kv_blocks: number } }> = [];
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    workers = ((await (await fetch(`${url}/workers`)).json()) as { workers: typeof workers }).workers;
    const live = workers.filter((w) => w.healthy);
    leaked = live.reduce((s, w) => s + (w.load.total_kv_blocks - w.load.free_kv_blocks), 0);
    if (leaked === 0 && live.length >= 3) break;
    await sleep(1000);
  }
  const routerPage = await (await fetch(`${url}/metrics`)).text();
  const upPage = upMetrics ? await (await fetch(`${upMetrics}`)).text().catch(() => '') : '';
  const summary = {
    minutes: Number(values.minutes), rate, fault_every_s: faultEveryMs / 1000, seed: Number(values.seed),
    ...counts,
    errors: Object.fromEntries(errors),
    migrated: counterTotal(routerPage, 'pdserve_request_migrations_total'),
    worker_restarts: upPage ? counterTotal(upPage, 'pdserve_worker_restarts_total') : null,
    faults: faults.length,
    healthy_workers_at_end: workers.filter((w) => w.healthy).length,
    kv_blocks_leaked: leaked,
  };
  console.log(JSON.stringify({ summary }));
  up.kill('SIGTERM');
  await new Promise((r) => up.once('exit', r));
  model.cleanup();
}

void run().then(() => process.exit(0), (err) => { console.error(err); process.exit(1); });
