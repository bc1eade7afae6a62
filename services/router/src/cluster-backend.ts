// The Backend that runs a request through the disaggregated cluster:
//   1. pick a prefill worker and a decode worker from their load reports (plus what this router
//      has in flight on each, since reports lag by a heartbeat),
//   2. admission: refuse early (503) when the chosen prefill worker's queue predicts a TTFT beyond
//      the request's SLO, or the decode worker's step time a TPOT beyond it,
//   3. Decode.Generate reserves KV room on the decode worker; once `reserved`, Prefill.Prefill
//      runs the prompt and pushes the KV blocks straight to that decode worker,
//   4. the decode worker's stream of tokens is this request's stream. Aborting the request cancels
//      both calls, which frees the KV blocks on both workers.
import { canDecode, canPrefill, decodeClient, grpc, prefillClient, requestMetadata, WorkerDirectory, type GenerateEventMsg, type PrefillResponseMsg, type SamplingParamsMsg, type WorkerInfo } from '@pdserve/common';
import type { Logger } from 'pino';
import { BackendError, type Backend, type GenerateRequest, type GenerationEvent, type WorkerSummary } from './backend.ts';

export interface ClusterBackendOptions {
  redisUrl: string;
  prefix?: string;
  logger: Logger;
  /** How long a decode worker may wait for a request's KV cache. */
  kvTimeoutMs?: number;
  /** Events buffered per request before the decode stream is paused (backpressure from slow clients). */
  maxBufferedEvents?: number;
}

type Client = grpc.Client & Record<string, Function>;

export class ClusterBackend implements Backend {
  readonly directory: WorkerDirectory;
  private readonly clients = new Map<string, { prefill: Client; decode: Client }>();
  /** Requests this router has in flight per worker id. */
  private readonly inflight = new Map<string, number>();
  /** Suffix that makes the id workers key a request by unique, whatever x-request-id the client sent. */
  private counter = 0;

  constructor(private readonly opts: ClusterBackendOptions) {
    this.directory = new WorkerDirectory({ redisUrl: opts.redisUrl, prefix: opts.prefix, logger: opts.logger });
  }

  start(): Promise<boolean> {
    return this.directory.start();
  }

  async stop(): Promise<void> {
    await this.directory.stop();
    for (const c of this.clients.values()) { c.prefill.close(); c.decode.close(); }
  }

  ready(): boolean {
    return this.directory.ready();
  }

  workers(): WorkerSummary[] {
    return this.directory.list().map((w) => ({
      id: w.id, role: w.role, grpc_address: w.grpc_address, metrics_url: w.metrics_url, load: { ...w.load },
      last_heartbeat_ms: w.last_heartbeat_ms, healthy: w.healthy, state: w.state,
    }));
  }

  private client(address: string): { prefill: Client; decode: Client } {
    let c = this.clients.get(address);
    if (!c) {
      c = { prefill: prefillClient(address) as Client, decode: decodeClient(address) as Client };
      this.clients.set(address, c);
    }
    return c;
  }

  /** Lower is better: queued and running work, per what the worker reported and what we sent since. */
  private score(w: WorkerInfo): number {
    return w.load.queue_len + w.load.running + w.load.waiting + (this.inflight.get(w.id) ?? 0) - w.load.free_kv_blocks / Math.max(1, w.load.total_kv_blocks);
  }

  private pick(req: GenerateRequest): { prefill: WorkerInfo; decode: WorkerInfo } {
    const healthy = this.directory.list().filter((w) => w.healthy);
    const byScore = (a: WorkerInfo, b: WorkerInfo) => this.score(a) - this.score(b);
    const decoders = healthy.filter((w) => canDecode(w.role)).sort(byScore);
    const prefillers = healthy.filter((w) => canPrefill(w.role)).sort(byScore);
    if (decoders.length === 0 || prefillers.length === 0) {
      throw new BackendError('no prefill or decode worker is available', 503, 'no_capacity', 2);
    }
    // A unified worker keeps the whole request (prefill in place, no KV transfer); a dedicated
    // prefill worker is preferred for prefill when one exists.
    const dedicated = prefillers.filter((w) => w.role === 'prefill');
    const decode = decoders[0];
    const prefill = decode.role === 'unified' && dedicated.length === 0 ? decode : (dedicated[0] ?? prefillers[0]);
    this.admit(req, prefill, decode);
    return { prefill, decode };
  }

