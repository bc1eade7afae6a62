// Generated HTTP requests for the router's OpenAI endpoints: a small valid request (so that many
// inputs reach the workers) with a few fields replaced by hostile values, unknown fields added, or
// the whole body replaced. Bodies are serialized by `toJsonText`, which can also write JSON number
// literals that JSON.stringify cannot produce (1e999 parses as Infinity, 2^53 + 1 loses precision)
// and very large or deep values without building them as objects first.
import fc from 'fast-check';

/** JSON text written as is into the body. */
export class RawJson {
  constructor(readonly text: string) {}
}

export function toJsonText(v: unknown): string {
  if (v instanceof RawJson) return v.text;
  if (Array.isArray(v)) return `[${v.map(toJsonText).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}:${toJsonText(x)}`).join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

// ---- hostile values ----

export const hostileNumber: fc.Arbitrary<number> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(
    0, -0, 1, -1, -2, 0.5, 1.5, 2, 2.0000001, 3, 1e-7, 5e-324, 100, 1000, 65536, 1e6,
    2 ** 31 - 1, 2 ** 31, -(2 ** 31), -(2 ** 31) - 1, 2 ** 32 - 1, 2 ** 32, 2 ** 53, -(2 ** 53), 2 ** 53 + 2,
    2 ** 63, 2 ** 64, 3.4028235e38, 3.5e38, 1e308, -1e308, Number.MAX_VALUE,
  ) },
  { weight: 1, arbitrary: fc.integer() },
  { weight: 1, arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true }) },
);

/** Number literals JSON.stringify never writes; some parse to Infinity or lose digits. */
const rawNumber = fc.constantFrom(
  '1e999', '-1e999', '1E400', '-0', '-0.0', '1e-400', '0.0000000000000000000000000000001', '123456789012345678901234567890',
  '1.0', '4.0e0', '2147483648', '-2147483649', '4294967296', '9007199254740993', '18446744073709551616', '4294967296.5',
).map((t) => new RawJson(t));

/** Strings that look like numbers to a human, and a few invalid JSON tokens (the whole body is then invalid). */
const nanLike = fc.oneof(
  fc.constantFrom('NaN', 'Infinity', '-Infinity', 'nan', '1e999', '0x10', '', ' 1', '1_000', '١٢٣'),
  fc.constantFrom('NaN', 'Infinity', 'undefined', '01', '+1', '.5').map((t) => new RawJson(t)),
);

const giantString = fc.tuple(fc.constantFrom('a', ' ', '🦙', '\u0000', 'Once upon a time ', '\\', '"', '<|im_start|>', '{{ raise_exception("x") }}'), fc.integer({ min: 1_000, max: 1_500_000 }))
  .map(([unit, chars]) => unit.repeat(Math.max(1, Math.floor(chars / unit.length))));

export const hostileString: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom('', ' ', '\u0000', '\uD800', '\uDFFF\uD800', '\uFEFF', '🦙🦙', 'e\u0301', '\u202Egnirts', 'Ω≈ç√∫', '﷽', '\n\n\n', '{{', '{%', '</s>', '<s>', 'null') },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }) },
  { weight: 1, arbitrary: giantString },
);

/** `[[[[...1...]]]]` or `{"a":{"a":...}}`, thousands deep. */
const deepNesting = fc.tuple(fc.integer({ min: 10, max: 20_000 }), fc.boolean())
  .map(([depth, arrays]) => new RawJson(arrays ? '['.repeat(depth) + '1' + ']'.repeat(depth) : '{"a":'.repeat(depth) + '1' + '}'.repeat(depth)));

const scalar = fc.oneof(hostileNumber, rawNumber, fc.constantFrom('', 'x', true, false, null), fc.integer({ min: 0, max: 600 }));

/** An array of up to ~200k copies of one value. */
const hugeArray = fc.tuple(scalar, fc.integer({ min: 100, max: 200_000 }))
  .map(([v, n]) => new RawJson(`[${Array(n).fill(toJsonText(v)).join(',')}]`));

