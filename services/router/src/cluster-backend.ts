// The Backend that runs a request through the cluster (mechanism):
//   1. pick a decode worker from the load reports (plus what this router has in flight on each,
//      since reports lag by a heartbeat: load-ledger.ts),
//   2. placement.ts decides where the prompt is prefilled (a prefill worker, or the decode worker
//      itself) and admission.ts whether to take the request at all (503 before any gRPC call),
//   3. Decode.Generate reserves KV room on the decode worker; once `reserved`, Prefill.Prefill
//      runs the prompt on the chosen worker, which pushes the KV blocks to the decode worker (or,
//      prefilling locally, writes them straight into the reserved sequence),
//   4. the decode worker's stream of tokens is this request's stream. Aborting the request cancels
//      both calls, which frees the KV blocks on both workers; so does every other way out (error,
//      timeout, the consumer stopping early).
// Bounds: both calls carry gRPC deadlines, and a decode stream silent for tokenIdleTimeoutMs (the
// prefill's own deadline covers the wait for the first token) ends the request with a 504. A
// worker that fails fast with UNAVAILABLE is set aside locally (worker-health.ts), and a request
// whose worker failed is migrated to other workers (migration.ts), continuing where it stopped.
import { randomBytes } from 'node:crypto';
import { canDecode, canPrefill, decodeClient, grpc, prefillClient, requestMetadata, WorkerDirectory, type GenerateEventMsg, type PrefillResponseMsg, type SamplingParamsMsg, type WorkerInfo } from '@pdserve/common';
import type { Logger } from 'pino';
import { RECENT_REFUSAL_MS, SLACK_MARGIN, judgeAdmission, type AdmissionConfig, type Refusal } from './admission.ts';
import { DecodeBudgets, expectedOutputTokens } from './decode-budget.ts';
import { BackendError, type Backend, type GenerateRequest, type GenerationEvent, type WorkerSummary } from './backend.ts';
import { LoadLedger } from './load-ledger.ts';
import { EstimateCalibration } from './estimate-calibration.ts';
import { InFlightByWorker } from './lost-workers.ts';
import { decidePlacement, decodeScore, decodeStepMs, localShareWindowMs, type Placement, type PlacementConfig } from './placement.ts';
import { continuation, decideMigration, DEFAULT_MAX_MIGRATIONS, type FailedPhase, type MigrationReason } from './migration.ts';
import { PrefixIndexFeed } from './prefix-index.ts';
import { WorkerHealth } from './worker-health.ts';

export interface ClusterBackendOptions {
  redisUrl: string;
  prefix?: string;
  logger: Logger;
  /** The model the router serves (config.json `name`); workers registered with another are not used. */
  model?: string;
  /** How long a decode worker may wait for a request's KV cache. */
  kvTimeoutMs?: number;
  /** Events buffered per request before the decode stream is paused (backpressure from slow clients). */
  maxBufferedEvents?: number;
  /** gRPC deadline of the whole Decode.Generate stream (default 30 min; 0 = none, as for the next two). */
  generateTimeoutMs?: number;
  /** gRPC deadline of Prefill.Prefill: prompt plus KV push (default 5 min). */
  prefillTimeoutMs?: number;
  /** Longest silence of a decode stream once its prefill has answered (default 60 s). */
  tokenIdleTimeoutMs?: number;
  /** Directory poll interval (tests). */
  pollMs?: number;
  /** Where prompts are prefilled (default: auto, no local threshold). */
  placement?: PlacementConfig;
  /** SLO admission (default on: requests with an SLO are judged against the estimates). */
  admission?: AdmissionConfig;
  /** Admission scales TTFT estimates by their measured error (default true; false: as estimated). */
  ttftCorrection?: boolean;
  /** Every placement decision of an admitted request (for pdserve_prefill_placement_total). */
  onPlacement?(p: Placement): void;
  /** An admitted request's first token came `actualMs` after it arrived; placement had estimated `p.ttftMs`. */
  onFirstToken?(p: Placement, actualMs: number): void;
  /** An admitted request decoded at `tpotMs` per token after its first; placement had estimated `p.tpotMs`. */
  onDecoded?(p: Placement, tpotMs: number): void;
  /** Times a request may be re-placed after a worker failure (default 3; 0 = never: migration.ts). */
  maxMigrations?: number;
  /** Every migration (for pdserve_request_migrations_total). */
  onMigration?(reason: MigrationReason): void;
  /** Follow the workers' prefix caches (their block-hash events in Redis) when choosing (default true). */
  prefixRouting?: boolean;
}