  /**
   * Admission: the cluster-wide state an operator or controller sets in Redis
   * (`{prefix}:admission`: closed refuses everything, throttled admits only onto an idle prefill
   * worker), then the request's own SLO against measured speeds; never refuses an idle worker.
   */
  private admit(req: GenerateRequest, prefill: WorkerInfo, decode: WorkerInfo): void {
    const cluster = this.directory.admission();
    const why = cluster?.reason ? `: ${cluster.reason}` : '';
    if (cluster?.state === 'closed') throw new BackendError(`the cluster is not admitting requests${why}`, 503, 'admission_closed', 5);
    if (cluster?.state === 'throttled' && prefill.load.queue_len + (this.inflight.get(prefill.id) ?? 0) > 0) {
      throw new BackendError(`the cluster is throttling admissions${why}`, 503, 'admission_throttled', 1);
    }
    const slo = req.slo;
    if (!slo) return;
    const ahead = prefill.load.queue_len + (this.inflight.get(prefill.id) ?? 0);
    const tokPerS = prefill.load.prefill_tokens_per_s;
    if (slo.ttftMs && tokPerS && ahead > 0) {
      // Assume the prompts ahead are like this one: a crude, cheap, measured estimate.
      const estimate = ((ahead + 1) * req.promptIds.length * 1000) / tokPerS;
      if (estimate > slo.ttftMs) {
        throw new BackendError(`predicted time to first token ${Math.round(estimate)} ms exceeds the SLO of ${slo.ttftMs} ms`, 503, 'slo_ttft', Math.ceil(estimate / 1000));
      }
    }
    const step = decode.load.step_ms_p50;
    if (slo.tpotMs && step && decode.load.running > 0 && step > slo.tpotMs) {
      throw new BackendError(`decode step time ${Math.round(step)} ms exceeds the TPOT SLO of ${slo.tpotMs} ms`, 503, 'slo_tpot', 1);
    }
  }

  generate(req: GenerateRequest): AsyncIterable<GenerationEvent> {
    return this.run(req);
  }

