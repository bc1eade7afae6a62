// A router process: the OpenAI HTTP API over the cluster backend, with /metrics.
import pino, { type Logger } from 'pino';
import { createMigrationCounter, createRouterMetrics } from '@pdserve/common';
import { loadTokenizer, readModelConfig } from '@pdserve/engine';
import { buildRouterApp } from './app.ts';
import { ClusterBackend } from './cluster-backend.ts';
import { MIGRATION_REASONS } from './migration.ts';
import { PLACEMENT_REASONS, type PlacementMode } from './placement.ts';
import { metricsObserver, workerStateLabel } from './metrics-observer.ts';
import { combineObservers, LoadStats, LoadStatsPublisher } from './load-stats.ts';
import { basename, resolve } from 'node:path';

export interface RouterOptions {
  model: string;
  servedModelName?: string;
  host: string;
  port: number;
  redisUrl: string;
  prefix?: string;
  /** One key or several (any of them is accepted). */
  apiKey?: string | readonly string[];
  maxModelLen?: number;
  sloTtftMs?: number;
  sloTpotMs?: number;
  /** Worker call bounds (cluster-backend.ts has the defaults). */
  generateTimeoutMs?: number;
  prefillTimeoutMs?: number;
  tokenIdleTimeoutMs?: number;
  /** HTTP server bounds (app.ts has the defaults). */
  requestTimeoutMs?: number;
  connectionTimeoutMs?: number;
  /** Where prompts are prefilled: auto (default) decides per request; remote or local force one. */
  prefillPlacement?: PlacementMode;
  /** In auto mode, prompts longer than this are always prefilled remotely. */
  localPrefillMaxTokens?: number;
  /** Route by the workers' prefix caches (default true); false: by load only. */
  prefixRouting?: boolean;
  /** 'slo' (default): refuse requests whose SLO the estimates say cannot be met; 'off': never. */
  admission?: 'slo' | 'off';
  /** Admission corrects TTFT estimates by their measured error (default on: estimate-calibration.ts). */
  ttftCorrection?: 'on' | 'off';
  logger?: Logger;
  /** Re-placements of a request after worker failures (default 3: migration.ts). */
  maxMigrations?: number;
}

export interface RunningRouter {
  url: string;
  port: number;
  stop(): Promise<void>;
}

export async function startRouter(o: RouterOptions): Promise<RunningRouter> {
  const log = o.logger ?? pino({ name: 'pdserve-router' });
  const config = readModelConfig(o.model);
  const tokenizer = loadTokenizer(o.model, { kind: config.tokenizer.kind, vocabSize: config.vocab_size });
  // Hugging Face tokenizers carry a Jinja chat template and the BOS/EOS texts it refers to.
  const hf = tokenizer as { chatTemplate?: string; bosToken?: string; eosToken?: string };
  const metrics = createRouterMetrics(undefined, { slo: { ttftSeconds: o.sloTtftMs ? o.sloTtftMs / 1000 : undefined, tpotSeconds: o.sloTpotMs ? o.sloTpotMs / 1000 : undefined } });
  for (const where of ['remote', 'local']) for (const reason of PLACEMENT_REASONS) metrics.prefillPlacement.inc({ where, reason }, 0);
  const migrations = createMigrationCounter(metrics.registry, MIGRATION_REASONS);
  const backend = new ClusterBackend({
    maxMigrations: o.maxMigrations, onMigration: (reason) => migrations.inc({ reason }),
    redisUrl: o.redisUrl, prefix: o.prefix, logger: log, model: config.name,
    generateTimeoutMs: o.generateTimeoutMs, prefillTimeoutMs: o.prefillTimeoutMs, tokenIdleTimeoutMs: o.tokenIdleTimeoutMs,
    placement: { mode: o.prefillPlacement ?? 'auto', localMaxTokens: o.localPrefillMaxTokens },
    admission: { sloAdmission: (o.admission ?? 'slo') === 'slo' },
    ttftCorrection: (o.ttftCorrection ?? 'on') === 'on',
    onPlacement: (p) => {
      metrics.prefillPlacement.inc({ where: p.where, reason: p.reason });
      const hit = p.expectedCachedTokens ?? 0;
      metrics.prefixRouting.inc({ result: hit > 0 ? 'hit' : 'miss' });
      metrics.prefixRoutingHitTokens.observe(hit);
    },
    onFirstToken: (p, actualMs) => {
      if (p.ttftMs === undefined || !(p.ttftMs > 0)) return;
      metrics.ttftEstimateRatio.observe({ where: p.where }, actualMs / p.ttftMs);
      log.debug({ where: p.where, reason: p.reason, ttft_estimate_ms: Math.round(p.ttftMs), ttft_ms: Math.round(actualMs) }, 'first token against its estimate');
    },
    onDecoded: (p, tpotMs) => {
      if (p.tpotMs === undefined || !(p.tpotMs > 0)) return;
      metrics.tpotEstimateRatio.observe({ where: p.where }, tpotMs / p.tpotMs);
    },
    prefixRouting: o.prefixRouting ?? true,
  });
  await backend.start();
  // Rolling request statistics for the planner (services/planner), published to Redis.
  const loadStats = new LoadStats({ slo: { ttftMs: o.sloTtftMs, tpotMs: o.sloTpotMs } });
  const statsPublisher = new LoadStatsPublisher(loadStats, { redisUrl: o.redisUrl, prefix: o.prefix, logger: log });
  const app = buildRouterApp({
    backend, tokenizer,
    modelName: o.servedModelName ?? basename(resolve(o.model)),
    maxModelLen: Math.min(o.maxModelLen ?? config.max_seq_len, config.max_seq_len),
    vocabSize: config.vocab_size,
    chatTemplate: hf.chatTemplate,
    chatBosToken: hf.bosToken,
    chatEosToken: hf.eosToken,
    apiKey: o.apiKey,
    requestTimeoutMs: o.requestTimeoutMs,
    connectionTimeoutMs: o.connectionTimeoutMs,
    logger: log,
    metrics: combineObservers(metricsObserver(metrics), loadStats.observer()),
    defaultSlo: o.sloTtftMs || o.sloTpotMs ? { ttftMs: o.sloTtftMs, tpotMs: o.sloTpotMs } : undefined,
    extraRoutes: (a) => {
      a.get('/metrics', async (_req, reply) => {
        metrics.setWorkerCounts(backend.workers().map((w) => ({ role: w.role, state: workerStateLabel(w) })));
        reply.header('content-type', metrics.registry.contentType);
        return metrics.registry.metrics();
      });
    },
  });
  await app.listen({ host: o.host, port: o.port });
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : o.port;
  const url = `http://${o.host === '0.0.0.0' ? '127.0.0.1' : o.host}:${port}`;
  log.info({
    url, model: config.name, router_instance: backend.instanceId, prefill_placement: o.prefillPlacement ?? 'auto', local_prefill_max_tokens: o.localPrefillMaxTokens ?? null,
    admission: o.admission ?? 'slo', ttft_correction: o.ttftCorrection ?? 'on', slo_ttft_ms: o.sloTtftMs ?? null, slo_tpot_ms: o.sloTpotMs ?? null,
  }, 'router listening');
  return {
    url, port,
    stop: async () => {
      await app.close();
      await statsPublisher.stop();
      await backend.stop();
    },
  };
}
