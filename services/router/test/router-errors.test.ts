import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { BackendError } from '../src/backend.ts';
import { FakeBackend, FakeTokenizer, MODEL, makeApp, noCapacity, parseSse, recordingObserver, type Script } from './fakes.ts';

const tok = new FakeTokenizer();
let script: Script = { ids: [] };
const backend = new FakeBackend(() => script);
const rec = recordingObserver();
let app: FastifyInstance;
const KEY = 'sk-test';
const auth = { authorization: `Bearer ${KEY}` };

before(async () => {
  app = makeApp(backend, {
    apiKey: KEY,
    metrics: rec.observer,
    extraRoutes: (a) => a.get('/metrics', async () => 'metrics 1\n'),
  });
  await app.ready();
});
after(() => app.close());

const post = (url: string, payload: unknown, headers: Record<string, string> = auth) =>
  app.inject({ method: 'POST', url, payload: payload as object, headers });

function assertError(res: { statusCode: number; json(): any }, status: number, fields: { code?: string | null; param?: string | null; type?: string }) {
  assert.equal(res.statusCode, status);
  const body = res.json();
  assert.deepEqual(Object.keys(body), ['error']);
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(typeof body.error.message, 'string');
  assert.ok(!/\n\s+at /.test(body.error.message), 'no stack trace');
  for (const [k, v] of Object.entries(fields)) assert.equal(body.error[k], v, `${k} of ${JSON.stringify(body)}`);
}

/** After every error the app still serves a good request. */
async function stillServes() {
  script = { ids: tok.ids('ok'), finish: 'stop' };
  const res = await post('/v1/completions', { model: MODEL, prompt: 'Once' });
  assert.equal(res.statusCode, 200);
  assert.equal(res.json().choices[0].text, 'ok');
}

