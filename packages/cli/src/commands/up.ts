// `pdserve up` (also `pnpm start`): a whole local cluster in one command. Starts redis-server on a
// free port (unless --redis-url), the router and the workers as child processes, prints
// `ready http://HOST:PORT` once /ready answers, and on Ctrl-C or SIGTERM stops every child.
//
// Stopping: SIGTERM to every child, then up to the workers' drain bound (--drain-timeout-s, passed
// to every worker) plus STOP_MARGIN_MS before SIGKILL, so a draining worker is never cut short.
// Failure: a worker or the planner that dies is restarted (../supervisor.ts: backoff, a restart
// budget, pdserve_worker_restarts_total{role,reason} on up's own /metrics, --metrics-port) while the
// rest keep serving. Only the router, or the redis-server `up` started, exiting on its own stops
// the whole cluster and exits 1 with a message naming it: a cluster on a dead registry cannot admit
// new workers or see failed ones, so it says so and stops rather than stay "ready".
import { InvalidArgumentError, type Command } from 'commander';
import { availableParallelism } from 'node:os';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { createLogger, createSupervisionMetrics, DEFAULT_SLO_TARGETS, freePort, startMetricsServer, startRedisServer, Supervisor, SUPERVISOR_PID_ENV } from '@pdserve/common';
import { KV_WIRE_DTYPES } from '@pdserve/engine';
import { PLACEMENT_MODES } from '@pdserve/router';
import { DEFAULT_KV_SHM_MIB } from '@pdserve/worker';
import { resolveDefaultModel } from '../default-model.ts';
import { RestartingChildren } from '../supervisor.ts';
import { device, kvWireDtype, niceValue, oneOf, positiveInt, positiveNumber } from './options.ts';

const MAIN = fileURLToPath(new URL('../main.ts', import.meta.url));

/** Time past the workers' drain bound for deregistration and exit. */
export const STOP_MARGIN_MS = 10_000;
/** One readiness probe's bound: a router that accepts the connection but never answers is not ready. */
export const READY_PROBE_TIMEOUT_MS = 2_000;

interface UpFlags {
  model?: string;
  host: string;
  port: number;
  prefill?: number;
  decode?: number;
  unified?: number;
  redisUrl?: string;
  device: string;
  threads?: number;
  maxSequences: number;
  kvBudgetMb?: number;
  prefillChunk?: number;
  prefixCache: 'on' | 'off';
  prefixRouting: 'on' | 'off';
  kvWireDtype: string;
  kvTransport: string;
  kvShmMib: number;
  readyTimeoutS: number;
  drainTimeoutS: number;
  engineStallS?: number;
  engineNice?: number;
  pin?: boolean;
  ortSpinning: 'on' | 'off' | 'auto';
  planner: 'on' | 'off';
  pinRoles?: boolean;
  roleGraceMs?: number;
  sloTtftMs: number;
  sloTpotMs: number;
  admission: 'slo' | 'off';
  ttftCorrection: 'on' | 'off';
  prefillPlacement: string;
  localPrefillMaxTokens?: number;
  maxMigrations: number;
  metricsPort: number;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
}

/** Supervisor SIGTERM-to-SIGKILL grace: a worker may drain for its whole bound and still exit on its own. */
export function stopGraceMs(drainTimeoutMs: number, marginMs = STOP_MARGIN_MS): number {
  return drainTimeoutMs + marginMs;
}

/**
 * Whether the workers' ONNX Runtime threads spin between pieces of work. `auto`: only while every
 * thread can have a core of its own (threads 0 means one per core, so any second worker shares).
 * A spinning pool on a shared core takes the time another worker's pass needs (BENCHMARKS.md).
 */
export function ortSpinning(flag: 'on' | 'off' | 'auto', workers: number, threadsPerWorker: number, cores: number): 'on' | 'off' {
  if (flag !== 'auto') return flag;
  const threads = workers * (threadsPerWorker === 0 ? cores : threadsPerWorker);
  return threads > cores ? 'off' : 'on';
}

/** The workers `up` starts when told neither --prefill, --decode nor --unified. */
export const DEFAULT_START: ReadonlyArray<readonly [StartRole, number]> = [['unified', 2]];
type StartRole = 'prefill' | 'decode' | 'unified';