export const wild: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: hostileNumber },
  { weight: 2, arbitrary: rawNumber },
  { weight: 1, arbitrary: nanLike },
  { weight: 2, arbitrary: hostileString },
  { weight: 1, arbitrary: fc.constantFrom(true, false, null, {}, [], [null], { '': null }) },
  { weight: 1, arbitrary: fc.array(hostileNumber, { maxLength: 5 }) },
  { weight: 1, arbitrary: deepNesting },
  { weight: 1, arbitrary: hugeArray },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
);

/** The value one time in `oneIn`, else null. */
const rarely = <T>(arb: fc.Arbitrary<T>, oneIn: number) => fc.oneof({ weight: oneIn - 1, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: arb });

const sometimes = <T>(plausible: fc.Arbitrary<T>) => fc.oneof({ weight: 2, arbitrary: plausible }, { weight: 1, arbitrary: wild });

// ---- fields ----

const tokenIds = (vocab: number) => fc.array(fc.integer({ min: 0, max: vocab - 1 }), { minLength: 1, maxLength: 24 });

function prompt(vocab: number): fc.Arbitrary<unknown> {
  return fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom('Once upon a time', 'Sam', 'hi', 'The little dog ran to the park') },
    { weight: 2, arbitrary: tokenIds(vocab) },
    { weight: 2, arbitrary: hostileString },
    { weight: 1, arbitrary: fc.array(fc.oneof(fc.integer({ min: 0, max: vocab - 1 }), hostileNumber), { maxLength: 8 }) },
    { weight: 1, arbitrary: fc.array(tokenIds(vocab), { maxLength: 3 }) }, // [[ids]]
    { weight: 1, arbitrary: fc.array(fc.oneof(fc.constant('Sam'), hostileString), { maxLength: 3 }) }, // [string]
    { weight: 1, arbitrary: fc.integer({ min: 500, max: 100_000 }).map((n) => new RawJson(`[${Array(n).fill('300').join(',')}]`)) },
    { weight: 1, arbitrary: wild },
  );
}