describe('errors', () => {
  test('malformed JSON and empty body are 400 invalid_request_error', async () => {
    let res = await app.inject({ method: 'POST', url: '/v1/completions', payload: '{"model": ', headers: { ...auth, 'content-type': 'application/json' } });
    assertError(res, 400, { type: 'invalid_request_error', code: 'invalid_json' });
    res = await app.inject({ method: 'POST', url: '/v1/completions', payload: '', headers: { ...auth, 'content-type': 'application/json' } });
    assertError(res, 400, { type: 'invalid_request_error' });
    // Any content type is read as JSON (curl -d sends x-www-form-urlencoded).
    res = await app.inject({
      method: 'POST',
      url: '/v1/completions',
      payload: JSON.stringify({ model: MODEL, prompt: 'Once' }),
      headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded' },
    });
    assert.equal(res.statusCode, 200);
    await stillServes();
  });

  test('schema failures name the param', async () => {
    const cases: Array<[object, string]> = [
      [{ prompt: 'x' }, 'model'],
      [{ model: MODEL }, 'prompt'],
      [{ model: MODEL, prompt: 'x', max_tokens: -1 }, 'max_tokens'],
      [{ model: MODEL, prompt: 'x', max_tokens: 0 }, 'max_tokens'],
      [{ model: MODEL, prompt: 'x', max_tokens: '5' }, 'max_tokens'],
      [{ model: MODEL, prompt: 'x', max_tokens: 1.5 }, 'max_tokens'],
      [{ model: MODEL, prompt: 'x', temperature: 3 }, 'temperature'],
      [{ model: MODEL, prompt: 'x', top_p: 0 }, 'top_p'],
      [{ model: MODEL, prompt: 'x', logprobs: 6 }, 'logprobs'],
      [{ model: MODEL, prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'],
      [{ model: MODEL, prompt: 'x', stop_token_ids: [-1] }, 'stop_token_ids[0]'],
      [{ model: MODEL, prompt: 12 }, 'prompt'],
      [{ model: MODEL, prompt: [{}] }, 'prompt'],
      [{ model: MODEL, prompt: [] }, 'prompt'],
      [{ model: MODEL, prompt: ['a', 'b'] }, 'prompt'],
      [{ model: MODEL, prompt: [999] }, 'prompt'],
      [{ model: MODEL, prompt: 'x', stop_token_ids: [999] }, 'stop_token_ids'],
      [{ model: MODEL, prompt: 'x', n: 2 }, 'n'],
      [{ model: MODEL, prompt: 'x', presence_penalty: 0.5 }, 'presence_penalty'],
      [{ model: MODEL, prompt: 'x', frequency_penalty: -1 }, 'frequency_penalty'],
      [{ model: MODEL, prompt: 'x€' }, 'prompt'],
    ];
    for (const [payload, param] of cases) {
      const res = await post('/v1/completions', payload);
      assertError(res, 400, { type: 'invalid_request_error', param });
    }
    let res = await post('/v1/completions', { model: MODEL, prompt: 'x', max_tokens: -1 });
    assert.equal(res.json().error.message, "'max_tokens' must be >= 1.");
    res = await post('/v1/completions', { model: MODEL, prompt: 'x€' });
    assert.match(res.json().error.message, /cannot encode/);
    res = await post('/v1/completions', [1, 2]);
    assertError(res, 400, { param: null });
    await stillServes();
  });

  test('unknown model 404 model_not_found; unknown route 404', async () => {
    let res = await post('/v1/completions', { model: 'other', prompt: 'x' });
    assertError(res, 404, { code: 'model_not_found', param: 'model' });
    res = await post('/v1/chat/completions', { model: 'other', messages: [{ role: 'user', content: 'x' }] });
    assertError(res, 404, { code: 'model_not_found' });
    res = await app.inject({ method: 'GET', url: '/v1/nope', headers: auth });
    assertError(res, 404, { code: 'not_found' });
    await stillServes();
  });

  test('prompt longer than the context: 413; prompt + max_tokens too long: 400 context_length_exceeded', async () => {
    let res = await post('/v1/completions', { model: MODEL, prompt: 'a'.repeat(70) });
    assertError(res, 413, { code: 'context_length_exceeded', param: 'prompt' });
    res = await post('/v1/completions', { model: MODEL, prompt: 'a'.repeat(40), max_tokens: 30 });
    assertError(res, 400, { code: 'context_length_exceeded', param: 'max_tokens' });
    assert.match(res.json().error.message, /maximum context length is 64 tokens/);
    res = await post('/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'a'.repeat(70) }] });
    assertError(res, 413, { code: 'context_length_exceeded', param: 'messages' });
    // Text that cannot fit is refused before it is encoded.
    res = await post('/v1/completions', { model: MODEL, prompt: '€'.repeat(64 * 64 + 1) });
    assertError(res, 413, { code: 'context_length_exceeded', param: 'prompt' });
    res = await post('/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: '€'.repeat(64 * 64 + 1) }] });
    assertError(res, 413, { code: 'context_length_exceeded', param: 'messages' });
    await stillServes();
  });

  test('body over the limit: 413', async () => {
    const small = makeApp(backend, { bodyLimit: 1024 });
    const res = await small.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'a'.repeat(2000) } });
    assertError(res, 413, { code: 'request_too_large' });
    await small.close();
  });

  test('API key: missing or wrong is 401 invalid_api_key; probes and /metrics are open', async () => {
    let res = await post('/v1/completions', { model: MODEL, prompt: 'x' }, {});
    assertError(res, 401, { code: 'invalid_api_key' });
    res = await post('/v1/completions', { model: MODEL, prompt: 'x' }, { authorization: 'Bearer nope' });
    assertError(res, 401, { code: 'invalid_api_key' });
    res = await app.inject({ method: 'GET', url: '/v1/models' });
    assertError(res, 401, { code: 'invalid_api_key' });
    for (const url of ['/health', '/ready', '/metrics']) {
      res = await app.inject({ method: 'GET', url });
      assert.equal(res.statusCode, 200, url);
    }
    assert.equal((await app.inject({ method: 'GET', url: '/metrics' })).body, 'metrics 1\n');
    await stillServes();
  });

  test('an admission refusal is logged as one info line without a stack; a worker failure stays an error', async () => {
    const lines: any[] = [];
    const logger = pino({ level: 'info' }, { write: (s: string) => { lines.push(JSON.parse(s)); } });
    const logged = makeApp(backend, { logger });
    await logged.ready();
    try {
      script = { ids: [], errorBefore: new BackendError('predicted time to first token 2500 ms leaves no margin within the SLO of 2000 ms', 503, 'slo_ttft', 1) };
      assertError(await logged.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'x' } }), 503, { code: 'slo_ttft' });
      script = { ids: [], errorBefore: new BackendError('worker lost', 503, 'worker_failed', 1) };
      assertError(await logged.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'x' } }), 503, { code: 'worker_failed' });
    } finally {
      await logged.close();
    }
    const refused = lines.filter((l) => l.msg === 'request refused');
    assert.equal(refused.length, 1);
    assert.equal(refused[0].level, 30);
    assert.equal(refused[0].code, 'slo_ttft');
    assert.match(refused[0].error, /leaves no margin/);
    assert.ok(!JSON.stringify(refused[0]).includes(' at '), 'no stack');
    const failed = lines.filter((l) => l.msg === 'request failed');
    assert.equal(failed.length, 1);
    assert.equal(failed[0].level, 50);
    assert.equal(failed[0].err.message, 'worker lost');
  });

  test('BackendError 503 before the first token: 503 with Retry-After, observer told', async () => {
    rec.events.length = 0;
    script = { ids: [], errorBefore: noCapacity() };
    let res = await post('/v1/completions', { model: MODEL, prompt: 'x' });
    assertError(res, 503, { code: 'no_capacity', type: 'server_error' });
    assert.equal(res.headers['retry-after'], '3');
    // Streaming requests that fail before the first token get a plain HTTP error too.
    res = await post('/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content: 'x' }], stream: true });
    assertError(res, 503, { code: 'no_capacity' });
    const names = rec.events.map((e) => e[0]);
    assert.deepEqual(names, ['start', 'rejected', 'error', 'start', 'rejected', 'error']);
    assert.deepEqual(rec.events[1]!.slice(1, 2), ['no_capacity']);
    assert.equal(rec.events[2]![1], 503);
    assert.equal(rec.events[2]![2], 'no_capacity');
    assert.equal((rec.events[2]![3] as any).started, true);
    await stillServes();
  });

  test('backend failures: 400 passes through, unknown errors are 500 without details', async () => {
    script = { ids: [], errorBefore: new BackendError('prompt too long for workers', 400, 'prompt_too_long') };
    let res = await post('/v1/completions', { model: MODEL, prompt: 'x' });
    assertError(res, 400, { code: 'prompt_too_long', type: 'invalid_request_error' });
    script = { ids: [], errorBefore: new Error('secret internal detail') };
    res = await post('/v1/completions', { model: MODEL, prompt: 'x' });
    assertError(res, 500, { type: 'server_error', code: 'internal_error' });
    assert.doesNotMatch(res.body, /secret/);
    await stillServes();
  });

  test('error after streaming started: an error chunk, then [DONE]', async () => {
    script = { ids: tok.ids('abcd'), errorAfter: { tokens: 2, error: new BackendError('worker died', 500, 'worker_failed') } };
    rec.events.length = 0;
    const res = await post('/v1/completions', { model: MODEL, prompt: 'x', stream: true });
    await new Promise((r) => setTimeout(r, 10));
    // Reported once, as an error of a started request (no onRequestEnd).
    assert.deepEqual(
      rec.events.map((e) => e[0]),
      ['start', 'first', 'token', 'error'],
    );
    assert.equal((rec.events.at(-1)![3] as any).started, true);
    assert.equal(res.statusCode, 200);
    const events = parseSse(res.body) as any[];
    assert.equal(events.at(-1), '[DONE]');
    assert.deepEqual(events.at(-2), { error: { message: 'worker died', type: 'server_error', param: null, code: 'worker_failed' } });
    assert.equal(events.slice(0, -2).map((c) => c.choices[0].text).join(''), 'ab');
    await stillServes();
  });
});