/**
 * The roles `up` starts its workers in. Without role flags: two unified workers, and the planner
 * splits them once its measurements say a split serves more. A unified worker serves any mix, so
 * no core waits for work of one kind while the planner has nothing measured yet; 1P+1D, the old
 * start, stranded a core on chat and summarize for the 25-35 s before the planner's first move,
 * and lost about half the requests of that time (BENCHMARKS.md, "The default starts as two
 * unified workers"). --prefill or --decode alone take 1 for the other.
 */
export function startingRoles(o: Pick<UpFlags, 'prefill' | 'decode' | 'unified'>): Array<[StartRole, number]> {
  if (o.unified) return [['unified', o.unified]];
  if (o.prefill === undefined && o.decode === undefined) return DEFAULT_START.map(([r, n]) => [r, n]);
  return [['prefill', o.prefill ?? 1], ['decode', o.decode ?? 1]];
}

/**
 * Whether `up` pins its workers to cores of their own: --pin / --no-pin, else when every worker
 * starts unified and each can have at least one core. Unified workers are busy at the same time,
 * and one whose prompt pass takes every core stalls the other's decode steps: on chat, two unified
 * workers with 1 thread each on their own core served 3.6 req/s at 90% of requests within the SLOs,
 * sharing both cores (2 threads each) below 1.5 (BENCHMARKS.md, "The default starts as two
 * unified workers"). A split cluster shares the cores: its prefill worker is busy while the decode
 * worker waits, and the reverse (BENCHMARKS.md, "Workers that share the cores").
 */
export function pinWorkers(flag: boolean | undefined, roles: ReadonlyArray<readonly [StartRole, number]>, cores: number): boolean {
  if (flag !== undefined) return flag;
  const workers = roles.reduce((sum, [, count]) => sum + count, 0);
  return workers <= cores && roles.every(([role, count]) => role === 'unified' || count === 0);
}

/**
 * The CPUs this process may run on, by number: Linux's Cpus_allowed_list (a container or a
 * `taskset` around `up` may allow CPUs 4-7 only, and pinning a worker to CPU 0 there fails), else
 * 0..availableParallelism-1.
 */
export function allowedCpus(status = readProcStatus()): number[] {
  const list = /^Cpus_allowed_list:\s*(\S+)/m.exec(status ?? '')?.[1];
  const cpus: number[] = [];
  for (const part of list?.split(',') ?? []) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) return fallbackCpus();
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    if (!(hi >= lo) || hi - lo > 4096) return fallbackCpus();
    for (let c = lo; c <= hi; c++) cpus.push(c);
  }
  return cpus.length > 0 ? cpus : fallbackCpus();
}

function readProcStatus(): string | undefined {
  try { return readFileSync('/proc/self/status', 'utf8'); } catch { return undefined; }
}

function fallbackCpus(): number[] {
  return Array.from({ length: availableParallelism() }, (_, i) => i);
}

/** The taskset CPU list of worker i of n: a block of cpus / n of its own, or one CPU round robin when n > cpus. */
export function workerCores(i: number, n: number, cpus: readonly number[]): string {
  const k = Math.floor(cpus.length / n);
  if (k < 1) return String(cpus[i % cpus.length]);
  return cpus.slice(i * k, i * k + k).join(',');
}

/** Polls `url`/ready until it answers 2xx; each probe is bounded, so a hung router cannot stall `up`. */
export async function waitReady(url: string, timeoutMs: number, failed: () => string | undefined, probeTimeoutMs = READY_PROBE_TIMEOUT_MS, minWorkers = 0): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const why = failed();
    if (why) throw new Error(why);
    try {
      const res = await fetch(`${url}/ready${minWorkers > 0 ? `?min_workers=${minWorkers}` : ''}`, { signal: AbortSignal.timeout(probeTimeoutMs) });
      if (res.ok) return;
    } catch { /* not listening yet, or the probe timed out */ }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`cluster not ready after ${timeoutMs / 1000} s`);
}

function plannerFlag(value: string): 'on' | 'off' {
  if (value !== 'on' && value !== 'off') throw new InvalidArgumentError(`expected on or off, got ${value}`);
  return value;
}