export const DEFAULT_GENERATE_TIMEOUT_MS = 30 * 60_000;
export const DEFAULT_PREFILL_TIMEOUT_MS = 5 * 60_000;
export const DEFAULT_TOKEN_IDLE_TIMEOUT_MS = 60_000;
/** Deadline of a Health probe of a worker set aside after UNAVAILABLE. */
const PROBE_TIMEOUT_MS = 1000;

type Client = grpc.Client & Record<string, Function>;
interface Clients { prefill: Client; decode: Client; users: number }
/** What an attempt did, for the migration decision: tokens yielded so far, and which call failed. */
interface AttemptProgress { generated: number[]; phase: FailedPhase | undefined; worker: string | undefined }

export class ClusterBackend implements Backend {
  readonly directory: WorkerDirectory;
  /**
   * Prefixes the id workers key a request by: random per router process, so routers sharing a
   * cluster never collide, whatever x-request-id their clients send.
   */
  readonly instanceId = randomBytes(6).toString('hex');
  /** gRPC clients per worker address; closed once the address leaves the registry and no call uses it. */
  private readonly clients = new Map<string, Clients>();
  /** Load this router sent each worker since its last report, and the measured transfer cost. */
  readonly ledger = new LoadLedger();
  /** How far the TTFT estimates of admitted requests were off: admission corrects new ones by it. */
  readonly ttftCalibration = new EstimateCalibration();
  /** The TPOT budgets of the requests this router has decoding on each worker. */
  readonly budgets = new DecodeBudgets();
  private readonly health: WorkerHealth;
  /** Which worker holds which prompt prefix (a hint fed from Redis); undefined with prefix routing off. */
  readonly prefixes?: PrefixIndexFeed;
  /** Workers already reported as serving another model (logged once each). */
  private readonly wrongModel = new Set<string>();
  /** performance.now() of this router's last refusal: admission lets batches grow more cautiously after one. */
  private lastRefusalAt = -Infinity;
  /** Calls in flight per worker, failed at once when the registry declares the worker lost. */
  private readonly onWorkers = new InFlightByWorker();
  private counter = 0;

  constructor(private readonly opts: ClusterBackendOptions) {
    this.directory = new WorkerDirectory({
      redisUrl: opts.redisUrl, prefix: opts.prefix, logger: opts.logger, pollMs: opts.pollMs,
      onChange: () => this.prune(),
    });
    if (opts.prefixRouting !== false) this.prefixes = new PrefixIndexFeed({ redisUrl: opts.redisUrl, prefix: opts.prefix, logger: opts.logger });
    this.health = new WorkerHealth((w) => this.probe(w), opts.logger);
  }

  start(): Promise<boolean> {
    return this.directory.start();
  }

  async stop(): Promise<void> {
    await this.directory.stop();
    await this.prefixes?.stop();
    for (const c of this.clients.values()) { c.prefill.close(); c.decode.close(); }
    this.clients.clear();
  }

  /** A prefill-capable and a decode-capable worker this router would route to. */
  ready(): boolean {
    const usable = this.directory.list().filter((w) => w.healthy && this.servesOurModel(w) && !this.health.suspected(w.id));
    return usable.some((w) => canPrefill(w.role)) && usable.some((w) => canDecode(w.role));
  }

  workers(): WorkerSummary[] {
    return this.directory.list().map((w) => ({
      id: w.id, role: w.role, grpc_address: w.grpc_address, metrics_url: w.metrics_url, load: { ...w.load },
      last_heartbeat_ms: w.last_heartbeat_ms, healthy: w.healthy && this.servesOurModel(w) && !this.health.suspected(w.id), state: w.state,
    }));
  }

