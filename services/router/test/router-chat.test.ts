import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { FakeBackend, FakeTokenizer, MODEL, makeApp, parseSse, type Script } from './fakes.ts';

const tok = new FakeTokenizer();
let script: Script = { ids: [] };
const backend = new FakeBackend(() => script);
let app: FastifyInstance;

before(async () => {
  app = makeApp(backend);
  await app.ready();
});
after(() => app.close());

const post = (payload: unknown) => app.inject({ method: 'POST', url: '/v1/chat/completions', payload: payload as object });

describe('POST /v1/chat/completions', () => {
  test('non-streaming shape; prompt rendered by the default template; default max_tokens fills the context', async () => {
    script = { ids: tok.ids('Hello world'), finish: 'stop' };
    const res = await post({
      model: MODEL,
      messages: [
        { role: 'system', content: 'Once' },
        { role: 'user', content: [{ type: 'text', text: 'upon' }] },
      ],
    });
    assert.equal(res.statusCode, 200, res.body);
    const body = res.json();
    assert.match(body.id, /^chatcmpl-/);
    assert.equal(body.object, 'chat.completion');
    assert.equal(body.model, MODEL);
    assert.deepEqual(body.choices, [
      { index: 0, message: { role: 'assistant', content: 'Hello world', refusal: null }, logprobs: null, finish_reason: 'stop' },
    ]);
    const req = backend.requests.at(-1)!;
    assert.deepEqual(req.promptIds, tok.encode('Once upon'));
    assert.equal(req.sampling.maxTokens, 64 - req.promptIds.length);
    assert.deepEqual(body.usage, { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5, prompt_tokens_details: { cached_tokens: 0 } });
  });

  test('max_completion_tokens wins over max_tokens', async () => {
    script = { ids: tok.ids('abcdef') };
    const body = (await post({ model: MODEL, messages: [{ role: 'user', content: 'Once' }], max_tokens: 5, max_completion_tokens: 2 })).json();
    assert.equal(backend.requests.at(-1)!.sampling.maxTokens, 2);
    assert.equal(body.choices[0].message.content, 'ab');
    assert.equal(body.choices[0].finish_reason, 'length');
  });

  test('streaming: role chunk first, delta chunks, finish chunk, usage chunk, [DONE]', async () => {
    script = { ids: tok.ids('Hello world!'), finish: 'length', delayMs: 1 };
    const res = await post({
      model: MODEL,
      messages: [{ role: 'user', content: 'Once' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    assert.match(String(res.headers['content-type']), /^text\/event-stream/);
    const events = parseSse(res.body) as any[];
    assert.equal(events.at(-1), '[DONE]');
    const usage = events.at(-2);
    assert.deepEqual(usage.choices, []);
    assert.deepEqual(usage.usage, { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5, prompt_tokens_details: { cached_tokens: 0 } });
    const chunks = events.slice(0, -2);
    for (const c of chunks) {
      assert.equal(c.object, 'chat.completion.chunk');
      assert.match(c.id, /^chatcmpl-/);
      assert.equal(c.usage, null);
    }
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '' });
    assert.equal(chunks.map((c) => c.choices[0].delta.content ?? '').join(''), 'Hello world!');
    assert.deepEqual(chunks.at(-1).choices[0], { index: 0, delta: {}, logprobs: null, finish_reason: 'length' });
  });

  test('stop strings apply to chat; logprobs + top_logprobs in the chat format', async () => {
    script = { ids: tok.ids('ab, cd') };
    const body = (
      await post({ model: MODEL, messages: [{ role: 'user', content: 'Once' }], stop: [','], logprobs: true, top_logprobs: 2 })
    ).json();
    assert.equal(backend.requests.at(-1)!.sampling.logprobs, 2);
    const choice = body.choices[0];
    assert.equal(choice.message.content, 'ab');
    assert.equal(choice.finish_reason, 'stop');
    assert.equal(choice.logprobs.content.length, 3); // a b ,
    const first = choice.logprobs.content[0];
    assert.equal(first.token, 'a');
    assert.equal(first.logprob, -0.5);
    assert.deepEqual(first.bytes, [97]);
    assert.equal(first.top_logprobs.length, 2);
    assert.deepEqual(Object.keys(first.top_logprobs[0]).sort(), ['bytes', 'logprob', 'token']);
  });

  test('logprobs without top_logprobs asks the backend for 0 alternatives; top_logprobs alone is a 400', async () => {
    script = { ids: tok.ids('a') };
    const body = (await post({ model: MODEL, messages: [{ role: 'user', content: 'Once' }], logprobs: true })).json();
    assert.equal(backend.requests.at(-1)!.sampling.logprobs, 0);
    assert.deepEqual(body.choices[0].logprobs.content[0].top_logprobs, []);
    const res = await post({ model: MODEL, messages: [{ role: 'user', content: 'Once' }], top_logprobs: 2 });
    assert.equal(res.statusCode, 400);
    assert.equal(res.json().error.param, 'top_logprobs');
  });

  test('streaming with logprobs attaches one entry per token', async () => {
    script = { ids: tok.ids('abc') };
    const res = await post({ model: MODEL, messages: [{ role: 'user', content: 'Once' }], stream: true, logprobs: true });
    const chunks = (parseSse(res.body) as any[]).slice(0, -1);
    const entries = chunks.flatMap((c) => c.choices[0].logprobs?.content ?? []);
    assert.deepEqual(
      entries.map((e: any) => e.token),
      ['a', 'b', 'c'],
    );
  });

  test('bad messages: empty, bad role, non-text part, template-unencodable text', async () => {
    const cases: Array<[unknown, string]> = [
      [[], 'messages'],
      [[{ role: 'wizard', content: 'x' }], 'messages[0].role'],
      [[{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }], 'messages[0].content[0].type'],
      [[{ role: 'user', content: 'x€' }], 'prompt'],
    ];
    for (const [messages, param] of cases) {
      const res = await post({ model: MODEL, messages });
      assert.equal(res.statusCode, 400, JSON.stringify(messages));
      const err = res.json().error;
      assert.equal(err.type, 'invalid_request_error');
      assert.equal(err.param, param);
      assert.ok(err.message.length > 0);
    }
  });

  test('n > 1 and tools are refused', async () => {
    let res = await post({ model: MODEL, messages: [{ role: 'user', content: 'x' }], n: 2 });
    assert.equal(res.statusCode, 400);
    assert.equal(res.json().error.param, 'n');
    res = await post({ model: MODEL, messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function' }] });
    assert.equal(res.statusCode, 400);
    assert.equal(res.json().error.param, 'tools');
  });

  test('prompt filling the whole context: 400 context_length_exceeded (no room for one token)', async () => {
    const long = 'a'.repeat(63); // + BOS = 64 tokens = maxModelLen
    const res = await post({ model: MODEL, messages: [{ role: 'user', content: long }] });
    assert.equal(res.statusCode, 400);
    assert.equal(res.json().error.code, 'context_length_exceeded');
  });
});
