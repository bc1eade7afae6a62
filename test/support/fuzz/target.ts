// The live cluster under fuzzing, and the invariants checked around every input: every process of
// `pdserve up` is alive, a golden request still gives the golden text, and every worker's KV
// blocks are all free once the dust settles.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { RawWorkerClient } from './raw-client.ts';
import { startCluster, type TestCluster } from '../cluster.ts';

export interface FuzzWorker {
  id: string;
  role: 'prefill' | 'decode' | 'unified';
  grpc: string;
  healthUrl: string;
}

export interface Golden {
  prompt: string;
  maxTokens: number;
  text: string;
}

export interface FuzzTarget {
  url: string;
  modelName: string;
  vocab: number;
  maxModelLen: number;
  blockTokens: number;
  blockBytes: number;
  workers: FuzzWorker[];
  /** The worker that takes Prefill calls (a unified worker in unified mode). */
  prefill: FuzzWorker;
  /** The worker that takes Generate/PushKv calls. */
  decode: FuzzWorker;
  client(address: string): RawWorkerClient;
  up: ChildProcess;
  /** Every process `pdserve up` started (redis-server, router, workers), named by pid. */
  children: Map<number, string>;
  golden: Golden;
  close(): void;
}

async function getJson(url: string, timeoutMs = 5_000): Promise<any> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  return res.json();
}

function childProcesses(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  const r = spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' });
  for (const p of r.stdout.split('\n').filter(Boolean).map(Number)) {
    try { out.set(p, readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').filter(Boolean).slice(-12).join(' ')); } catch { /* gone already */ }
  }
  return out;
}

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[2].startsWith('Z');
  } catch {
    return false;
  }
}