  /** Sizes of the per-worker bookkeeping (they must follow the registry, not grow forever). */
  bookkeeping(): { clients: number; inflight: number; suspects: number; budgets: number } {
    return { clients: this.clients.size, inflight: this.ledger.inflightWorkers, suspects: this.health.size, budgets: this.budgets.workers };
  }

  private acquire(address: string): Clients {
    let c = this.clients.get(address);
    if (!c) {
      c = { prefill: prefillClient(address) as Client, decode: decodeClient(address) as Client, users: 0 };
      this.clients.set(address, c);
    }
    c.users++;
    return c;
  }

  private release(address: string): void {
    const c = this.clients.get(address);
    if (c) c.users--;
    this.prune();
  }

  /** Forgets clients, counts and suspicions of workers that left the registry (or were lost: expired). */
  private prune(): void {
    // Calls in flight on a worker the registry declares lost fail at once. A worker can also vanish
    // from the directory without ever showing as lost here: whichever directory (a worker's, another
    // router's) sees its heartbeat expire first removes it from the registry, and the next poll here
    // no longer lists it (a worker that deregistered cleanly had drained its calls first). Not while
    // the directory is stale: its list is then only the last snapshot.
    const byId = new Map(this.directory.list().map((w) => [w.id, w]));
    const fresh = this.directory.staleSince() === undefined;
    for (const id of this.onWorkers.ids()) {
      const w = byId.get(id);
      const why = w ? (w.lost_since !== undefined ? 'heartbeat expired' : undefined) : fresh ? 'left the registry' : undefined;
      if (!why) continue;
      const n = this.onWorkers.lost(id);
      if (n > 0) this.opts.logger?.warn({ worker: id, calls: n, why }, 'worker lost: failing its calls in flight');
    }
    const listed = this.directory.list().filter((w) => w.lost_since === undefined);
    const ids = new Set(listed.map((w) => w.id));
    const addresses = new Set(listed.map((w) => w.grpc_address));
    for (const [address, c] of this.clients) {
      if (c.users > 0 || addresses.has(address)) continue;
      c.prefill.close();
      c.decode.close();
      this.clients.delete(address);
    }
    this.health.retain(ids);
    this.ledger.retain(ids);
    this.prefixes?.follow(ids);
    for (const id of this.wrongModel) if (!ids.has(id)) this.wrongModel.delete(id);
  }

  private probe(w: WorkerInfo): Promise<boolean> {
    const c = this.acquire(w.grpc_address);
    return new Promise<boolean>((resolve) => {
      const client = canDecode(w.role) ? c.decode : c.prefill;
      client.Health({}, { deadline: Date.now() + PROBE_TIMEOUT_MS }, (err: grpc.ServiceError | null, res: { worker_id: string; ready: boolean }) => {
        resolve(!err && res.ready && res.worker_id === w.id);
      });
    }).finally(() => this.release(w.grpc_address));
  }

  private servesOurModel(w: WorkerInfo): boolean {
    if (this.opts.model === undefined || w.model === this.opts.model) return true;
    if (!this.wrongModel.has(w.id)) {
      this.wrongModel.add(w.id);
      this.opts.logger.error({ worker: w.id, worker_model: w.model, model: this.opts.model }, 'worker serves another model; not routing to it');
    }
    return false;
  }

