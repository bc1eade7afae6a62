// JSON schemas of the request bodies (validated by fastify's Ajv, configured in app.ts without type
// coercion). Optional fields also accept null (some clients send null for "unset"). Checks that
// need the model (token id ranges, lengths) or give better messages in code live in the routes.

//
// Every number has explicit bounds: what passes here must fit the gRPC fields it travels in
// (int32 / uint32 / float) and mean something, so no value from a client can reach a worker's
// sampler or scheduler out of range (issue 12, defect 1).

const nullable = (type: string | string[]) => [...(Array.isArray(type) ? type : [type]), 'null'];

/** Largest value of a proto int32 (top_k, logprobs) and, kept below it, of the uint32 counts. */
export const INT32_MAX = 2 ** 31 - 1;
/** A day: longer latency SLOs are meaningless. */
export const MAX_SLO_MS = 86_400_000;
/** Chat messages per request: no template renders more into one context (each adds tokens). */
export const MAX_MESSAGES = 4096;
/** Content parts per message, stop strings' length, and the like: generous but bounded. */
const MAX_PARTS = 256;
const MAX_STOP_CHARS = 1024;
const MAX_NAME_CHARS = 256;

// A misspelt field (`ttft`, `ttftMs`) would otherwise be ignored silently and the default SLO used.
const slo = {
  type: nullable('object'),
  additionalProperties: false,
  properties: {
    ttft_ms: { type: nullable('number'), exclusiveMinimum: 0, maximum: MAX_SLO_MS },
    tpot_ms: { type: nullable('number'), exclusiveMinimum: 0, maximum: MAX_SLO_MS },
  },
};

/** Fields shared by /v1/completions and /v1/chat/completions. */
const common = {
  model: { type: 'string' },
  max_tokens: { type: nullable('integer'), minimum: 1, maximum: INT32_MAX },
  temperature: { type: nullable('number'), minimum: 0, maximum: 2 },
  top_p: { type: nullable('number'), exclusiveMinimum: 0, maximum: 1 },
  top_k: { type: nullable('integer'), minimum: -1, maximum: INT32_MAX },
  // The workers' random streams take any safe integer (proto int64, read as a JS number).
  seed: { type: nullable('integer'), minimum: Number.MIN_SAFE_INTEGER, maximum: Number.MAX_SAFE_INTEGER },
  stop: { type: nullable(['string', 'array']), maxLength: MAX_STOP_CHARS, items: { type: 'string', maxLength: MAX_STOP_CHARS }, maxItems: 4 },
  stop_token_ids: { type: nullable('array'), items: { type: 'integer', minimum: 0, maximum: INT32_MAX }, maxItems: 64 },
  ignore_eos: { type: nullable('boolean') },
  min_tokens: { type: nullable('integer'), minimum: 0, maximum: INT32_MAX },
  n: { type: nullable('integer'), minimum: 1, maximum: 128 },
  stream: { type: nullable('boolean') },
  stream_options: {
    type: nullable('object'),
    properties: { include_usage: { type: nullable('boolean') } },
  },
  user: { type: nullable('string') },
  presence_penalty: { type: nullable('number'), minimum: -2, maximum: 2 },
  frequency_penalty: { type: nullable('number'), minimum: -2, maximum: 2 },
  logit_bias: { type: nullable('object') },
  slo,
};

export const completionsBodySchema = {
  type: 'object',
  required: ['model', 'prompt'],
  properties: {
    ...common,
    // The exact shape (string, [string], [ids], [[ids]]) is checked in code for a clearer message.
    prompt: { type: ['string', 'array'] },
    logprobs: { type: nullable('integer'), minimum: 0, maximum: 5 },
    echo: { type: nullable('boolean') },
    best_of: { type: nullable('integer'), minimum: 1, maximum: 128 },
    suffix: { type: nullable('string') },
  },
};

const contentPart = {
  type: 'object',
  required: ['type'],
  properties: { type: { type: 'string', enum: ['text'] }, text: { type: 'string' } },
};

export const chatBodySchema = {
  type: 'object',
  required: ['model', 'messages'],
  properties: {
    ...common,
    messages: {
      type: 'array',
      minItems: 1,
      maxItems: MAX_MESSAGES,
      items: {
        type: 'object',
        required: ['role'],
        properties: {
          role: { type: 'string', enum: ['system', 'developer', 'user', 'assistant'] },
          content: { type: nullable(['string', 'array']), items: contentPart, maxItems: MAX_PARTS },
          name: { type: nullable('string'), maxLength: MAX_NAME_CHARS },
        },
      },
    },
    max_completion_tokens: { type: nullable('integer'), minimum: 1, maximum: INT32_MAX },
    logprobs: { type: nullable('boolean') },
    top_logprobs: { type: nullable('integer'), minimum: 0, maximum: 20 },
    add_generation_prompt: { type: nullable('boolean') },
    tools: { type: nullable('array') },
    response_format: { type: nullable('object'), properties: { type: { type: 'string' } } },
  },
};

export const tokenizeBodySchema = {
  type: 'object',
  properties: {
    model: { type: nullable('string') },
    prompt: { type: 'string' },
    messages: chatBodySchema.properties.messages,
    add_special_tokens: { type: nullable('boolean') },
    add_generation_prompt: { type: nullable('boolean') },
  },
};

export const detokenizeBodySchema = {
  type: 'object',
  required: ['tokens'],
  properties: {
    model: { type: nullable('string') },
    tokens: { type: 'array', items: { type: 'integer', minimum: 0, maximum: INT32_MAX } },
  },
};

// Body types as the routes see them after validation.

export interface SloBody {
  ttft_ms?: number | null;
  tpot_ms?: number | null;
}

export interface CommonBody {
  model: string;
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  stop_token_ids?: number[] | null;
  ignore_eos?: boolean | null;
  min_tokens?: number | null;
  n?: number | null;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean | null } | null;
  user?: string | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  logit_bias?: Record<string, unknown> | null;
  slo?: SloBody | null;
}

export interface CompletionsBody extends CommonBody {
  prompt: string | unknown[];
  logprobs?: number | null;
  echo?: boolean | null;
  best_of?: number | null;
  suffix?: string | null;
}

export interface ChatMessageBody {
  role: 'system' | 'developer' | 'user' | 'assistant';
  content?: string | Array<{ type: 'text'; text?: string }> | null;
  name?: string | null;
}

export interface ChatBody extends CommonBody {
  messages: ChatMessageBody[];
  max_completion_tokens?: number | null;
  logprobs?: boolean | null;
  top_logprobs?: number | null;
  add_generation_prompt?: boolean | null;
  tools?: unknown[] | null;
  response_format?: { type?: string } | null;
}

export interface TokenizeBody {
  model?: string | null;
  prompt?: string;
  messages?: ChatMessageBody[];
  add_special_tokens?: boolean | null;
  add_generation_prompt?: boolean | null;
}

export interface DetokenizeBody {
  model?: string | null;
  tokens: number[];
}