  private async *run(req: GenerateRequest): AsyncGenerator<GenerationEvent> {
    const arrived = performance.now();
    const { prefill, decode } = this.pick(req);
    const bump = (id: string, d: number) => this.inflight.set(id, (this.inflight.get(id) ?? 0) + d);
    bump(prefill.id, 1);
    if (decode.id !== prefill.id) bump(decode.id, 1);
    const sampling: SamplingParamsMsg = {
      temperature: req.sampling.temperature, top_p: req.sampling.topP, top_k: req.sampling.topK,
      seed: req.sampling.seed ?? Math.floor(Math.random() * 2 ** 48), max_tokens: req.sampling.maxTokens,
      min_tokens: req.sampling.minTokens, stop_token_ids: req.sampling.stopTokenIds, ignore_eos: req.sampling.ignoreEos,
      logprobs: req.sampling.logprobs ?? -1,
    };
    const md = requestMetadata(req.requestId);
    const id = `${req.requestId}#${++this.counter}`;
    const stream = this.client(decode.grpc_address).decode.Generate(
      { request_id: id, prompt_len: req.promptIds.length, sampling, kv_timeout_ms: this.opts.kvTimeoutMs ?? 120_000 }, md,
    ) as grpc.ClientReadableStream<GenerateEventMsg>;
    let prefillCall: grpc.ClientUnaryCall | undefined;
    const onAbort = () => { stream.cancel(); prefillCall?.cancel(); };
    req.signal.addEventListener('abort', onAbort, { once: true });

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
    stream.on('error', (err: grpc.ServiceError) => push(err.code === grpc.status.CANCELLED ? null : toBackendError(err, 'decode', decode.id)));
    stream.on('end', () => push(null));
    const next = async (): Promise<GenerateEventMsg | Error | null> => {
      while (buffer.length === 0) await new Promise<void>((r) => { wake = r; });
      wake = undefined;
      const e = buffer.shift()!;
      if (buffer.length < max / 2) stream.resume();
      return e;
    };

    let prefillResult: PrefillResponseMsg | undefined;
    let prefillError: Error | undefined;
    let prefillSettled: () => void = () => {};
    const prefillDone = new Promise<void>((r) => { prefillSettled = r; });
    const timings: Record<string, number> = {};
    let first = true;
    try {
      for (;;) {
        const e = await next();
        if (e === null) {
          if (req.signal.aborted) return;
          throw prefillError ?? new BackendError(`decode worker ${decode.id} ended the stream early`, 502, 'worker_failed');
        }
        if (e instanceof Error) throw prefillError ?? e;
        if (e.event === 'reserved') {
          const reservedAt = performance.now();
          prefillCall = this.client(prefill.grpc_address).prefill.Prefill(
            { request_id: id, prompt_ids: req.promptIds, sampling, decode_address: decode.grpc_address }, md,
            (err: grpc.ServiceError | null, res: PrefillResponseMsg) => {
              prefillSettled();
              if (err) {
                if (err.code !== grpc.status.CANCELLED) prefillError = toBackendError(err, 'prefill', prefill.id);
                stream.cancel();
              } else prefillResult = res;
            },
          ) as grpc.ClientUnaryCall;
          timings.reserve = reservedAt - arrived;
        } else if (e.event === 'tokens') {
          if (first) {
            first = false;
            timings.first_decode = e.tokens!.admit_ms;
          }
          for (const t of e.tokens!.tokens) {
            yield { type: 'token', id: t.id, logprob: sampling.logprobs >= 0 ? t.logprob : undefined, topLogprobs: sampling.logprobs > 0 ? t.top_logprobs : undefined };
          }
        } else if (e.event === 'finished') {
          const f = e.finished!;
          // The prefill's reply (its share of the TTFT) may land just after the last token: the
          // response goes out now, the metrics get the full breakdown when it arrives.
          const complete = (): Record<string, number> => {
            const p = prefillResult;
            const t: Record<string, number> = { ...timings, queue: (timings.reserve ?? 0) + (p?.queue_ms ?? 0) };
            if (p) { t.prefill = p.prefill_ms; t.kv_transfer = p.transfer_tail_ms; }
            return t;
          };
          const timingsLater = prefillResult ? undefined : Promise.race([prefillDone, new Promise((r) => setTimeout(r, 2000))]).then(complete);
          yield { type: 'finish', reason: f.reason === 'stop' ? 'stop' : 'length', stopTokenId: f.has_stop_token ? f.stop_token_id : undefined, timings: complete(), timingsLater };
          return;
        }
      }
    } finally {
      req.signal.removeEventListener('abort', onAbort);
      stream.cancel();
      bump(prefill.id, -1);
      if (decode.id !== prefill.id) bump(decode.id, -1);
    }
  }
}

function toBackendError(err: grpc.ServiceError, phase: string, worker: string): BackendError {
  const msg = `${phase} worker ${worker}: ${err.details || err.message}`;
  switch (err.code) {
    case grpc.status.RESOURCE_EXHAUSTED:
      return new BackendError(msg, 503, 'no_capacity', 1);
    case grpc.status.UNAVAILABLE:
      return new BackendError(msg, 503, 'worker_unavailable', 1);
    case grpc.status.INVALID_ARGUMENT:
      return new BackendError(msg, 400, 'invalid_request');
    default:
      return new BackendError(msg, 502, 'worker_failed');
  }
}