  /** The decode worker, the placement of the prefill, and admission's verdict (throws the refusal). */
  private pick(req: GenerateRequest, exclude: ReadonlySet<string>, admit = true): { prefill: WorkerInfo; decode: WorkerInfo; placement: Placement } {
    const fresh = this.directory.staleSince() === undefined;
    const healthy = this.directory.list().filter((w) => w.healthy && !exclude.has(w.id) && this.servesOurModel(w) && this.health.usable(w, fresh));
    const n = req.promptIds.length;
    // Expected prefix-cache hits per prefill-capable worker (the index is a hint: see prefix-index.ts).
    // A decode worker counts when it may prefill locally: it holds the prompts (and answers) it decoded.
    const mayPrefillLocally = (this.opts.placement?.mode ?? 'auto') !== 'remote';
    const cached = this.prefixes?.index.cachedTokens(req.promptIds, healthy.filter((w) => canPrefill(w.role) || (mayPrefillLocally && w.role === 'decode')).map((w) => w.id)) ?? new Map<string, number>();
    const scored = healthy.filter((w) => canDecode(w.role))
      .map((w) => ({ w, score: decodeScore({ role: w.role, load: w.load, inflight: this.ledger.inflightOn(w.id), cachedTokens: cached.get(w.id) ?? 0, heldBlocks: this.prefixes?.index.heldBlocks(w.id), mayPrefillLocally }, n) }))
      .sort((a, b) => a.score - b.score);
    if (scored.length === 0) throw new BackendError('no decode worker is available', 503, 'no_capacity', 2);
    const prefillers = healthy.filter((w) => w.role === 'prefill');
    // The best-scored decode worker unless admission refuses there: then the next one it admits on
    // (an SLO missed on one worker may be met on another); refused everywhere, the first refusal.
    let firstRefusal: Refusal | undefined;
    for (const { w: decode } of scored) {
      const choice = this.place(req, decode, prefillers, cached);
      if (!choice.refusal || !admit) {
        this.opts.onPlacement?.(choice.placement);
        return { prefill: choice.prefill, decode, placement: choice.placement };
      }
      firstRefusal ??= choice.refusal;
    }
    this.lastRefusalAt = performance.now();
    throw new BackendError(firstRefusal!.message, 503, firstRefusal!.code, firstRefusal!.retryAfterS);
  }

  /** Placement of the prompt for `decode` as its decode worker, and admission's verdict on it. */
  private place(req: GenerateRequest, decode: WorkerInfo, prefillers: WorkerInfo[], cached: ReadonlyMap<string, number>): { prefill: WorkerInfo; placement: Placement; refusal?: Refusal } {
    const n = req.promptIds.length;
    const dv = { ...this.ledger.view(decode), cachedTokens: cached.get(decode.id) ?? 0 };
    // A local prefill's stall is weighed over about one decode lifetime of the requests it stalls
    // (placement.ts): the recent requests' mean output, or before any finished, this one's limit.
    const step = decodeStepMs(dv, dv.batch + 1);
    dv.localShareWindowMs = localShareWindowMs(this.ledger.meanOutputTokens() ?? req.sampling.maxTokens, step);
    dv.localPrefillShare = this.ledger.localShare(decode.id, dv.localShareWindowMs);
    // The running requests' TPOT budgets; the prompts already queued there stall them too.
    const rate = dv.prefillTokensPerS;
    const committedStallMs = rate && rate > 0 ? (dv.queuedPrefillTokens / rate) * 1000 : 0;
    const slack = step === undefined ? undefined : this.budgets.slack(decode.id, step, committedStallMs, SLACK_MARGIN);
    dv.tpotSlackMs = slack?.slackMs;
    const placement = decidePlacement({
      promptTokens: n,
      decode: dv,
      prefillers: prefillers.map((w) => ({ ...this.ledger.view(w), cachedTokens: cached.get(w.id) ?? 0 })),
      transfer: this.ledger.transferCost(),
      tpotSloMs: req.slo?.tpotMs,
    }, this.opts.placement ?? { mode: 'auto' });
    const prefill = placement.where === 'local' ? decode : prefillers.find((w) => w.id === placement.prefillWorker)!;
    const refusal = judgeAdmission({
      slo: req.slo, placement, cluster: this.directory.admission(),
      queuedPrefillTokens: placement.where === 'local' ? dv.queuedPrefillTokens : this.ledger.view(prefill).queuedPrefillTokens,
      decodeBatch: dv.batch,
      decodeSeats: decode.load.max_sequences,
      ttftCorrection: this.opts.ttftCorrection === false ? 1 : this.ttftCalibration.factor(placement.where),
      decodeSlack: slack,
      largestMeasuredBatch: decode.load.decode_step_ms_by_batch === undefined ? undefined : Math.max(0, ...dv.decodeStepMsByBatch.keys()),
      refusedRecently: performance.now() - this.lastRefusalAt < RECENT_REFUSAL_MS,
    }, this.opts.admission ?? { sloAdmission: true });
    return { prefill, placement, refusal };
  }

  generate(req: GenerateRequest): AsyncIterable<GenerationEvent> {
    return this.run(req);
  }

