// A worker process: the engine, its scheduler, the gRPC services of its role, a Prometheus
// endpoint, and its registration in Redis. SIGTERM drains: the worker stops taking work, finishes
// what it holds (bounded by drainTimeoutMs), deregisters and exits. Its role can change while it
// runs, on a command through Redis (role-switch.ts), unless it is pinned.
import { hostname, networkInterfaces } from 'node:os';
import { randomBytes } from 'node:crypto';
import pino, { type Logger } from 'pino';
import type { Device, KvWireDtype } from '@pdserve/engine';
import {
  authFailuresCounter, clusterSecurity, kvLeasesExpiredCounter, bindServer, canDecode, createGrpcServer, createWorkerMetrics, decodeService, prefillService, PrefixPublisher, startMetricsServer,
  WorkerDirectory, WorkerRegistration, type WorkerRole,
} from '@pdserve/common';
import { EngineHost } from './engine-host.ts';
import { ENGINE_STALL_MS, engineStall } from './engine-watchdog.ts';
import { ENGINE_NICE } from './engine-protocol.ts';
import { RoleSwitch } from './role-switch.ts';
import { decodeHandlers, prefillHandlers } from './services.ts';
import type { KvTransport } from './kv-transport.ts';
import { startKvDataServer } from './kv-data/server.ts';
import { closeKvDataConnections, configureKvSharedMemory, kvSharedMemoryBytesSent } from './kv-data/push.ts';
import { DEFAULT_KV_SHM_MIB } from './kv-data/shm-ring.ts';

export interface WorkerOptions {
  role: WorkerRole;
  model: string;
  redisUrl: string;
  host: string;
  grpcPort: number;
  metricsPort: number;
  /** Address other processes use to reach this worker: a host name, an IP, or 'auto'. */
  advertiseHost: string;
  device: Device;
  threads: number;
  /** ONNX Runtime's intra-op threads spin between pieces of work (default true); off where workers share cores. */
  ortSpinning?: boolean;
  kvBudgetMb?: number;
  maxSequences: number;
  maxModelLen?: number;
  blockTokens: number;
  prefillChunk: number;
  /** Automatic prefix caching (default on; it only uses idle KV slots, so it costs no memory). */
  prefixCache?: boolean;
  /** How this worker sends KV blocks (default fp32, exact); a decode worker reads whatever arrives. */
  kvWireDtype?: KvWireDtype;
  /** How KV goes to decode peers: 'tcp' (default) the peer's data channel when it has one, else gRPC; 'grpc' always gRPC. */
  kvTransport?: KvTransport;
  /** Port of this worker's TCP KV data channel (default 0: any free one); it binds to `host`. */
  kvDataPort?: number;
  /**
   * MiB of the shared-memory ring each data connection to a decode worker on the same host offers
   * (kv-data/shm-ring.ts); default DEFAULT_KV_SHM_MIB. 0 turns the same-host path off, as sender and as receiver.
   */
  kvShmMib?: number;
  id?: string;
  prefix?: string;
  heartbeatMs?: number;
  drainTimeoutMs?: number;
  /** How long the engine thread may stay silent while work is pending before the worker reports itself unhealthy. */
  engineStallMs?: number;
  /**
   * Nice value (0-19) for the engine thread; default ENGINE_NICE. On a machine with fewer cores than
   * runnable threads, the forward passes then yield to the I/O threads (this worker's gRPC and
   * heartbeats, the router, other workers' KV streams), whose latency is on every request's path.
   */
  engineNice?: number;
  /** Keep this role: ignore role-change commands (the planner leaves pinned workers alone). */
  pinRole?: boolean;
  /** After a role change, calls of the old kind already routed here are still taken this long. Default 10000. */
  roleGraceMs?: number;
  /** After a role change, how long the old work it holds may take before the change counts as settled. Default 60000. */
  roleSettleTimeoutMs?: number;
  logger?: Logger;
}

function advertisedHost(h: string): string {
  if (h !== 'auto') return h;
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return '127.0.0.1';
}

export interface RunningWorker {
  id: string;
  grpcAddress: string;
  metricsUrl: string;
  /** The role the worker serves now. */
  role(): WorkerRole;
  stop(): Promise<void>;
}