export function register(program: Command): void {
  program
    .command('up')
    .description('start a local cluster: redis, router and workers (two unified workers unless told --prefill/--decode/--unified; the planner splits them)')
    .option('--model <dir>', 'model directory (default: $PDSERVE_MODEL, else stories260K from the model cache or fetched now, else a dummy model)')
    .option('--host <host>', 'router interface', '127.0.0.1')
    .option('--port <n>', 'router HTTP port', positiveInt, 8000)
    .option('--prefill <n>', 'prefill workers (with --decode: default 1 each; with neither, nor --unified, the cluster starts as 2 unified workers)', positiveInt)
    .option('--decode <n>', 'decode workers (see --prefill)', positiveInt)
    .option('--unified <n>', 'unified workers (prefill and decode in one process) instead of --prefill/--decode', positiveInt)
    .option('--redis-url <url>', 'use this Redis instead of starting redis-server (default: $PDSERVE_REDIS_URL; a password belongs there, not in `ps`)', process.env.PDSERVE_REDIS_URL)
    .option('--device <name>', 'cpu, webgpu or cuda', device, 'cpu')
    .option('--threads <n>', 'ONNX Runtime threads per worker (default: one per core, so a pass can use every core another worker leaves idle; --ort-spinning auto then lets idle threads sleep)', positiveInt)
    .option('--max-sequences <n>', 'sequences per worker', positiveInt, 16)
    .option('--kv-budget-mb <n>', 'KV cache budget per worker, MiB', positiveInt)
    .option('--prefill-chunk <n>', 'prompt tokens per prefill pass (worker default 256)', positiveInt)
    .option('--prefix-cache <on|off>', "every worker's automatic prefix caching (idle KV slots keep their prompts' blocks; no extra memory)", oneOf('--prefix-cache', ['on', 'off'] as const), 'on')
    .option('--prefix-routing <on|off>', "the router weighs the workers' cached prompt prefixes against load (off: load only)", oneOf('--prefix-routing', ['on', 'off'] as const), 'on')
    .option('--kv-wire-dtype <dtype>', `how prefill workers send KV blocks: ${KV_WIRE_DTYPES.join(', ')} (fp32 is exact)`, kvWireDtype, 'fp32')
    .option('--kv-transport <tcp|grpc>', 'how prefill workers send KV: tcp = raw-TCP data channel negotiated over gRPC (default), grpc = Decode.PushKv', oneOf('--kv-transport', ['tcp', 'grpc'] as const), 'tcp')
    .option('--kv-shm-mib <n>', 'tcp transport: MiB of the shared-memory ring (/dev/shm) per prefill->decode connection that carries KV payloads between workers on this host (0 = off)', positiveInt, DEFAULT_KV_SHM_MIB)
    .option('--ready-timeout-s <n>', 'give up if the cluster is not ready by then', positiveInt, 120)
    .option('--drain-timeout-s <n>', 'how long a stopping worker may finish its requests (the stop grace is this plus 10 s)', positiveInt, 30)
    .option('--engine-nice <n>', "passed to every worker: the engine thread's nice value (default: the worker's, 10)", niceValue)
    .option('--engine-stall-s <s>', "passed to every worker: report unhealthy while its engine thread is silent this long with work pending (default: the worker's, 30)", positiveNumber)
    .option('--pin', 'pin each worker to cores of its own (taskset): worker i of n gets cores i*k..i*k+k-1, k = cores / n (core i mod cores when n > cores), and k threads unless --threads (default: pinned when every worker starts unified)')
    .option('--no-pin', 'every worker may use every core (one thread per core unless --threads)')
    .option('--ort-spinning <on|off|auto>', "passed to every worker: ONNX Runtime's idle threads spin or sleep; auto = off when the workers' threads outnumber the cores (they share cores), else on", oneOf('--ort-spinning', ['on', 'off', 'auto'] as const), 'auto')
    .option('--planner <on|off>', 'run the planner, which moves workers between roles as the load changes', plannerFlag, 'on')
    .option('--pin-roles', 'start every worker with --pin-role: roles stay as given')
    .option('--role-grace-ms <ms>', "workers' grace period for old-kind calls after a role change", positiveInt)
    // SLO admission is on by default: the defaults are generous for a small model on CPU (docs/slo.md)
    // and keep an overloaded cluster from queueing into a collapse.
    .option('--slo-ttft-ms <ms>', 'default TTFT SLO (admission and metrics; a request\'s `slo` overrides it; 0 = none)', positiveInt, DEFAULT_SLO_TARGETS.ttftSeconds * 1000)
    .option('--slo-tpot-ms <ms>', 'default TPOT SLO (admission and metrics; 0 = none)', positiveInt, DEFAULT_SLO_TARGETS.tpotSeconds * 1000)
    .option('--admission <mode>', 'slo: refuse (503) what the estimates say would miss its SLO; off: never', oneOf('--admission', ['slo', 'off'] as const), 'slo')
    .option('--ttft-correction <on|off>', "passed to the router: admission scales each TTFT estimate by the estimates' measured error (off: as estimated)", oneOf('--ttft-correction', ['on', 'off'] as const), 'on')
    .option('--prefill-placement <mode>', 'auto: decide per request; remote: always a prefill worker; local: always the decode worker', oneOf('--prefill-placement', PLACEMENT_MODES), 'auto')
    .option('--local-prefill-max-tokens <n>', 'auto placement: prompts longer than this always go to a prefill worker', positiveInt)
    .option('--max-migrations <n>', "passed to the router: times a request is moved to other workers after its worker fails mid-request (0 = never)", positiveInt, 3)
    .option('--metrics-port <n>', "up's own /metrics (pdserve_worker_restarts_total); 0 = a free port, printed at start", positiveInt, 0)
    .option('--tls-cert <path>', 'passed to the router and every worker: PEM certificate for internal gRPC')
    .option('--tls-key <path>', 'passed to the router and every worker: PEM key of --tls-cert')
    .option('--tls-ca <path>', 'passed to the router and every worker: PEM CA, mutual TLS')
    .action(async (o: UpFlags) => {
      const log = createLogger('pdserve-up');
      const model = await resolveDefaultModel(log, o.model);
      const redis = o.redisUrl ? undefined : await startRedisServer();
      const redisUrl = o.redisUrl ?? redis!.url;
      let failure: string | undefined;
      let stopping = false;
      const supervisor = new Supervisor({
        output: 'inherit',
        logger: log,
        graceMs: stopGraceMs(o.drainTimeoutS * 1000),
        // Supervised children (workers, planner) are restarted by `restarting`; anything else is fatal.
        onUnexpectedExit: (e) => { if (!restarting.has(e.name)) failure ??= `${e.name} exited unexpectedly (code ${e.code}, signal ${e.signal})`; },
      });
      const { registry: upMetrics, restarts: restartsTotal } = createSupervisionMetrics();
      const restarting = new RestartingChildren({ log, onRestart: (role, reason) => restartsTotal.inc({ role, reason }) });
      const metricsServer = await startMetricsServer({ host: o.host, port: o.metricsPort, registry: upMetrics });
      process.stdout.write(`supervision metrics http://${o.host === '0.0.0.0' ? '127.0.0.1' : o.host}:${metricsServer.port}/metrics\n`);
      void redis?.exited.then(({ code, signal }) => {
        if (!stopping) failure ??= `redis-server (the cluster's registry) exited unexpectedly (code ${code}, signal ${signal})`;
      });
      const cpus = allowedCpus();
      const cores = cpus.length;
      let nextCore = 0;
      // Secrets reach the children by environment, not argv (`ps` shows argv to every local user):
      // the cluster token ($PDSERVE_CLUSTER_TOKEN if set, to join a cluster, else a fresh random one
      // per `up`) and the Redis URL, which may carry a password.
      const secrets = { PDSERVE_CLUSTER_TOKEN: process.env.PDSERVE_CLUSTER_TOKEN || randomBytes(32).toString('base64url'), PDSERVE_REDIS_URL: redisUrl };
      const tls = [...(o.tlsCert ? ['--tls-cert', o.tlsCert] : []), ...(o.tlsKey ? ['--tls-key', o.tlsKey] : []), ...(o.tlsCa ? ['--tls-ca', o.tlsCa] : [])];
      const roles = startingRoles(o);
      const workerCount = roles.reduce((sum, [, count]) => sum + count, 0);
      const pin = pinWorkers(o.pin, roles, cores);
      const node = (name: string, args: string[], pinToCores = false) => {
        const argv = [process.execPath, '--import', 'tsx', MAIN, ...args];
        // taskset execs the program: same process, so signals and the IPC channel still reach it.
        const pinned = pinToCores ? ['taskset', '-c', workerCores(nextCore++, workerCount, cpus), ...argv] : argv;
        return () => supervisor.spawn({ name, command: pinned[0], args: pinned.slice(1), env: { [SUPERVISOR_PID_ENV]: String(process.pid), ...secrets } });
      };
      // Unpinned, every worker may use every core (one thread per core); pinned, its own share.
      const threads = o.threads ?? (pin ? Math.max(1, Math.floor(cores / workerCount)) : cores);
      const common = ['--model', model, ...tls, '--device', o.device, '--threads', String(threads), '--max-sequences', String(o.maxSequences), '--drain-timeout-s', String(o.drainTimeoutS)];
      if (o.kvBudgetMb !== undefined) common.push('--kv-budget-mb', String(o.kvBudgetMb));
      if (o.roleGraceMs !== undefined) common.push('--role-grace-ms', String(o.roleGraceMs));
      if (o.engineStallS !== undefined) common.push('--engine-stall-s', String(o.engineStallS));
      if (o.engineNice !== undefined) common.push('--engine-nice', String(o.engineNice));
      if (o.prefillChunk !== undefined) common.push('--prefill-chunk', String(o.prefillChunk));
      common.push('--kv-wire-dtype', o.kvWireDtype, '--prefix-cache', o.prefixCache, '--kv-transport', o.kvTransport, '--kv-shm-mib', String(o.kvShmMib));
      common.push('--ort-spinning', ortSpinning(o.ortSpinning, workerCount, threads, cores));
      const pinRole = o.pinRoles ? ['--pin-role'] : [];
      for (const [role, count] of roles) for (let i = 0; i < count; i++) restarting.add(`${role}-${i}`, role, node(`${role}-${i}`, ['worker', '--role', role, ...common, ...pinRole], pin));
      if (o.planner === 'on') restarting.add('planner', 'planner', node('planner', ['planner']));
      const port = o.port || (await freePort());
      const routing = ['--admission', o.admission, '--ttft-correction', o.ttftCorrection, '--prefill-placement', o.prefillPlacement, '--prefix-routing', o.prefixRouting, '--max-migrations', String(o.maxMigrations)];
      if (o.sloTtftMs > 0) routing.push('--slo-ttft-ms', String(o.sloTtftMs));
      if (o.sloTpotMs > 0) routing.push('--slo-tpot-ms', String(o.sloTpotMs));
      if (o.localPrefillMaxTokens !== undefined) routing.push('--local-prefill-max-tokens', String(o.localPrefillMaxTokens));
      node('router', ['router', '--model', model, ...tls, '--host', o.host, '--port', String(port), ...routing])();
      const shutdown = async (code: number) => {
        if (stopping) return;
        stopping = true;
        restarting.stop();
        await supervisor.stop();
        await metricsServer.close();
        await redis?.stop();
        process.exit(code);
      };
      supervisor.handleSignals({ exit: false, onSignal: () => void shutdown(0) });
      const url = `http://${o.host === '0.0.0.0' ? '127.0.0.1' : o.host}:${port}`;
      try {
        // Every worker started here, not just one of each kind: a benchmark or test that starts at
        // `ready` must not see the first requests all land on the one worker up so far.
        await waitReady(url, o.readyTimeoutS * 1000, () => failure, READY_PROBE_TIMEOUT_MS, workerCount);
      } catch (err) {
        log.error({ err: (err as Error).message }, 'cluster failed to start');
        await shutdown(1);
        return;
      }
      process.stdout.write(`ready ${url}\n`);
      const watch = setInterval(() => {
        if (!failure || stopping) return;
        clearInterval(watch);
        log.error({ failure }, 'a cluster process died; stopping the cluster');
        process.stderr.write(`pdserve up: ${failure}; stopping the cluster\n`);
        void shutdown(1);
      }, 200);
    });
}
