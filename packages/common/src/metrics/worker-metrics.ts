// Worker-side Prometheus metrics (prefill, decode and unified workers). Every series carries the
// constant labels `worker_id` and `role` (set as the registry's default labels), so one dashboard
// query can split by worker or by role. Names follow vLLM's where vLLM has one
// (`vllm:kv_cache_usage_perc`, `vllm:num_requests_running`, ...). docs/metrics.md lists them.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { BATCH_SIZE_BUCKETS, KV_TRANSFER_BYTES_BUCKETS, LATENCY_BUCKETS_SECONDS } from './buckets.ts';

export const STEP_PHASES = ['prefill', 'decode'] as const;
export type StepPhase = (typeof STEP_PHASES)[number];

export const KV_TRANSFER_FAILURE_REASONS = ['checksum', 'timeout', 'peer_lost', 'rejected'] as const;
export type KvTransferFailureReason = (typeof KV_TRANSFER_FAILURE_REASONS)[number];

export const WORKER_ROLE_NAMES = ['prefill', 'decode', 'unified'] as const;
export const ROLE_CHANGE_REJECT_REASONS = ['invalid', 'pinned', 'stopping'] as const;
export type RoleChangeRejectReason = (typeof ROLE_CHANGE_REJECT_REASONS)[number];
/** How KV blocks travel between workers (mirrors @pdserve/engine's KV_WIRE_DTYPES). */
export const KV_WIRE_DTYPE_LABELS = ['fp32', 'fp16', 'bf16', 'int8'] as const;

export interface WorkerMetricsOptions {
  role: 'prefill' | 'decode' | 'unified';
  workerId: string;
  /**
   * Registry to register on (default: a new one). Its default labels are set to
   * `{ worker_id, role }`, which applies to everything on it: do not share it with the router's.
   */
  registry?: Registry;
  /** Register the default `process_*` / `nodejs_*` metrics on the registry (default true). */
  collectDefault?: boolean;
  /** Bytes of KV payload this worker sent through same-host shared memory so far (read at each scrape). */
  kvSharedMemoryBytes?: () => number;
}

export interface WorkerMetrics {
  registry: Registry;
  kvCacheUsage: Gauge<string>;
  numSequencesRunning: Gauge<string>;
  numSequencesWaiting: Gauge<string>;
  batchSize: Histogram<string>;
  stepDuration: Histogram<'phase'>;
  prefillTokensPerSecond: Gauge<string>;
  promptTokens: Counter<string>;
  generationTokens: Counter<string>;
  kvTransferSeconds: Histogram<'wire_dtype'>;
  kvTransferBytes: Histogram<'wire_dtype'>;
  kvTransferBytesTotal: Counter<'wire_dtype'>;
  kvTransferCompressionRatio: Gauge<'wire_dtype'>;
  kvTransferFailures: Counter<'reason'>;
  kvBlocksFree: Gauge<string>;
  kvBlocksTotal: Gauge<string>;
  roleChanges: Counter<'from' | 'to'>;
  roleChangeRejected: Counter<'reason'>;
  prefixCacheQueries: Counter<string>;
  prefixCacheHits: Counter<string>;
  prefixCacheUsage: Gauge<string>;

  /** A live role change: counts it and relabels every series of this registry with the new role. */
  changedRole(from: 'prefill' | 'decode' | 'unified', to: 'prefill' | 'decode' | 'unified'): void;
  /**
   * Records one engine step. prefill: step duration, `tokens` prompt tokens, and the
   * prefill throughput gauge. decode: step duration, the batch size, and `tokens` generated tokens
   * (default: `batchSize`, one token per sequence in the batch).
   */
  observeStep(step:
    | { phase: 'prefill'; seconds: number; tokens: number }
    | { phase: 'decode'; seconds: number; batchSize: number; tokens?: number }): void;
  /**
   * Records one completed KV transfer: duration histogram, bytes histogram and bytes counter (bytes
   * on the wire), all labelled by wire dtype (default fp32), and the compression ratio (fp32 bytes
   * the blocks stand for / bytes on the wire; `rawBytes` defaults to `bytes`).
   */
  observeKvTransfer(t: { seconds: number; bytes: number; rawBytes?: number; wireDtype?: string }): void;
  /** Counts a failed KV transfer. */
  kvTransferFailed(reason: KvTransferFailureReason): void;
  /** Sets free/total KV blocks and derives `pdserve_kv_cache_usage_perc` = 1 - free/total. */
  setKvBlocks(b: { free: number; total: number }): void;
  /**
   * The engine's cumulative prefix-cache counters (prompt tokens looked up, tokens served from the
   * cache) and the blocks its idle slots retain, out of `totalBlocks`.
   */
  setPrefixCache(p: { queries: number; hits: number; blocks: number; totalBlocks: number }): void;
}