  /**
   * Attempts until one finishes: a worker failure re-places the request (migration.ts decides
   * whether and how), continuing from the tokens already yielded, up to maxMigrations times.
   */
  private async *run(req: GenerateRequest): AsyncGenerator<GenerationEvent> {
    if (req.signal.aborted) return; // the client left (e.g. during tokenization): no worker work at all
    const failed = new Set<string>();
    // One seed for every attempt: a migrated request continues the same random stream.
    const base: GenerateRequest = { ...req, sampling: { ...req.sampling, seed: req.sampling.seed ?? Math.floor(Math.random() * 2 ** 48) } };
    const generated: number[] = [];
    const maxMigrations = this.opts.maxMigrations ?? DEFAULT_MAX_MIGRATIONS;
    let lastFailure: unknown;
    let pending: MigrationReason | undefined;
    for (let migrations = 0; ; migrations++) {
      const next = continuation(base.promptIds, base.sampling, generated);
      if (migrations > 0 && next.exhausted) {
        // Every token was handed over before the worker failed: only its finish event was lost.
        yield { type: 'finish', reason: 'length', timings: {} };
        return;
      }
      const progress: AttemptProgress = { generated, phase: undefined, worker: undefined };
      try {
        const attemptReq = migrations === 0 ? base : { ...base, promptIds: next.promptIds, sampling: next.sampling };
        const reason = pending;
        // Counted once the request has somewhere to go (a migration that finds no worker is a failure).
        const onPlaced = reason ? () => this.opts.onMigration?.(reason) : undefined;
        yield* this.attempt(attemptReq, failed, progress, { sampleOffset: next.sampleOffset, migrated: migrations > 0, onPlaced });
        return;
      } catch (err) {
        // A migration that finds no worker to go to reports the failure that caused it, not "no capacity".
        if (lastFailure && progress.phase === undefined && err instanceof BackendError && err.code === 'no_capacity') throw lastFailure;
        const d = decideMigration({ err, phase: progress.phase, migrations, maxMigrations, aborted: req.signal.aborted });
        if (!d.migrate) throw d.error;
        lastFailure = err;
        if (progress.worker) failed.add(progress.worker);
        pending = d.reason;
        this.opts.logger.warn(
          { request_id: req.requestId, reason: d.reason, migration: migrations + 1, generated: generated.length, failed: [...failed], err: (err as Error).message },
          'worker failed mid-request; migrating it to other workers',
        );
      }
    }
  }