export async function startWorker(o: WorkerOptions): Promise<RunningWorker> {
  const id = o.id ?? `${o.role}-${hostname()}-${process.pid}-${randomBytes(2).toString('hex')}`;
  const log = (o.logger ?? pino({ name: 'pdserve-worker' })).child({ worker_id: id, role: o.role });
  // The engine (ONNX Runtime, KV cache, scheduler) runs on its own thread: a forward pass blocks the
  // thread it runs on, and this one must keep streaming KV blocks, tokens and heartbeats meanwhile.
  const host = await EngineHost.start({
    model: o.model,
    engine: {
      device: o.device, threads: o.threads, spinning: o.ortSpinning, maxSequences: o.maxSequences, maxModelLen: o.maxModelLen,
      kvBudgetBytes: o.kvBudgetMb !== undefined ? o.kvBudgetMb * 1024 * 1024 : undefined,
      blockTokens: o.blockTokens, prefillChunk: o.prefillChunk, prefixCache: o.prefixCache ?? true,
    },
    scheduler: { maxPrefillQueue: 256, maxReserveQueue: 256, reserveTimeoutMs: 30_000 },
    kvWireDtype: o.kvWireDtype ?? 'fp32',
    nice: o.engineNice ?? ENGINE_NICE,
  });
  host.kvTransport = o.kvTransport ?? 'tcp';
  const { config } = host.info;
  if (config.source.kind === 'dummy') log.warn({ model: o.model }, 'serving a DUMMY model: random weights, meaningless text');
  log.info({ model: config.name, kv_bytes: host.info.kvBytes, max_sequences: host.info.maxSequences, device: o.device, threads: o.threads }, 'engine loaded');

  const kvShmMib = o.kvShmMib ?? DEFAULT_KV_SHM_MIB;
  configureKvSharedMemory({ ringBytes: kvShmMib * 1024 * 1024 });
  const metrics = createWorkerMetrics({ role: o.role, workerId: id, kvSharedMemoryBytes: kvSharedMemoryBytesSent });
  // Prefix-aware routing: the block hashes this worker's prefix cache holds, published through Redis.
  const prefixPublisher = host.info.prefixRoot
    ? new PrefixPublisher({ redisUrl: o.redisUrl, prefix: o.prefix, workerId: id, root: host.info.prefixRoot, blockTokens: host.info.blockTokens, logger: log })
    : undefined;
  host.onPrefixEvents = (e) => prefixPublisher?.apply(e);
  host.onStep = (s) => {
    if (s.phase === 'prefill') metrics.observeStep({ phase: 'prefill', seconds: s.ms / 1000, tokens: s.tokens });
    else metrics.observeStep({ phase: 'decode', seconds: s.ms / 1000, batchSize: s.batch });
  };

  let draining = false;
  const stalledMs = () => engineStall(host, performance.now(), o.engineStallMs ?? ENGINE_STALL_MS);
  // Which addresses a prefill may push KV to: decode-capable workers in this cluster's registry.
  // A miss re-reads Redis once (a decode worker that registered since the last poll). Every role
  // keeps one: a decode worker may become a prefilling one without a restart.
  const directory = new WorkerDirectory({ redisUrl: o.redisUrl, prefix: o.prefix, logger: log });
  const knownDecode = (address: string) => directory.list().some((w) => canDecode(w.role) && w.grpc_address === address && w.lost_since === undefined);
  const isDecodeAddress = async (address: string) => knownDecode(address) || (await directory.refresh(), knownDecode(address));
  // Set once the registration exists: the role switch advertises through it.
  let registration: WorkerRegistration | undefined;
  const roles = new RoleSwitch({
    role: o.role, pinned: o.pinRole ?? false, graceMs: o.roleGraceMs ?? 10_000, settleTimeoutMs: o.roleSettleTimeoutMs ?? 60_000,
    log,
    advertise: (role, change) => registration?.setRole(role, change) ?? Promise.resolve(false),
    held: () => ({ prefill: host.heldPrefills, decode: host.heldDecodes }),
    onChanged: (from, to) => metrics.changedRole(from, to),
    onRejected: (reason) => metrics.roleChangeRejected.inc({ reason }),
    isStopping: () => draining,
  });
  // Calls without this cluster's token are refused before any handler runs (cluster-security.ts).
  const authFailures = authFailuresCounter(metrics.registry);
  const leasesExpired = kvLeasesExpiredCounter(metrics.registry);
  const server = createGrpcServer({
    onAuthFailure: (f) => { authFailures.inc({ service: f.service }); log.warn(f, 'gRPC call refused: cluster token'); },
  });
  const publicHost = advertisedHost(o.advertiseHost);
  const port = await bindServer(server, `${o.host}:${o.grpcPort}`);
  const grpcAddress = `${publicHost}:${port}`;
  // The bulk KV data channel (kv-data/): every worker listens, since a role can change at run time;
  // with --kv-transport grpc it advertises none, so its peers push over gRPC. Its connections carry
  // the cluster token in their first frame, but it has no TLS: with --tls-* the KV goes over gRPC.
  const tlsCluster = clusterSecurity().tls !== undefined;
  if (tlsCluster && o.kvTransport !== 'grpc') log.info('TLS configured: KV blocks go over gRPC (the TCP data channel has no TLS)');
  const kvData = o.kvTransport === 'grpc' || tlsCluster ? undefined : await startKvDataServer({
    host: o.host, port: o.kvDataPort ?? 0, engine: host, log, onKvFailure: (r) => metrics.kvTransferFailed(r), sharedMemory: kvShmMib > 0,
    onAuthFailure: (reason, peer) => { authFailures.inc({ service: 'kv_data' }); log.warn({ reason, peer }, 'KV data connection refused: cluster token'); },
  });
  const ctx = {
    kvDataAddress: () => (kvData ? `${publicHost}:${kvData.port}` : ''),
    host, log, selfAddress: grpcAddress, workerId: id, role: () => roles.role,
    accepts: (kind: 'prefill' | 'decode') => roles.accepts(kind), isDraining: () => draining,
    isDecodeAddress,
    onKvTransfer: (t: { seconds: number; bytes: number; rawBytes: number }) => metrics.observeKvTransfer({ ...t, wireDtype: o.kvWireDtype ?? 'fp32' }),
    onKvFailure: (r: 'checksum' | 'timeout' | 'peer_lost' | 'rejected') => metrics.kvTransferFailed(r),
    onLeaseExpired: (reason: 'kv_never_arrived' | 'kv_push_stalled') => leasesExpired.inc({ reason }),
  };
  // Every worker serves both services so a misrouted call gets a clear UNAVAILABLE, not UNIMPLEMENTED.
  server.addService(prefillService(), prefillHandlers(ctx));
  server.addService(decodeService(), decodeHandlers(ctx));

  const load = () => {
    const l = host.load;
    metrics.setKvBlocks({ free: l.free_kv_blocks, total: l.total_kv_blocks });
    if (typeof l.prefix_cache_queries === 'number') {
      metrics.setPrefixCache({ queries: l.prefix_cache_queries, hits: Number(l.prefix_cache_hits), blocks: Number(l.prefix_cache_blocks), totalBlocks: l.total_kv_blocks });
    }
    metrics.numSequencesRunning.set(l.running);
    metrics.numSequencesWaiting.set(l.waiting + l.queue_len);
    return l;
  };
  const metricsServer = await startMetricsServer({
    host: o.host, port: o.metricsPort, registry: metrics.registry,
    health: () => {
      const stall = stalledMs();
      return {
        ok: !draining && stall === undefined, worker_id: id, role: roles.role, pinned: o.pinRole ?? false, role_change: roles.lastChange,
        ...(stall !== undefined ? { engine_stalled_ms: Math.round(stall) } : {}), load: load(),
      };
    },
  });
  const metricsUrl = `http://${publicHost}:${metricsServer.port}/metrics`;
  registration = new WorkerRegistration({
    redisUrl: o.redisUrl, prefix: o.prefix, heartbeatMs: o.heartbeatMs,
    worker: { id, role: o.role, grpc_address: grpcAddress, metrics_url: metricsUrl, model: config.name, ...(o.pinRole ? { pinned: true } : {}) },
    getLoad: () => { prefixPublisher?.keepAlive(); return load(); }, logger: log,
    onDesiredRole: (read) => roles.handle(read),
  });
  await registration.start();
  await directory.start();
  // The watchdog: a stalled engine thread turns the advertised state to `unhealthy` (the router
  // stops choosing this worker) and back to `ready` once the thread speaks again.
  const watchdog = setInterval(() => {
    if (draining) return;
    const stall = stalledMs();
    const want = stall === undefined ? 'ready' : 'unhealthy';
    if (registration!.state === want) return;
    if (stall !== undefined) log.error({ engine_stalled_ms: Math.round(stall) }, 'engine thread stalled with work pending');
    else log.info('engine thread responsive again');
    void registration!.setState(want);
  }, 1000);
  watchdog.unref();
  log.info({ grpc: grpcAddress, kv_data: ctx.kvDataAddress() || undefined, metrics: metricsUrl, pinned: o.pinRole ?? false }, 'worker ready');

  let stopping: Promise<void> | undefined;
  const stop = () => (stopping ??= (async () => {
    draining = true;
    clearInterval(watchdog);
    await registration!.setState('draining');
    const deadline = Date.now() + (o.drainTimeoutMs ?? 30_000);
    while (!host.idle && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await registration!.stop();
    await prefixPublisher?.close();
    await directory.stop();
    await host.stop();
    await kvData?.close();
    closeKvDataConnections();
    server.forceShutdown();
    await metricsServer.close();
    log.info('worker stopped');
  })());
  return { id, grpcAddress, metricsUrl, role: () => roles.role, stop };
}
