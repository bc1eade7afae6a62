// Issue 12 on the HTTP side: every numeric field has explicit bounds (nothing out of int32 / float
// range reaches a worker), the router's own conversion keeps values a worker accepts, chat
// `messages` is bounded before the template runs, and the server closes stalled connections.
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { FakeBackend, FakeTokenizer, MODEL, makeApp, until, type Script } from './fakes.ts';

const tok = new FakeTokenizer();
let script: Script = { ids: [] };
const backend = new FakeBackend(() => script);
let app: FastifyInstance;

before(async () => {
  app = makeApp(backend, { maxModelLen: 1_000_000 });
  await app.ready();
});
after(() => app.close());

const post = (url: string, payload: unknown) => app.inject({ method: 'POST', url, payload: payload as object });

function assertParam(res: { statusCode: number; body: string; json(): any }, param: string) {
  assert.equal(res.statusCode, 400, res.body);
  const e = res.json().error;
  assert.equal(e.type, 'invalid_request_error');
  assert.equal(e.param, param, JSON.stringify(e));
  assert.match(e.message, new RegExp(param.replace(/[[\]]/g, '\\$&')));
}

describe('numeric bounds (defect 1)', () => {
  // Each of these is accepted by a schema without maxima and then overflows its proto field.
  const INT32_OVER = 2 ** 31;
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['top_k over int32 (the reported crash)', { top_k: INT32_OVER }, 'top_k'],
    ['max_tokens over int32', { max_tokens: INT32_OVER }, 'max_tokens'],
    ['min_tokens over int32', { min_tokens: 2 ** 32 }, 'min_tokens'],
    ['stop_token_ids item over uint32', { stop_token_ids: [2 ** 32 + 5] }, 'stop_token_ids[0]'],
    ['seed beyond a safe integer', { seed: 2 ** 64 }, 'seed'],
    ['slo.ttft_ms absurd', { slo: { ttft_ms: 1e300 } }, 'slo.ttft_ms'],
    ['slo.tpot_ms absurd', { slo: { tpot_ms: 1e300 } }, 'slo.tpot_ms'],
    ['n absurd', { n: 1e12 }, 'n'],
    ['best_of absurd', { best_of: 1e12 }, 'best_of'],
    ['logprobs over 5', { logprobs: 6 }, 'logprobs'],
    ['temperature over 2', { temperature: 1e39 }, 'temperature'],
    ['top_p over 1', { top_p: 1.5 }, 'top_p'],
    ['top_k below -1', { top_k: -2 }, 'top_k'],
  ];
  for (const [name, fields, param] of cases) {
    test(`/v1/completions: ${name} is 400 naming ${param}`, async () => {
      const before = backend.requests.length;
      assertParam(await post('/v1/completions', { model: MODEL, prompt: 'Once', ...fields }), param);
      assert.equal(backend.requests.length, before, 'nothing reached the backend');
    });
  }

  test('/v1/chat/completions bounds the same fields, plus max_completion_tokens and top_logprobs', async () => {
    const messages = [{ role: 'user', content: 'hi' }];
    assertParam(await post('/v1/chat/completions', { model: MODEL, messages, top_k: 2 ** 31 }), 'top_k');
    assertParam(await post('/v1/chat/completions', { model: MODEL, messages, max_completion_tokens: 2 ** 31 }), 'max_completion_tokens');
    assertParam(await post('/v1/chat/completions', { model: MODEL, messages, logprobs: true, top_logprobs: 21 }), 'top_logprobs');
  });

  test('/detokenize bounds token ids', async () => {
    assertParam(await post('/detokenize', { tokens: [2 ** 40] }), 'tokens[0]');
  });

  test('the largest accepted values convert to what a worker accepts', async () => {
    script = { ids: tok.ids('ok'), finish: 'stop' };
    const res = await post('/v1/completions', {
      model: MODEL, prompt: 'Once', top_k: 2 ** 31 - 1, top_p: 1e-300, temperature: 1e-300, seed: Number.MAX_SAFE_INTEGER, max_tokens: 4,
    });
    assert.equal(res.statusCode, 200, res.body);
    const s = backend.requests.at(-1)!.sampling;
    assert.equal(s.topK, 0, 'top_k at or above the vocabulary is off');
    assert.ok(s.topP >= 1e-5 && Math.fround(s.topP) > 0, `top_p ${s.topP} survives float32`);
    assert.equal(s.temperature, 0, 'a temperature float32 flushes to a subnormal is greedy');
    assert.equal(s.seed, Number.MAX_SAFE_INTEGER);
  });
});

describe('messages bound (defect 17)', () => {
  test('100k empty messages are refused with 400 before the chat template runs', async () => {
    const messages = Array.from({ length: 100_000 }, () => ({ role: 'user' }));
    const before = backend.requests.length;
    const res = await post('/v1/chat/completions', { model: MODEL, messages });
    assertParam(res, 'messages');
    assert.match(res.json().error.message, /4096/);
    assert.equal(backend.requests.length, before);
  });

  test('/tokenize applies the same bound', async () => {
    const messages = Array.from({ length: 5000 }, () => ({ role: 'user', content: '' }));
    assertParam(await post('/tokenize', { messages }), 'messages');
  });

  test('a message with thousands of content parts is refused', async () => {
    const content = Array.from({ length: 1000 }, () => ({ type: 'text', text: '' }));
    assertParam(await post('/v1/chat/completions', { model: MODEL, messages: [{ role: 'user', content }] }), 'messages[0].content');
  });
});

describe('HTTP timeouts (defect 17)', () => {
  test('a connection that sends nothing is closed after connectionTimeoutMs', async () => {
    const timed = makeApp(backend, { connectionTimeoutMs: 200 });
    await timed.listen({ host: '127.0.0.1', port: 0 });
    const { port } = timed.server.address() as { port: number };
    const socket = connect(port, '127.0.0.1');
    try {
      let closed = false;
      socket.on('close', () => { closed = true; });
      socket.on('error', () => {});
      await until(() => closed, 10_000);
    } finally {
      socket.destroy();
      await timed.close();
    }
  });

  test('the defaults bound requests and idle connections', async () => {
    const s = app.server;
    assert.ok(s.requestTimeout > 0 && s.requestTimeout <= 60_000, `requestTimeout ${s.requestTimeout}`);
    assert.ok(s.timeout > 0, `connection timeout ${s.timeout}`);
    assert.ok(s.keepAliveTimeout > 0);
  });
});
