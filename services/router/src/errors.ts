// OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}}. Everything that goes wrong
// in a request is turned into one of these by `toApiError`; stack traces never reach the client.
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { BackendError } from './backend.ts';
import type { SafeObserver } from './observer.ts';
import { REFUSAL_CODES } from './admission.ts';

const refusalCodes: ReadonlySet<string> = new Set(REFUSAL_CODES);

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export class ApiError extends Error {
  override name = 'ApiError';
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Record<string, string>;

  constructor(
    readonly status: number,
    message: string,
    opts: { type?: string; param?: string | null; code?: string | null; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.type = opts.type ?? (status >= 500 ? 'server_error' : 'invalid_request_error');
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
    this.headers = opts.headers ?? {};
  }

  toJSON(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }

  /** The code observers and metrics see: the OpenAI code, else the HTTP status. */
  get metricCode(): string {
    return this.code ?? String(this.status);
  }
}

export function invalidRequest(message: string, param: string | null = null, code: string | null = null): ApiError {
  return new ApiError(400, message, { param, code });
}

export function modelNotFound(model: string): ApiError {
  return new ApiError(404, `The model \`${model}\` does not exist.`, { param: 'model', code: 'model_not_found' });
}

/** Ajv instance path ("/messages/0/role") to OpenAI's param style ("messages[0].role"). */
export function paramFromPath(path: string): string {
  let out = '';
  for (const part of path.split('/').slice(1)) {
    const key = part.replace(/~1/g, '/').replace(/~0/g, '~');
    out += /^\d+$/.test(key) ? `[${key}]` : out === '' ? key : `.${key}`;
  }
  return out;
}

interface AjvError {
  instancePath?: string;
  keyword?: string;
  params?: Record<string, unknown>;
  message?: string;
}

function fromValidation(errors: AjvError[]): ApiError {
  const e = errors[0] ?? {};
  let param = paramFromPath(e.instancePath ?? '');
  let message = e.message ?? 'is invalid';
  if (e.keyword === 'required' && typeof e.params?.missingProperty === 'string') {
    param = param === '' ? e.params.missingProperty : `${param}.${e.params.missingProperty}`;
    message = 'is required';
  } else if (e.keyword === 'type') {
    const t = e.params?.type;
    message = `must be of type ${Array.isArray(t) ? t.join(' or ') : String(t)}`;
  } else if (e.keyword === 'enum' && Array.isArray(e.params?.allowedValues)) {
    message = `must be one of ${e.params.allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
  } else if (e.keyword === 'additionalProperties' && typeof e.params?.additionalProperty === 'string') {
    param = param === '' ? e.params.additionalProperty : `${param}.${e.params.additionalProperty}`;
    message = 'is not a supported field';
  }
  if (param === '') return invalidRequest(`The request body ${message.replace(/^must be (of type )?object$/, 'must be a JSON object')}.`);
  return invalidRequest(`'${param}' ${message}.`, param);
}

const isNamed = (err: unknown, name: string): err is Error => err instanceof Error && err.name === name;

/** Maps anything thrown while handling a request to the error the client gets. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof BackendError) {
    const headers: Record<string, string> = {};
    if (err.status === 503 || err.retryAfterS !== undefined) {
      headers['retry-after'] = String(Math.max(1, Math.ceil(err.retryAfterS ?? 1)));
    }
    const status = err.status >= 400 && err.status <= 599 ? err.status : 500;
    return new ApiError(status, err.message, { code: err.code, headers });
  }
  if (isNamed(err, 'TokenizeError')) return invalidRequest(err.message, 'prompt', 'tokenize_error');
  if (isNamed(err, 'ChatTemplateError')) return invalidRequest(err.message, 'messages', 'invalid_messages');
  const fe = err as Partial<FastifyError> & { validation?: AjvError[] };
  if (Array.isArray(fe.validation)) return fromValidation(fe.validation);
  switch (fe.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return invalidRequest('The request body is not valid JSON.', null, 'invalid_json');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return invalidRequest('The request body is empty; expected a JSON object.', null, 'invalid_json');
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError(413, 'The request body is too large.', { code: 'request_too_large' });
  }
  const status = typeof fe.statusCode === 'number' ? fe.statusCode : 500;
  // Fastify's own 4xx errors (bad content-length, unsupported media type, ...) have safe messages.
  if (status >= 400 && status < 500) return new ApiError(status, fe.message ?? 'Bad request', { code: fe.code ?? null });
  return new ApiError(500, 'Internal server error.', { code: 'internal_error' });
}

export function sendApiError(reply: FastifyReply, e: ApiError): FastifyReply {
  return reply.code(e.status).headers(e.headers).type('application/json; charset=utf-8').send(e.toJSON());
}

/** Installs the error and not-found handlers on the root instance. */
export function installErrorHandlers(
  app: FastifyInstance,
  observer: SafeObserver,
  /** Marks the request's generation failed; true when it had started (see observer.ts). */
  failed: (req: FastifyRequest) => boolean,
): void {
  app.setErrorHandler((err, req, reply) => {
    const e = toApiError(err);
    // Admission's refusals are the cluster working as meant (an overload refuses most requests):
    // one info line each, without the stack an error line carries.
    if (e.status === 503 && e.code !== null && refusalCodes.has(e.code)) req.log.info({ status: e.status, code: e.code, error: e.message }, 'request refused');
    else if (e.status >= 500) req.log.error({ err }, 'request failed');
    else req.log.info({ status: e.status, code: e.code, error: e.message }, 'request rejected');
    observer.call('onError', e.status, e.metricCode, { requestId: req.id, started: failed(req), message: e.message });
    if (reply.sent || reply.raw.headersSent) return;
    return sendApiError(reply, e);
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(404, `Invalid URL (${req.method} ${req.url.split('?')[0].slice(0, 200)}).`, { code: 'not_found' });
    observer.call('onError', e.status, e.metricCode, { requestId: req.id, started: false, message: e.message });
    return sendApiError(reply, e);
  });
}
