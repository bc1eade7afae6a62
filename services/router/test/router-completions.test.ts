import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { EOS, FakeBackend, FakeTokenizer, MODEL, makeApp, parseSse, recordingObserver, type Script } from './fakes.ts';

const tok = new FakeTokenizer();
let script: Script = { ids: [] };
const backend = new FakeBackend(() => script);
const rec = recordingObserver();
let app: FastifyInstance;

before(async () => {
  app = makeApp(backend, { metrics: rec.observer, defaultSlo: { ttftMs: 500 } });
  await app.ready();
});
after(() => app.close());

const post = (payload: unknown, headers: Record<string, string> = {}) =>
  app.inject({ method: 'POST', url: '/v1/completions', payload: payload as object, headers });

describe('POST /v1/completions', () => {
  test('non-streaming response shape, usage, sampling defaults and request id', async () => {
    script = { ids: tok.ids(' upon a time'), finish: 'length' };
    const res = await post({ model: MODEL, prompt: 'Once', max_tokens: 5 }, { 'x-request-id': 'req-123' });
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['x-request-id'], 'req-123');
    const body = res.json();
    assert.match(body.id, /^cmpl-/);
    assert.equal(body.object, 'text_completion');
    assert.equal(body.model, MODEL);
    assert.equal(typeof body.created, 'number');
    assert.deepEqual(body.choices, [{ index: 0, text: ' upon a time', logprobs: null, finish_reason: 'length' }]);
    assert.deepEqual(body.usage, { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5, prompt_tokens_details: { cached_tokens: 0 } });
    const req = backend.requests.at(-1)!;
    assert.equal(req.requestId, 'req-123');
    assert.deepEqual(req.promptIds, tok.encode('Once'));
    assert.deepEqual(req.sampling, { temperature: 1, topP: 1, topK: 0, maxTokens: 5, minTokens: 0, stopTokenIds: [], ignoreEos: false });
    assert.deepEqual(req.slo, { ttftMs: 500 });
  });

  test('sampling fields map to the SamplingRequest; default max_tokens is 16; slo overrides', async () => {
    script = { ids: tok.ids('ab'), finish: 'length' };
    const res = await post({
      model: MODEL,
      prompt: ['Hello'],
      temperature: 0,
      top_p: 0.9,
      top_k: -1,
      seed: 42,
      stop_token_ids: [5, 5, 6],
      ignore_eos: true,
      min_tokens: 2,
      user: 'u',
      presence_penalty: 0,
      slo: { ttft_ms: 100, tpot_ms: 20 },
    });
    assert.equal(res.statusCode, 200, res.body);
    const req = backend.requests.at(-1)!;
    assert.deepEqual(req.sampling, {
      temperature: 0,
      topP: 0.9,
      topK: 0,
      seed: 42,
      maxTokens: 16,
      minTokens: 2,
      stopTokenIds: [5, 6],
      ignoreEos: true,
    });
    assert.deepEqual(req.slo, { ttftMs: 100, tpotMs: 20 });
    assert.equal(res.headers['x-request-id'], req.requestId);
    assert.ok(req.requestId.length > 0);
  });

  test('token-id prompts: flat and nested', async () => {
    script = { ids: [], finish: 'length' };
    const ids = tok.encode('Hello world');
    for (const prompt of [ids, [ids]]) {
      const res = await post({ model: MODEL, prompt });
      assert.equal(res.statusCode, 200, res.body);
      assert.deepEqual(backend.requests.at(-1)!.promptIds, ids);
    }
  });

  test('stop string split across tokens ends with stop, text excludes it, backend told to stop', async () => {
    script = { ids: [...tok.ids('abS'), tok.id('T'), ...tok.ids('OPxyz')], delayMs: 1 };
    const aborts = backend.aborts.length;
    const res = await post({ model: MODEL, prompt: 'Once', max_tokens: 20, stop: ['STOP', 'zz'] });
    const body = res.json();
    assert.equal(body.choices[0].text, 'ab');
    assert.equal(body.choices[0].finish_reason, 'stop');
    assert.equal(body.usage.completion_tokens, 6); // a b S T O P
    assert.equal(backend.aborts.length, aborts + 1);
    assert.equal(backend.aborts.at(-1), 'stop_string');
  });

  test('stop token id / EOS: finish stop, not in text, counted in completion_tokens (vLLM)', async () => {
    script = { ids: [...tok.ids('ab'), tok.id('c'), ...tok.ids('de')] };
    let body = (await post({ model: MODEL, prompt: 'Once', stop_token_ids: [tok.id('c')] })).json();
    assert.equal(body.choices[0].text, 'ab');
    assert.equal(body.choices[0].finish_reason, 'stop');
    assert.equal(body.usage.completion_tokens, 3);

    script = { ids: [...tok.ids('ab'), EOS, ...tok.ids('de')] };
    body = (await post({ model: MODEL, prompt: 'Once' })).json();
    assert.equal(body.choices[0].text, 'ab');
    assert.equal(body.choices[0].finish_reason, 'stop');
    assert.equal(body.usage.completion_tokens, 3);
  });

  test('echo prepends the prompt text (also for token-id prompts)', async () => {
    script = { ids: tok.ids(' a time'), finish: 'stop' };
    let body = (await post({ model: MODEL, prompt: 'Once upon', echo: true })).json();
    assert.equal(body.choices[0].text, 'Once upon a time');
    body = (await post({ model: MODEL, prompt: tok.encode('Once upon'), echo: true })).json();
    assert.equal(body.choices[0].text, 'Once upon a time');
  });

  test('logprobs in the legacy format (chosen + N alternatives, offsets after echo)', async () => {
    script = { ids: tok.ids('ab'), finish: 'length' };
    const body = (await post({ model: MODEL, prompt: 'Once', logprobs: 2, echo: true })).json();
    assert.equal(backend.requests.at(-1)!.sampling.logprobs, 2);
    const lp = body.choices[0].logprobs;
    assert.deepEqual(lp.tokens, ['a', 'b']);
    assert.deepEqual(lp.token_logprobs, [-0.5, -0.5]);
    assert.deepEqual(lp.text_offset, [4, 5]);
    assert.equal(lp.top_logprobs.length, 2);
    assert.equal(Object.keys(lp.top_logprobs[0]).length, 3);
    assert.equal(lp.top_logprobs[0].a, -0.5);
  });

  test('streaming: chunks, finish chunk, usage chunk, [DONE]', async () => {
    script = { ids: tok.ids('Hello world'), finish: 'stop', delayMs: 1 };
    const res = await post({ model: MODEL, prompt: 'Once', stream: true, stream_options: { include_usage: true } }, { 'x-request-id': 'sse-1' });
    assert.equal(res.statusCode, 200);
    assert.match(String(res.headers['content-type']), /^text\/event-stream/);
    assert.equal(res.headers['x-request-id'], 'sse-1');
    const events = parseSse(res.body) as any[];
    assert.equal(events.at(-1), '[DONE]');
    const usage = events.at(-2);
    assert.deepEqual(usage.choices, []);
    assert.deepEqual(usage.usage, { prompt_tokens: 2, completion_tokens: 2, total_tokens: 4, prompt_tokens_details: { cached_tokens: 0 } });
    const chunks = events.slice(0, -2);
    for (const c of chunks) {
      assert.equal(c.object, 'text_completion');
      assert.match(c.id, /^cmpl-/);
      assert.equal(c.id, chunks[0].id);
      assert.equal(c.usage, null);
    }
    assert.equal(chunks.map((c) => c.choices[0].text).join(''), 'Hello world');
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
    assert.ok(chunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null));
  });

  test('streaming without include_usage; stop string across chunks; logprobs per chunk', async () => {
    script = { ids: tok.ids('abcSTOPd'), delayMs: 1 };
    // 'STOP' is one piece; split it differently: 'S','T','O','P' single chars.
    script.ids = [...tok.ids('abc'), tok.id('S'), tok.id('T'), tok.id('O'), tok.id('P'), tok.id('d')];
    const res = await post({ model: MODEL, prompt: 'Once', stream: true, stop: 'STOP', logprobs: 1 });
    const events = parseSse(res.body) as any[];
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.slice(0, -1);
    assert.ok(chunks.every((c) => !('usage' in c)));
    assert.equal(chunks.map((c) => c.choices[0].text).join(''), 'abc');
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
    const withLp = chunks.filter((c) => c.choices[0].logprobs !== null);
    assert.equal(withLp.length, 7); // a b c S T O P: one entry per token
    assert.deepEqual(
      withLp.map((c) => c.choices[0].logprobs.text_offset[0]),
      [0, 1, 2, 3, 4, 5, 6],
    );
  });

  test('observer sees start, first token, tokens and end with timings', async () => {
    rec.events.length = 0;
    script = { ids: tok.ids('abc'), finish: 'length', timings: { queue: 3, prefill: 4 } };
    await post({ model: MODEL, prompt: 'Once', max_tokens: 3 });
    await new Promise((r) => setTimeout(r, 10));
    const names = rec.events.map((e) => e[0]);
    assert.deepEqual(names, ['start', 'first', 'token', 'token', 'end']);
    const end = rec.events.at(-1)![1] as any;
    assert.equal(end.finishReason, 'length');
    assert.equal(end.completionTokens, 3);
    assert.equal(end.promptTokens, 2);
    assert.deepEqual(end.timings, { queue: 3, prefill: 4 });
    assert.ok(end.e2eMs >= end.ttftMs);
    assert.equal(typeof end.tpotMs, 'number');
  });
  test('the backend\'s generator is closed after its finish event (its streams and bookkeeping are released)', async () => {
    const before = { requests: backend.requests.length, finished: backend.finished };
    script = { ids: tok.ids(' upon a time'), finish: 'length' };
    assert.equal((await post({ model: MODEL, prompt: 'Once', max_tokens: 5 })).statusCode, 200);
    assert.equal((await post({ model: MODEL, prompt: 'Once', max_tokens: 5, stream: true })).statusCode, 200);
    assert.equal((await post({ model: MODEL, prompt: 'Once', max_tokens: 5, stop: [' a'] })).statusCode, 200);
    const started = backend.requests.length - before.requests;
    for (let i = 0; i < 50 && backend.finished - before.finished < started; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(backend.finished - before.finished, started);
  });
});
