// The router's HTTP app: OpenAI-compatible /v1 routes over a Backend, plus health, readiness,
// workers and tokenize. Returns a fastify instance that is not listening yet.
//
//   POST /v1/completions, POST /v1/chat/completions (stream or not), GET /v1/models[/:model]
//   GET /health (always 200), GET /ready (200 / 503 from backend.ready()), GET /workers
//   POST /tokenize {prompt | messages, add_special_tokens?}, POST /detokenize {tokens}
//   GET /metrics and anything else: `extraRoutes`.
//
// Errors are OpenAI-shaped ({"error": {message, type, param, code}}): 400 invalid request (schema,
// malformed JSON, unsupported parameter, bad token id, untokenizable text, prompt + max_tokens over
// the context: code context_length_exceeded), 401 invalid_api_key, 404 model_not_found / unknown
// route, 413 body over bodyLimit (request_too_large) or prompt alone over maxModelLen
// (context_length_exceeded), 503 BackendError with Retry-After, 500 anything else (no details).
// Usage counts like vLLM: a sampled stop token id / EOS counts as a completion token.
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Tokenizer } from '../../../packages/engine/src/tokenizer/types.ts';
import type { Backend, LatencySlo } from './backend.ts';
import { failGeneration, type RouterContext } from './context.ts';
import { ApiError, installErrorHandlers } from './errors.ts';
import { SafeObserver, type RouterObserver } from './observer.ts';
import { adminRoutes } from './routes/admin.ts';
import { chatRoutes } from './routes/chat.ts';
import { completionsRoutes } from './routes/completions.ts';
import { modelsRoutes } from './routes/models.ts';

export const DEFAULT_BODY_LIMIT = 8 * 1024 * 1024;

/** Paths served without the API key (probes and Prometheus scrapes). */
export const PUBLIC_PATHS: ReadonlySet<string> = new Set(['/health', '/ready', '/metrics']);

export interface RouterAppOptions {
  backend: Backend;
  tokenizer: Tokenizer;
  /** The name clients must put in `model`. */
  modelName: string;
  /** Context window: prompt + completion tokens. */
  maxModelLen: number;
  /** Token ids must be in [0, vocabSize). */
  vocabSize: number;
  /** Jinja chat template (tokenizer_config.json); default: the engine's DEFAULT_CHAT_TEMPLATE. */
  chatTemplate?: string;
  /** BOS / EOS texts the chat template may use (bos_token / eos_token); default ''. */
  chatBosToken?: string;
  chatEosToken?: string;
  /** When set, every route but /health, /ready and /metrics needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string | readonly string[];
  /** A pino logger (used as is), true (fastify's own pino at info), or false / absent (silent). */
  logger?: FastifyBaseLogger | boolean;
  /** Observer hooks (metrics). */
  metrics?: RouterObserver;
  /** SLO sent to the backend when a request has no `slo` of its own. */
  defaultSlo?: LatencySlo;
  /** Adds routes (e.g. GET /metrics) to the root instance, after the built-in ones. */
  extraRoutes?: (app: FastifyInstance) => void;
  /** Largest request body, bytes (default 8 MiB); larger ones get 413. */
  bodyLimit?: number;
  /** Time a client has to send a whole request, headers and body (default 30 s; 0 = none). */
  requestTimeoutMs?: number;
  /**
   * A connection with no bytes either way for this long is closed (default 10 min; 0 = none). A
   * non-streamed generation sends nothing until it ends, so this is far above any sane one.
   */
  connectionTimeoutMs?: number;
}

export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_CONNECTION_TIMEOUT_MS = 10 * 60_000;
/** Idle keep-alive connections are closed after this (Node's default is 5 s as well; explicit here). */
export const KEEP_ALIVE_TIMEOUT_MS = 5_000;

const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

/** The client's x-request-id when it is a sane token, else a fresh UUID. */
function requestId(req: { headers: Record<string, string | string[] | undefined> }): string {
  const h = req.headers['x-request-id'];
  return typeof h === 'string' && REQUEST_ID.test(h) ? h : randomUUID();
}

function apiKeyCheck(apiKeys: readonly string[]): (req: FastifyRequest) => void {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  const expected = apiKeys.map(digest);
  // Every key is compared (no early exit), each in constant time on equal-length digests.
  const matches = (presented: Buffer) => expected.reduce((hit, e) => timingSafeEqual(presented, e) || hit, false);
  return (req) => {
    const path = req.url.split('?')[0] ?? '';
    if (PUBLIC_PATHS.has(path)) return;
    const auth = req.headers.authorization;
    const m = typeof auth === 'string' ? /^Bearer\s+(.+)$/i.exec(auth.trim()) : null;
    const headers = { 'www-authenticate': 'Bearer' };
    if (m === null) {
      throw new ApiError(401, 'Missing API key: send it as "Authorization: Bearer <key>".', { code: 'invalid_api_key', headers });
    }
    if (!matches(digest(m[1] as string))) {
      throw new ApiError(401, 'Incorrect API key provided.', { code: 'invalid_api_key', headers });
    }
  };
}

export function buildRouterApp(opts: RouterAppOptions): FastifyInstance {
  const logger = opts.logger ?? false;
  const app = Fastify({
    ...(typeof logger === 'object' ? { loggerInstance: logger } : { logger }),
    bodyLimit: opts.bodyLimit ?? DEFAULT_BODY_LIMIT,
    // Slow or stalled clients (slowloris) must not hold sockets and parsers forever.
    requestTimeout: opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
    connectionTimeout: opts.connectionTimeoutMs ?? DEFAULT_CONNECTION_TIMEOUT_MS,
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    requestIdHeader: false,
    genReqId: requestId,
    // Same key as the workers' log lines, so one grep follows a request across processes.
    logController: new LogController({ requestIdLogLabel: 'request_id' }),
    // No type coercion ("5" is not an integer), keep unknown fields (clients send many), allow
    // `type: [..., 'null']`.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: true, allErrors: false, allowUnionTypes: true } },
  }) as unknown as FastifyInstance;

  const observer = new SafeObserver(opts.metrics, app.log);
  const ctx: RouterContext = {
    backend: opts.backend,
    tokenizer: opts.tokenizer,
    modelName: opts.modelName,
    maxModelLen: opts.maxModelLen,
    vocabSize: opts.vocabSize,
    chat: { template: opts.chatTemplate, bosToken: opts.chatBosToken, eosToken: opts.chatEosToken },
    defaultSlo: opts.defaultSlo,
    observer,
    createdAt: Math.floor(Date.now() / 1000),
  };

  // JSON whatever the content type says (curl -d sends x-www-form-urlencoded).
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('*', { parseAs: 'string' }, app.getDefaultJsonParser('error', 'ignore'));

  app.decorateRequest('pd', null as never);
  app.addHook('onRequest', async (req, reply) => {
    req.pd = { arrivedAt: performance.now() };
    reply.header('x-request-id', req.id);
  });
  const apiKeys = (typeof opts.apiKey === 'string' ? [opts.apiKey] : opts.apiKey ?? []).filter((k) => k !== '');
  if (apiKeys.length > 0) {
    const check = apiKeyCheck(apiKeys);
    app.addHook('onRequest', async (req) => check(req));
  }
  installErrorHandlers(app, observer, failGeneration);

  // Plugins load on ready() / listen() / inject().
  void app.register(completionsRoutes, { ctx });
  void app.register(chatRoutes, { ctx });
  void app.register(modelsRoutes, { ctx });
  void app.register(adminRoutes, { ctx });
  opts.extraRoutes?.(app);
  return app;
}