const role = fc.oneof({ weight: 5, arbitrary: fc.constantFrom('user', 'system', 'assistant', 'developer') }, { weight: 1, arbitrary: fc.oneof(fc.constantFrom('tool', 'function', 'USER', ''), wild) });
const content = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('Once upon a time', 'hi', '') },
  { weight: 1, arbitrary: hostileString },
  { weight: 1, arbitrary: fc.array(fc.record({ type: fc.oneof(fc.constant('text'), wild), text: sometimes(fc.constant('hi')) }, { requiredKeys: ['type'] }), { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.constantFrom(null, [], [{ type: 'image_url', image_url: { url: 'http://x' } }]) },
  { weight: 1, arbitrary: wild },
);
const message = fc.record({ role, content, name: sometimes(fc.constant('bob')) }, { requiredKeys: ['role'] });
const messages = fc.oneof(
  { weight: 6, arbitrary: fc.constant([{ role: 'user', content: 'Once upon a time' }]) },
  { weight: 3, arbitrary: fc.array(message, { minLength: 0, maxLength: 5 }) },
  { weight: 1, arbitrary: fc.integer({ min: 1_000, max: 50_000 }).map((n) => new RawJson(`[${Array(n).fill('{"role":"user","content":""}').join(',')}]`)) },
  { weight: 1, arbitrary: wild },
);

const slo = fc.oneof(
  fc.record({ ttft_ms: sometimes(fc.constantFrom(1, 50, 1e-300, 1e9)), tpot_ms: sometimes(fc.constantFrom(0.001, 5, 1e9)) }, { requiredKeys: [] }),
  fc.constantFrom({ ttft_ms: new RawJson('1e999') }, { tpot_ms: new RawJson('-0') }, { ttft_ms: null, tpot_ms: null }, { extra: 1 }, { ttft_ms: { ttft_ms: 1 } }),
  wild,
);

/** Plausible and hostile values for each field the router knows. */
function fieldValues(vocab: number): Record<string, fc.Arbitrary<unknown>> {
  return {
    model: fc.oneof(fc.constantFrom('nope', '', 'STORIES260K'), wild),
    max_tokens: sometimes(fc.integer({ min: -1, max: 600 })),
    max_completion_tokens: sometimes(fc.integer({ min: -1, max: 600 })),
    temperature: sometimes(fc.constantFrom(0, 0.0001, 1, 2, 2.0001, -0.1)),
    top_p: sometimes(fc.constantFrom(0, 1e-9, 0.5, 1, 1.01)),
    top_k: sometimes(fc.constantFrom(-1, 0, 1, 40, 511, 512, 513, 2 ** 31 - 1, 2 ** 31, 2 ** 32)),
    seed: sometimes(fc.constantFrom(0, -1, 42, 2 ** 48, 2 ** 53 - 1, 2 ** 53, -(2 ** 63))),
    min_tokens: sometimes(fc.constantFrom(0, 1, 7, 600, 2 ** 31, 2 ** 32)),
    stop: sometimes(fc.oneof(fc.constantFrom('.', ['.', '!'], [], [''], ['a', 'b', 'c', 'd', 'e']), fc.array(hostileString, { maxLength: 5 }))),
    stop_token_ids: sometimes(fc.oneof(fc.array(fc.integer({ min: 0, max: vocab - 1 }), { maxLength: 4 }), fc.array(hostileNumber, { maxLength: 4 }))),
    ignore_eos: sometimes(fc.boolean()),
    n: sometimes(fc.constantFrom(1, 2, 0)),
    best_of: sometimes(fc.constantFrom(1, 2)),
    stream: sometimes(fc.boolean()),
    stream_options: sometimes(fc.constantFrom({ include_usage: true }, { include_usage: false }, {}, { include_usage: 'yes' }, { other: 1 })),
    user: sometimes(fc.constant('u')),
    presence_penalty: sometimes(fc.constantFrom(0, 0.5, -2, 2)),
    frequency_penalty: sometimes(fc.constantFrom(0, -0.5)),
    logit_bias: sometimes(fc.constantFrom({}, { '1': 100 }, { x: 'y' })),
    logprobs: sometimes(fc.constantFrom(0, 1, 5, 6, true, false)),
    top_logprobs: sometimes(fc.constantFrom(0, 1, 20, 21)),
    echo: sometimes(fc.boolean()),
    suffix: sometimes(fc.constantFrom('', 'x')),
    add_generation_prompt: sometimes(fc.boolean()),
    tools: sometimes(fc.constantFrom([], [{ type: 'function' }])),
    response_format: sometimes(fc.constantFrom({ type: 'text' }, { type: 'json_object' }, {})),
    slo,
  };
}

export interface HttpInput {
  endpoint: 'completions' | 'chat';
  /** Parsed-then-serialized body, or raw text (invalid JSON, a non-object). */
  body: unknown;
  contentType: string | null;
  requestId: string | null;
  /** Abort the request this many ms after sending it (a client that goes away). */
  abortAfterMs: number | null;
}

export function httpInput(opts: { modelName: string; vocab: number }): fc.Arbitrary<HttpInput> {
  const values = fieldValues(opts.vocab);
  const field = fc.constantFrom(...Object.keys(values)).chain((k) => values[k].map((v) => [k, v] as const));
  const unknownField = fc.tuple(fc.oneof(fc.constantFrom('__proto__', 'constructor', 'prompt ', 'extra_body', 'x'.repeat(10_000)), fc.string({ maxLength: 12 })), wild);
  return fc.record({
    endpoint: fc.constantFrom('completions' as const, 'chat' as const),
    stream: fc.boolean(),
    prompt: prompt(opts.vocab),
    messages,
    maxTokens: fc.integer({ min: 1, max: 8 }),
    temperature: fc.constantFrom(0, 0.8),
    changed: fc.array(field, { maxLength: 4 }),
    unknown: fc.array(unknownField, { maxLength: 2 }),
    wholeBody: rarely(fc.oneof(wild, fc.constantFrom(new RawJson(''), new RawJson('{"model": '), new RawJson('{"a":1}{"b":2}'), new RawJson('\u0000'))), 12),
    contentType: fc.oneof({ weight: 20, arbitrary: fc.constant('application/json') }, { weight: 1, arbitrary: fc.constantFrom(null, 'text/plain', 'application/json; charset=latin1', 'application/x-www-form-urlencoded') }),
    requestId: rarely(fc.constantFrom('fuzz-dup', 'fuzz-dup#1', '', 'x'.repeat(200), '../../etc', '%00'), 4),
    abortAfterMs: rarely(fc.integer({ min: 0, max: 60 }), 6),
  }).map((g) => {
    let body: unknown;
    if (g.wholeBody !== null) body = g.wholeBody;
    else {
      const b: Record<string, unknown> = { model: opts.modelName, max_tokens: g.maxTokens, temperature: g.temperature, stream: g.stream };
      if (g.endpoint === 'completions') b.prompt = g.prompt;
      else b.messages = g.messages;
      for (const [k, v] of g.changed) b[k] = v;
      for (const [k, v] of g.unknown) if (!(k in b)) Object.defineProperty(b, k, { value: v, enumerable: true, writable: true, configurable: true });
      body = b;
    }
    return { endpoint: g.endpoint, body, contentType: g.contentType, requestId: g.requestId, abortAfterMs: g.abortAfterMs };
  });
}

/**
 * Bodies the JSON schema accepts, every sampling field at an extreme of what it lets through
 * (int32/uint32/float32 edges, 2^53, 1e999 = Infinity, the smallest doubles): what gets past the
 * router and on to the workers.
 */
export function extremeInput(opts: { modelName: string; vocab: number }): fc.Arbitrary<HttpInput> {
  const raw = (t: string) => new RawJson(t);
  const pick = <T>(...xs: T[]) => fc.constantFrom(...xs);
  const fields = {
    max_tokens: pick<unknown>(1, 2, 8, 40, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 53, raw('1e999')),
    temperature: pick<unknown>(0, 5e-324, 1e-7, 0.5, 1, 2, raw('1e-400'), raw('-0')),
    top_p: pick<unknown>(5e-324, 1e-9, 0.5, 1),
    top_k: pick<unknown>(-1, 0, 1, 2, opts.vocab - 1, opts.vocab, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53, raw('1e999')),
    seed: pick<unknown>(0, 1, -1, 2 ** 31, 2 ** 32, 2 ** 48, 2 ** 53 - 1, -(2 ** 53 - 1), 2 ** 63),
    min_tokens: pick<unknown>(0, 1, 4, 8, 2 ** 31, 2 ** 32, 2 ** 53, raw('1e999')),
    stop_token_ids: pick<unknown>([], [0], [1], [2], [opts.vocab - 1], Array.from({ length: 64 }, (_, i) => i)),
    ignore_eos: pick<unknown>(true, false),
    stop: pick<unknown>(['.'], ['a', 'b', 'c', 'd'], '\u0000', '🦙', ' '),
    stream_options: pick<unknown>({ include_usage: true }),
    slo: pick<unknown>({ ttft_ms: 5e-324 }, { tpot_ms: 5e-324 }, { ttft_ms: raw('1e999'), tpot_ms: raw('1e999') }, { ttft_ms: 1e308 }, { ttft_ms: 1, tpot_ms: 1 }),
  };
  const completionOnly = { logprobs: pick<unknown>(0, 1, 5), echo: pick<unknown>(true, false) };
  const chatOnly = { logprobs: pick<unknown>(true), top_logprobs: pick<unknown>(0, 1, 20), max_completion_tokens: pick<unknown>(1, 4, 2 ** 31, raw('1e999')) };
  const some = (rec: Record<string, fc.Arbitrary<unknown>>) => fc.record(rec, { requiredKeys: [] });
  return fc.record({
    endpoint: fc.constantFrom('completions' as const, 'chat' as const),
    stream: fc.boolean(),
    common: some(fields),
    completion: some(completionOnly),
    chat: some(chatOnly),
    prompt: fc.oneof(fc.constantFrom('Once upon a time', 'Sam'), tokenIds(opts.vocab)),
  }).map((g) => {
    const body: Record<string, unknown> = { model: opts.modelName, max_tokens: 4, stream: g.stream, ...g.common };
    if (g.endpoint === 'completions') Object.assign(body, { prompt: g.prompt }, g.completion);
    else Object.assign(body, { messages: [{ role: 'user', content: typeof g.prompt === 'string' ? g.prompt : 'hi' }] }, g.chat);
    return { endpoint: g.endpoint, body, contentType: 'application/json', requestId: null, abortAfterMs: null };
  });
}