  private async *attempt(req: GenerateRequest, failed: Set<string>, progress: AttemptProgress, cont: { sampleOffset: number; migrated: boolean; onPlaced?: () => void }): AsyncGenerator<GenerationEvent> {
    const arrived = performance.now();
    // A migrated request was admitted already: it is not refused half-way for an SLO estimate.
    const { prefill, decode, placement } = this.pick(req, failed, !cont.migrated);
    cont.onPlaced?.();
    const n = req.promptIds.length;
    const log = this.opts.logger;
    const sampling: SamplingParamsMsg = {
      temperature: req.sampling.temperature, top_p: req.sampling.topP, top_k: req.sampling.topK,
      seed: req.sampling.seed ?? Math.floor(Math.random() * 2 ** 48), max_tokens: req.sampling.maxTokens,
      min_tokens: req.sampling.minTokens, stop_token_ids: req.sampling.stopTokenIds, ignore_eos: req.sampling.ignoreEos,
      logprobs: req.sampling.logprobs ?? -1, sample_offset: cont.sampleOffset,
    };
    const md = requestMetadata(req.requestId);
    const id = `${req.requestId}#${this.instanceId}-${++this.counter}`;
    const idleMs = this.opts.tokenIdleTimeoutMs ?? DEFAULT_TOKEN_IDLE_TIMEOUT_MS;
    const onUnavailable = (w: WorkerInfo, err: grpc.ServiceError) => {
      if (err.code !== grpc.status.UNAVAILABLE) return;
      failed.add(w.id);
      this.health.markFailed(w, err.details || err.message);
    };

    const held = this.ledger.begin(decode.id, prefill.id, n, placement.localPrefillMs);
    const budget = req.slo?.tpotMs === undefined ? undefined
      : this.budgets.track(decode.id, req.slo.tpotMs, expectedOutputTokens(req.sampling.maxTokens, req.sampling.ignoreEos, this.ledger.meanOutputTokens()), placement.where === 'local' ? placement.localPrefillMs : 0);
    const decodeClients = this.acquire(decode.grpc_address);
    let prefillClients: Clients | undefined;
    const stream = decodeClients.decode.Generate(
      {
        request_id: id, prompt_len: req.promptIds.length, sampling, kv_timeout_ms: this.opts.kvTimeoutMs ?? 120_000,
        // A remote prefill's KV arrives without its ids; with them the decode worker can cache it
        // (a local prefill registers its own prompt).
        prompt_ids: placement.where === 'remote' ? req.promptIds : [],
      }, md,
      { deadline: deadline(this.opts.generateTimeoutMs ?? DEFAULT_GENERATE_TIMEOUT_MS) },
    ) as grpc.ClientReadableStream<GenerateEventMsg>;
    let prefillCall: grpc.ClientUnaryCall | undefined;
    let prefillPending = false;
    const onAbort = () => { stream.cancel(); prefillCall?.cancel(); };
    req.signal.addEventListener('abort', onAbort, { once: true });
    if (req.signal.aborted) onAbort(); // aborted between the check in run() and here
    const unwatch = this.onWorkers.watch([decode.id, prefill.id], (lostId) => {
      // Which call failed decides the migration's reason, and the lost worker is not tried again.
      progress.phase ??= lostId === decode.id ? 'decode' : 'prefill';
      progress.worker ??= lostId;
      push(new BackendError('A worker stopped responding; the request was cancelled.', 503, 'worker_unavailable', undefined, `worker lost (heartbeat expired): decode ${decode.id}, prefill ${prefill.id}`));
      stream.cancel();
      prefillCall?.cancel();
    });

    // Decode events, buffered with a bound: past it the gRPC stream is paused until we catch up.
    const buffer: Array<GenerateEventMsg | Error | null> = [];
    let wake: (() => void) | undefined;
    const max = this.opts.maxBufferedEvents ?? 256;
    const push = (e: GenerateEventMsg | Error | null) => {
      buffer.push(e);
      if (buffer.length >= max) stream.pause();
      wake?.();
    };
    stream.on('data', (e: GenerateEventMsg) => push(e));
    stream.on('error', (err: grpc.ServiceError) => {
      if (err.code === grpc.status.CANCELLED) return push(null);
      // DATA_LOSS: the decode worker refused a KV block that failed its checksum. The sender is at
      // fault, so the prefill worker is the one not tried again, whichever of the two calls reports
      // the refusal first (the prefill call fails with it too, in a race with this stream).
      const corruptTransfer = err.code === grpc.status.DATA_LOSS && placement.where === 'remote';
      progress.phase ??= corruptTransfer ? 'prefill' : 'decode';
      progress.worker ??= corruptTransfer ? prefill.id : decode.id;
      onUnavailable(decode, err);
      push(toBackendError(err, 'decode', decode, log, req.requestId));
    });
    stream.on('end', () => push(null));
    const idle = () => new BackendError(
      `The decode worker sent nothing for ${idleMs} ms; the request was cancelled.`, 504, 'worker_timeout', undefined, `decode worker ${decode.id} (${decode.grpc_address})`,
    );
    const next = async (): Promise<GenerateEventMsg | Error | null> => {
      while (buffer.length === 0) {
        // While the prefill runs its own deadline bounds the wait for the first token.
        const timed = !prefillPending && idleMs > 0;
        let timer: NodeJS.Timeout | undefined;
        const woke = await new Promise<boolean>((r) => {
          wake = () => r(true);
          if (timed) timer = setTimeout(() => r(false), idleMs);
        });
        clearTimeout(timer);
        wake = undefined;
        if (!woke && buffer.length === 0 && !prefillPending) {
          log.warn({ request_id: req.requestId, worker: decode.id, idle_ms: idleMs }, 'decode stream idle too long; cancelling');
          progress.phase ??= 'decode';
          progress.worker ??= decode.id;
          return idle();
        }
      }
      const e = buffer.shift()!;
      if (buffer.length < max / 2) stream.resume();
      return e;
    };

    let prefillResult: PrefillResponseMsg | undefined;
    // The KV transfer's share of the TTFT, as this router sees it: from sending the prefill to the
    // first token, less the prefill worker's queue and compute and the decode worker's wait to join
    // its batch. (The reply's transfer_tail_ms also holds the wait for the prefill worker's engine
    // thread to take the acknowledgement, which is not on the TTFT path.)
    const transferClock: { sentAt?: number; firstAt?: number; done?: boolean } = {};
    const observeTransfer = () => {
      const p = prefillResult;
      if (placement.where !== 'remote' || transferClock.done || !p || transferClock.sentAt === undefined || transferClock.firstAt === undefined) return;
      transferClock.done = true;
      const chunk = prefill.load.prefill_chunk_tokens ?? n;
      const ms = transferClock.firstAt - transferClock.sentAt - p.queue_ms - p.prefill_ms - (timings.first_decode ?? 0);
      this.ledger.observeTransfer(n - Math.floor((n - 1) / chunk) * chunk, Math.max(0, ms));
    };
    let prefillError: Error | undefined;
    let prefillSettled: () => void = () => {};
    const prefillDone = new Promise<void>((r) => { prefillSettled = r; });
    const timings: Record<string, number> = {};
    let first = true;
    let finished = false;
    let attemptTokens = 0;
    try {
      for (;;) {
        const e = await next();
        if (e === null) {
          if (req.signal.aborted) return;
          if (!prefillError) { progress.phase ??= 'decode'; progress.worker ??= decode.id; }
          throw prefillError ?? new BackendError('The decode worker ended the stream early.', 502, 'worker_failed', undefined, `decode worker ${decode.id}`);
        }
        if (e instanceof Error) throw prefillError ?? e;
        if (e.event === 'reserved') {
          const reservedAt = performance.now();
          transferClock.sentAt = reservedAt;
          prefillClients = this.acquire(prefill.grpc_address);
          prefillPending = true;
          prefillCall = prefillClients.prefill.Prefill(
            { request_id: id, prompt_ids: req.promptIds, sampling, decode_address: decode.grpc_address }, md,
            { deadline: deadline(this.opts.prefillTimeoutMs ?? DEFAULT_PREFILL_TIMEOUT_MS) },
            (err: grpc.ServiceError | null, res: PrefillResponseMsg) => {
              prefillPending = false;
              prefillSettled();
              held.prefilled();
              if (err) {
                if (err.code !== grpc.status.CANCELLED) {
                  progress.phase ??= 'prefill';
                  progress.worker ??= prefill.id;
                  onUnavailable(prefill, err);
                  prefillError = toBackendError(err, 'prefill', prefill, log, req.requestId);
                }
                stream.cancel();
              } else {
                prefillResult = res;
                observeTransfer();
              }
              wake?.(); // re-arms the idle timer now that the prefill has answered
            },
          ) as grpc.ClientUnaryCall;
          timings.reserve = reservedAt - arrived;
        } else if (e.event === 'tokens') {
          // The first token's message says how much of the prompt came from a prefix cache.
          // (Reported once per request: a migrated attempt's prompt is not the client's.)
          let cachedTokens = first && !cont.migrated ? e.tokens!.cached_tokens ?? 0 : undefined;
          if (first) {
            first = false;
            timings.first_decode = e.tokens!.admit_ms;
            held.prefilled(); // the prompt is done (the prefill's reply may still be on its way)
            transferClock.firstAt = performance.now();
            observeTransfer();
            if (!cont.migrated) {
              const ttft = transferClock.firstAt - arrived;
              if (placement.ttftMs !== undefined) this.ttftCalibration.observe(placement.where, placement.ttftMs, ttft);
              this.opts.onFirstToken?.(placement, ttft);
            }
          }
          attemptTokens += e.tokens!.tokens.length;
          budget?.tokens(e.tokens!.tokens.length);
          for (const t of e.tokens!.tokens) {
            progress.generated.push(t.id);
            yield { type: 'token', id: t.id, logprob: sampling.logprobs >= 0 ? t.logprob : undefined, topLogprobs: sampling.logprobs > 0 ? t.top_logprobs : undefined, ...(cachedTokens !== undefined ? { cachedTokens } : {}) };
            cachedTokens = undefined;
          }
        } else if (e.event === 'finished') {
          const f = e.finished!;
          finished = true;
          if (!cont.migrated && attemptTokens >= 2 && transferClock.firstAt !== undefined) {
            this.opts.onDecoded?.(placement, (performance.now() - transferClock.firstAt) / (attemptTokens - 1));
          }
          // Over for placement and the load ledger now, not when the consumer lets this generator
          // finish (a consumer that stops at the finish event leaves it suspended below).
          held.ended(progress.generated.length);
          budget?.ended();
          // The prefill's reply (its share of the TTFT) may land just after the last token: the
          // response goes out now, the metrics get the full breakdown when it arrives.
          const complete = (): Record<string, number> => {
            const p = prefillResult;
            const t: Record<string, number> = { ...timings, queue: (timings.reserve ?? 0) + (p?.queue_ms ?? 0) };
            if (p) { t.prefill = p.prefill_ms; t.kv_transfer = p.transfer_tail_ms; }
            return t;
          };
          const wait = prefillResult ? Promise.resolve() : Promise.race([prefillDone, new Promise((r) => setTimeout(r, 2000).unref())]);
          const call = prefillCall;
          // Past that wait nobody needs the prefill's reply: cancel whatever is left of it.
          void wait.then(() => call?.cancel());
          const timingsLater = prefillResult ? undefined : wait.then(complete);
          yield { type: 'finish', reason: f.reason === 'stop' ? 'stop' : 'length', stopTokenId: f.has_stop_token ? f.stop_token_id : undefined, timings: complete(), timingsLater };
          return;
        }
      }
    } finally {
      req.signal.removeEventListener('abort', onAbort);
      unwatch();
      stream.cancel();
      // A request nobody waits for must not keep a prefill worker busy (the finished case cancels
      // it after the reply's grace above).
      if (!finished) prefillCall?.cancel();
      held.ended();
      budget?.ended();
      this.release(decode.grpc_address);
      if (prefillClients) this.release(prefill.grpc_address);
    }
  }
}