export async function connectTarget(opts: { url: string; modelDir: string; modelName: string; up: ChildProcess; workers: number; golden: Golden }): Promise<FuzzTarget> {
  const deadline = Date.now() + 20_000;
  let listed: any[] = [];
  while (Date.now() < deadline) {
    listed = (await getJson(`${opts.url}/workers`)).workers;
    if (listed.length === opts.workers) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  if (listed.length !== opts.workers) throw new Error(`expected ${opts.workers} workers, /workers lists ${listed.length}`);
  const model = (await getJson(`${opts.url}/v1/models`)).data[0];
  const cfg = JSON.parse(readFileSync(join(opts.modelDir, 'config.json'), 'utf8'));
  const blockTokens = listed[0].load.kv_block_tokens as number;
  const workers: FuzzWorker[] = listed.map((w) => ({ id: w.id, role: w.role, grpc: w.grpc_address, healthUrl: String(w.metrics_url).replace(/metrics$/, 'health') }));
  const clients = new Map<string, RawWorkerClient>();
  const client = (address: string) => {
    let c = clients.get(address);
    if (!c) clients.set(address, (c = new RawWorkerClient(address)));
    return c;
  };
  return {
    url: opts.url, modelName: opts.modelName, vocab: model.vocab_size, maxModelLen: model.max_model_len,
    blockTokens, blockBytes: cfg.n_layers * 2 * cfg.n_kv_heads * cfg.head_dim * 4 * blockTokens,
    workers,
    prefill: workers.find((w) => w.role === 'prefill') ?? workers.find((w) => w.role === 'unified')!,
    decode: workers.find((w) => w.role === 'decode') ?? workers.find((w) => w.role === 'unified')!,
    client,
    up: opts.up,
    children: childProcesses(opts.up.pid!),
    golden: opts.golden,
    close: () => { for (const c of clients.values()) c.close(); clients.clear(); },
  };
}

/** What died, if anything: `pdserve up` itself, one of its children, or a worker that stopped answering. */
export async function deadProcesses(t: FuzzTarget): Promise<string | undefined> {
  if (t.up.exitCode !== null || t.up.signalCode !== null) return `pdserve up exited (code ${t.up.exitCode}, signal ${t.up.signalCode})`;
  const gone = [...t.children].filter(([pid]) => !alive(pid)).map(([pid, cmd]) => `pid ${pid} (${cmd})`);
  if (gone.length > 0) return `process exited: ${gone.join('; ')}`;
  for (const w of t.workers) {
    try {
      await fetch(w.healthUrl, { signal: AbortSignal.timeout(5_000) });
    } catch (err) {
      return `worker ${w.role} ${w.id} does not answer /health: ${(err as Error).message}`;
    }
  }
  return undefined;
}

/** The golden request: the cluster still serves, and serves the right text. */
export async function checkGolden(t: FuzzTarget): Promise<string | undefined> {
  try {
    const res = await fetch(`${t.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(15_000),
      body: JSON.stringify({ model: t.modelName, prompt: t.golden.prompt, max_tokens: t.golden.maxTokens, temperature: 0 }),
    });
    const body = (await res.json()) as any;
    if (res.status !== 200) return `golden request answered ${res.status}: ${JSON.stringify(body).slice(0, 300)}`;
    if (body.choices?.[0]?.text !== t.golden.text) return `golden request gave other text: ${JSON.stringify(body.choices?.[0]?.text).slice(0, 300)}`;
    return undefined;
  } catch (err) {
    return `golden request failed: ${(err as Error).message}`;
  }
}

/** Polls the router's /workers until every worker reports all KV blocks free and nothing queued. */
export async function checkKvFree(t: FuzzTarget, timeoutMs = 15_000): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs;
  let last: any[] = [];
  for (;;) {
    try {
      last = (await getJson(`${t.url}/workers`)).workers;
      const settled = last.length === t.workers.length && last.every((w) =>
        w.load.free_kv_blocks === w.load.total_kv_blocks && w.load.running === 0 && w.load.waiting === 0 && w.load.queue_len === 0);
      if (settled) return undefined;
    } catch { /* retried until the deadline */ }
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const live = await Promise.all(t.workers.map(async (w) => {
    try { return { id: w.id, role: w.role, load: (await getJson(w.healthUrl, 2_000)).load }; } catch (err) { return { id: w.id, error: (err as Error).message }; }
  }));
  return `KV blocks not all free ${timeoutMs} ms after the inputs: /workers ${JSON.stringify(last.map((w) => ({ role: w.role, load: w.load })))}; live ${JSON.stringify(live)}`;
}

/**
 * Every worker's own /health (live, unlike the registry's copy, which lags by a heartbeat) shows
 * all KV blocks free, polled briefly: after a run every call has ended, so nothing may hold any.
 */
export async function liveKvLeak(t: FuzzTarget, timeoutMs = 3_000): Promise<string | undefined> {
  const deadline = Date.now() + timeoutMs;
  let loads: any[] = [];
  for (;;) {
    try {
      loads = await Promise.all(t.workers.map(async (w) => (await getJson(w.healthUrl, 2_000)).load));
      if (loads.every((l) => l.free_kv_blocks === l.total_kv_blocks && l.running === 0 && l.waiting === 0 && l.queue_len === 0)) return undefined;
    } catch { /* retried until the deadline */ }
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const brief = (l: any) => l && { free: l.free_kv_blocks, total: l.total_kv_blocks, running: l.running, waiting: l.waiting, queue: l.queue_len, free_sequences: l.free_sequences };
  return `KV still held ${timeoutMs} ms after every call of the run ended: ${JSON.stringify(t.workers.map((w, i) => ({ [w.role]: brief(loads[i]) })))}`;
}

/** All three invariants; the problems found, empty when the cluster is whole. */
export async function clusterProblems(t: FuzzTarget): Promise<string[]> {
  const dead = await deadProcesses(t);
  if (dead) return [dead];
  return [await checkGolden(t), await checkKvFree(t)].filter((p): p is string => p !== undefined);
}

export function readGolden(path: string): Golden {
  const g = JSON.parse(readFileSync(path, 'utf8'));
  return { prompt: g.prompt, maxTokens: g.positions + 1 - g.prompt_ids.length, text: g.completion_text };
}

/**
 * A live cluster for fuzzing that starts again when a finding killed it, so that each property
 * (and, in scripts/fuzz.ts, each round) starts on a whole cluster.
 */
export class FuzzCluster {
  target: FuzzTarget | undefined;
  private cluster: TestCluster | undefined;
  restarts = 0;

  constructor(private readonly opts: { modelDir: string; args: string[]; workers: number; golden: Golden }) {}

  async start(): Promise<FuzzTarget> {
    this.cluster = await startCluster(this.opts.modelDir, this.opts.args);
    this.target = await connectTarget({ url: this.cluster.url, modelDir: this.opts.modelDir, modelName: this.cluster.modelName, up: this.cluster.proc, workers: this.opts.workers, golden: this.opts.golden });
    return this.target;
  }

  /** The target, restarted first when a process of it has died or it holds leaked KV blocks. */
  async whole(): Promise<FuzzTarget> {
    if (this.target && (await deadProcesses(this.target)) === undefined && (await liveKvLeak(this.target, 1_000)) === undefined) return this.target;
    if (this.target) this.restarts++;
    await this.stop();
    return this.start();
  }

  /** How much `pdserve up` (and every process under it) has printed so far: a mark for `errorsSince`. */
  mark(): number {
    return this.cluster?.output().length ?? 0;
  }

  /**
   * What the cluster said went wrong since the mark: error and fatal log lines (not the router's
   * SLO refusals, which are the fuzzer's doing) and a worker's dying words on stderr, abbreviated.
   */
  errorsSince(mark: number, max = 6): string[] {
    const text = this.cluster?.output().slice(mark) ?? '';
    const out: string[] = [];
    for (const line of text.split('\n')) {
      let j: any;
      try { j = JSON.parse(line); } catch { j = undefined; }
      if (j && typeof j === 'object') {
        if (j.level < 50) continue;
        const err = j.err?.message ?? j.failure ?? j.error ?? '';
        if (j.msg === 'request failed' && /SLO|exceeds the/.test(String(err))) continue;
        out.push(`${j.name ?? ''}: ${j.msg ?? ''}${j.child ? ` ${j.child} (code ${j.code}, signal ${j.signal})` : ''}${err ? `: ${String(err).slice(0, 300)}` : ''}`);
      } else if (/engine thread failed|Error|rror:|at .*\.ts:\d+/.test(line)) {
        out.push(line.trim().slice(0, 400));
      }
    }
    return out.slice(-max);
  }

  async stop(): Promise<void> {
    const children = [...(this.target?.children.keys() ?? [])];
    this.target?.close();
    this.target = undefined;
    const c = this.cluster;
    this.cluster = undefined;
    if (!c) return;
    await c.stop();
    // `pdserve up` may have left children behind when it died with them; never leave them running.
    for (const pid of children) if (alive(pid)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
}
