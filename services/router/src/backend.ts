// The contract between the HTTP layer (OpenAI API) and the cluster that generates tokens. The HTTP
// layer tokenizes, validates and formats; a Backend picks workers, moves the request through
// prefill and decode, and yields generated token ids as they come.

export interface SamplingRequest {
  temperature: number;
  topP: number;
  topK: number; // 0 = off
  seed?: number;
  maxTokens: number;
  minTokens: number;
  stopTokenIds: number[]; // generation ends when one of these is sampled (not emitted)
  ignoreEos: boolean; // when true the model's own EOS ids do not end generation
  logprobs?: number; // undefined = none; N = chosen token + N alternatives
}

export interface LatencySlo {
  ttftMs?: number;
  tpotMs?: number;
}

export interface GenerateRequest {
  requestId: string;
  promptIds: number[];
  sampling: SamplingRequest;
  slo?: LatencySlo;
  /** Aborted when the client goes away; the backend must cancel work on every worker. */
  signal: AbortSignal;
}

export interface TokenEvent {
  type: 'token';
  id: number;
  logprob?: number;
  topLogprobs?: Array<{ id: number; logprob: number }>;
  /** On the first token: leading prompt tokens whose KV a worker's prefix cache held. */
  cachedTokens?: number;
}

/** How a generation ended. 'stop' = a stop token id (or EOS) was sampled; 'length' = max tokens or context full. */
export type FinishReason = 'stop' | 'length' | 'abort';

/** Always the last event of a stream. `timings` are milliseconds per phase (queue, prefill, kv_transfer, first_decode). */
export interface FinishEvent {
  type: 'finish';
  reason: FinishReason;
  stopTokenId?: number;
  timings: Record<string, number>;
  /**
   * The complete timings when some arrive after the last token (the prefill worker's reply can
   * trail the decode stream): the response need not wait for them, the metrics do.
   */
  timingsLater?: Promise<Record<string, number>>;
}

export type GenerationEvent = TokenEvent | FinishEvent;

/** Errors a backend raises before or during generation; the HTTP layer maps them to OpenAI errors. */
export class BackendError extends Error {
  constructor(
    message: string,
    readonly status: number, // 503 no capacity / SLO admission, 500 internal, 400 bad request (e.g. prompt too long)
    readonly code: string, // e.g. 'no_capacity', 'slo_ttft', 'worker_failed'
    readonly retryAfterS?: number,
    /** For the logs only (worker id, address, the worker's own message); never sent to the client. */
    readonly detail?: string,
  ) {
    super(message);
  }
}

export interface WorkerSummary {
  id: string;
  role: string;
  grpc_address: string;
  metrics_url: string;
  load: Record<string, unknown>;
  last_heartbeat_ms: number;
  healthy: boolean;
  state: string;
}

export interface Backend {
  /**
   * Starts a generation: token events, then exactly one finish event. Throws BackendError (before the
   * first event, e.g. no capacity or SLO admission; or later, when a worker fails).
   */
  generate(req: GenerateRequest): AsyncIterable<GenerationEvent>;
  /** At least one prefill-capable and one decode-capable worker are registered and reachable. */
  ready(): boolean;
  workers(): WorkerSummary[];
}