describe('models and admin routes', () => {
  test('/v1/models', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/models', headers: auth });
    const body = res.json();
    assert.equal(body.object, 'list');
    assert.equal(body.data.length, 1);
    const m = body.data[0];
    assert.deepEqual({ ...m, created: 0 }, { id: MODEL, object: 'model', created: 0, owned_by: 'pdserve', max_model_len: 64, vocab_size: tok.vocabSize });
    assert.equal((await app.inject({ method: 'GET', url: `/v1/models/${MODEL}`, headers: auth })).statusCode, 200);
    assertError(await app.inject({ method: 'GET', url: '/v1/models/x', headers: auth }), 404, { code: 'model_not_found' });
  });

  test('/health, /ready, /workers', async () => {
    assert.deepEqual((await app.inject({ method: 'GET', url: '/health' })).json(), { status: 'ok' });
    backend.isReady = false;
    assert.equal((await app.inject({ method: 'GET', url: '/ready' })).statusCode, 503);
    backend.isReady = true;
    assert.equal((await app.inject({ method: 'GET', url: '/ready' })).statusCode, 200);
    // ?min_workers: ready only once that many workers are healthy (the fake has one).
    assert.equal((await app.inject({ method: 'GET', url: '/ready?min_workers=1' })).statusCode, 200);
    const short = await app.inject({ method: 'GET', url: '/ready?min_workers=2' });
    assert.equal(short.statusCode, 503);
    assert.deepEqual(short.json(), { status: 'not_ready', healthy_workers: 1, min_workers: 2 });
    assert.equal((await app.inject({ method: 'GET', url: '/ready?min_workers=x' })).statusCode, 400);
    const w = (await app.inject({ method: 'GET', url: '/workers', headers: auth })).json();
    assert.equal(w.workers[0].id, 'w1');
  });

  test('/tokenize and /detokenize', async () => {
    let res = await post('/tokenize', { prompt: 'Hello world' });
    assert.deepEqual(res.json(), { tokens: tok.encode('Hello world'), count: 3, max_model_len: 64 });
    res = await post('/tokenize', { model: MODEL, prompt: 'Hello', add_special_tokens: false });
    assert.deepEqual(res.json().tokens, tok.ids('Hello'));
    res = await post('/tokenize', { messages: [{ role: 'user', content: 'Hello' }] });
    assert.deepEqual(res.json().tokens, tok.encode('Hello'));
    assertError(await post('/tokenize', { prompt: '€' }), 400, { param: 'prompt' });
    assertError(await post('/tokenize', {}), 400, { param: 'prompt' });
    res = await post('/detokenize', { tokens: tok.encode('Hello world') });
    assert.deepEqual(res.json(), { prompt: 'Hello world' });
    assertError(await post('/detokenize', { tokens: [1000] }), 400, { param: 'tokens' });
    assertError(await post('/detokenize', { model: 'x', tokens: [1] }), 404, { code: 'model_not_found' });
  });
});