/**
 * A worker's gRPC failure as the client sees it: what went wrong and what to do, without worker
 * ids or addresses (those go to the log). The worker's own message is kept for INVALID_ARGUMENT,
 * which is about the request, with anything address-like taken out.
 */
function toBackendError(err: grpc.ServiceError, phase: 'prefill' | 'decode', w: WorkerInfo, log: Logger, requestId: string): BackendError {
  const detail = `${phase} worker ${w.id} (${w.grpc_address}): ${grpc.status[err.code] ?? err.code} ${err.details || err.message}`;
  log.warn({ request_id: requestId, worker: w.id, address: w.grpc_address, phase, code: err.code, err: err.details || err.message }, 'worker call failed');
  switch (err.code) {
    case grpc.status.RESOURCE_EXHAUSTED:
      return new BackendError(`The ${phase} worker has no capacity for this request right now; retry later.`, 503, 'no_capacity', 1, detail);
    case grpc.status.UNAVAILABLE:
      return new BackendError(`A ${phase} worker became unavailable; retry the request.`, 503, 'worker_unavailable', 1, detail);
    case grpc.status.INVALID_ARGUMENT:
      return new BackendError(scrub(err.details || 'The request was refused by a worker.', w), 400, 'invalid_request', undefined, detail);
    case grpc.status.DEADLINE_EXCEEDED:
      return new BackendError(`The ${phase} worker did not finish in time; the request was cancelled.`, 504, 'worker_timeout', undefined, detail);
    default:
      return new BackendError(`The ${phase} worker failed on this request.`, 502, 'worker_failed', undefined, detail);
  }
}

/** A gRPC deadline `ms` from now; 0 = none. */
function deadline(ms: number): number {
  return ms > 0 ? Date.now() + ms : Infinity;
}

function scrub(message: string, w: WorkerInfo): string {
  return message
    .split(w.id).join('a worker')
    .split(w.grpc_address).join('a worker')
    .replace(/\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b/g, 'a worker')
    .replace(/\[[0-9a-f:]+\](?::\d+)?/gi, 'a worker');
}