export function createWorkerMetrics(options: WorkerMetricsOptions): WorkerMetrics {
  const registry = options.registry ?? new Registry();
  registry.setDefaultLabels({ worker_id: options.workerId, role: options.role });
  if (options.collectDefault ?? true) collectDefaultMetrics({ register: registry });
  const registers = [registry];

  const kvCacheUsage = new Gauge({ name: 'pdserve_kv_cache_usage_perc', help: 'KV cache usage, 0..1 (1 = full).', registers });
  const numSequencesRunning = new Gauge({ name: 'pdserve_num_sequences_running', help: 'Sequences in the running batch.', registers });
  const numSequencesWaiting = new Gauge({ name: 'pdserve_num_sequences_waiting', help: 'Sequences queued on this worker, not yet scheduled.', registers });
  const batchSize = new Histogram({
    name: 'pdserve_batch_size',
    help: 'Sequences per decode step.',
    buckets: [...BATCH_SIZE_BUCKETS],
    registers,
  });
  const stepDuration = new Histogram({
    name: 'pdserve_step_duration_seconds',
    help: 'Duration of one engine step (phase=prefill|decode), seconds.',
    labelNames: ['phase'] as const,
    buckets: [0.0005, ...LATENCY_BUCKETS_SECONDS],
    registers,
  });
  const prefillTokensPerSecond = new Gauge({
    name: 'pdserve_prefill_tokens_per_second',
    help: 'Prompt tokens per second of the most recent prefill step.',
    registers,
  });
  const promptTokens = new Counter({ name: 'pdserve_prompt_tokens_total', help: 'Prompt tokens prefilled by this worker.', registers });
  const generationTokens = new Counter({ name: 'pdserve_generation_tokens_total', help: 'Tokens generated by this worker.', registers });
  const kvTransferSeconds = new Histogram({
    name: 'pdserve_kv_transfer_seconds',
    help: 'Duration of one KV cache transfer between prefill and decode workers, seconds, by wire dtype.',
    labelNames: ['wire_dtype'] as const,
    buckets: [0.0005, ...LATENCY_BUCKETS_SECONDS],
    registers,
  });
  const kvTransferBytes = new Histogram({
    name: 'pdserve_kv_transfer_bytes',
    help: 'Bytes on the wire per KV cache transfer, by wire dtype.',
    labelNames: ['wire_dtype'] as const,
    buckets: [...KV_TRANSFER_BYTES_BUCKETS],
    registers,
  });
  const kvTransferBytesTotal = new Counter({
    name: 'pdserve_kv_transfer_bytes_total',
    help: 'Bytes of KV cache sent (prefill) or received (decode) by this worker, on the wire, by wire dtype.',
    labelNames: ['wire_dtype'] as const,
    registers,
  });
  const kvTransferCompressionRatio = new Gauge({
    name: 'pdserve_kv_transfer_compression_ratio',
    help: 'fp32 bytes of the KV blocks / bytes on the wire, of the latest transfer per wire dtype (1 for fp32).',
    labelNames: ['wire_dtype'] as const,
    registers,
  });
  const kvTransferFailures = new Counter({
    name: 'pdserve_kv_transfer_failures_total',
    help: 'Failed KV cache transfers by reason (checksum|timeout|peer_lost|rejected).',
    labelNames: ['reason'] as const,
    registers,
  });
  const shmBytes = options.kvSharedMemoryBytes;
  let shmBytesSeen = 0;
  new Counter({
    name: 'pdserve_kv_transfer_shm_bytes_total',
    help: 'Bytes of KV payload this worker sent to a decode worker on the same host through a shared-memory ring instead of the socket (part of pdserve_kv_transfer_bytes_total).',
    registers,
    collect() {
      const now = shmBytes?.() ?? 0;
      if (now > shmBytesSeen) this.inc(now - shmBytesSeen);
      shmBytesSeen = now;
    },
  });
  const kvBlocksFree = new Gauge({ name: 'pdserve_kv_blocks_free', help: 'Free KV cache blocks.', registers });
  const kvBlocksTotal = new Gauge({ name: 'pdserve_kv_blocks_total', help: 'Total KV cache blocks.', registers });

  const roleChanges = new Counter({
    name: 'pdserve_role_changes_total',
    help: 'Live role changes this worker carried out (from, to).',
    labelNames: ['from', 'to'] as const,
    registers,
  });
  const roleChangeRejected = new Counter({
    name: 'pdserve_role_change_rejected_total',
    help: 'Role-change commands this worker refused (invalid|pinned|stopping).',
    labelNames: ['reason'] as const,
    registers,
  });
  // vLLM's names (vllm:prefix_cache_queries / _hits), in tokens: hits / queries is the hit rate.
  const prefixCacheQueries = new Counter({ name: 'pdserve_prefix_cache_queries_total', help: 'Prompt tokens looked up in the prefix cache.', registers });
  const prefixCacheHits = new Counter({ name: 'pdserve_prefix_cache_hits_total', help: 'Prompt tokens served from the prefix cache (not computed).', registers });
  const prefixCacheUsage = new Gauge({
    name: 'pdserve_prefix_cache_usage_perc',
    help: 'KV blocks held as cached prefixes by idle slots, 0..1 of all blocks (free capacity: dropped when a slot is needed).',
    registers,
  });
  let prefixSeen = { queries: 0, hits: 0 };
  for (const from of WORKER_ROLE_NAMES) for (const to of WORKER_ROLE_NAMES) if (from !== to) roleChanges.inc({ from, to }, 0);
  for (const reason of ROLE_CHANGE_REJECT_REASONS) roleChangeRejected.inc({ reason }, 0);

  // Known label combinations exist from the first scrape, so rate() over them returns data.
  for (const phase of STEP_PHASES) stepDuration.zero({ phase });
  for (const reason of KV_TRANSFER_FAILURE_REASONS) kvTransferFailures.inc({ reason }, 0);
  for (const wire_dtype of KV_WIRE_DTYPE_LABELS) {
    kvTransferSeconds.zero({ wire_dtype });
    kvTransferBytes.zero({ wire_dtype });
    kvTransferBytesTotal.inc({ wire_dtype }, 0);
  }

  return {
    registry,
    kvCacheUsage,
    numSequencesRunning,
    numSequencesWaiting,
    batchSize,
    stepDuration,
    prefillTokensPerSecond,
    promptTokens,
    generationTokens,
    kvTransferSeconds,
    kvTransferBytes,
    kvTransferBytesTotal,
    kvTransferCompressionRatio,
    kvTransferFailures,
    kvBlocksFree,
    kvBlocksTotal,
    roleChanges,
    roleChangeRejected,
    prefixCacheQueries,
    prefixCacheHits,
    prefixCacheUsage,

    changedRole(from, to) {
      roleChanges.inc({ from, to });
      registry.setDefaultLabels({ worker_id: options.workerId, role: to });
    },
    observeStep(step) {
      stepDuration.observe({ phase: step.phase }, step.seconds);
      if (step.phase === 'prefill') {
        promptTokens.inc(step.tokens);
        if (step.seconds > 0) prefillTokensPerSecond.set(step.tokens / step.seconds);
      } else {
        batchSize.observe(step.batchSize);
        generationTokens.inc(step.tokens ?? step.batchSize);
      }
    },
    observeKvTransfer({ seconds, bytes, rawBytes, wireDtype }) {
      const labels = { wire_dtype: wireDtype ?? 'fp32' };
      kvTransferSeconds.observe(labels, seconds);
      kvTransferBytes.observe(labels, bytes);
      kvTransferBytesTotal.inc(labels, bytes);
      if (bytes > 0) kvTransferCompressionRatio.set(labels, (rawBytes ?? bytes) / bytes);
    },
    kvTransferFailed(reason) {
      kvTransferFailures.inc({ reason });
    },
    setKvBlocks({ free, total }) {
      kvBlocksFree.set(free);
      kvBlocksTotal.set(total);
      kvCacheUsage.set(total > 0 ? Math.min(1, Math.max(0, 1 - free / total)) : 0);
    },
    setPrefixCache({ queries, hits, blocks, totalBlocks }) {
      // The engine reports running totals; counters take the increase since the last report.
      if (queries > prefixSeen.queries) prefixCacheQueries.inc(queries - prefixSeen.queries);
      if (hits > prefixSeen.hits) prefixCacheHits.inc(hits - prefixSeen.hits);
      prefixSeen = { queries: Math.max(queries, prefixSeen.queries), hits: Math.max(hits, prefixSeen.hits) };
      prefixCacheUsage.set(totalBlocks > 0 ? Math.min(1, blocks / totalBlocks) : 0);
    },
  };
}
