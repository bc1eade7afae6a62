// Against a listening server: client disconnects mid-stream, and the official `openai` client.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import OpenAI from 'openai';
import { FakeBackend, FakeTokenizer, MODEL, makeApp, noCapacity, recordingObserver, until, type Script } from './fakes.ts';

const tok = new FakeTokenizer();
let script: Script = { ids: [] };
const backend = new FakeBackend(() => script);
const rec = recordingObserver();
let app: FastifyInstance;
let baseURL: string;
let port: number;
const KEY = 'sk-http';

before(async () => {
  app = makeApp(backend, { apiKey: KEY, metrics: rec.observer });
  await app.listen({ host: '127.0.0.1', port: 0 });
  port = (app.server.address() as AddressInfo).port;
  baseURL = `http://127.0.0.1:${port}/v1`;
});
after(() => app.close());

/** Sends a request and destroys it once `onData` says so (or on the response, before any data when `early`). */
function rawRequest(path: string, body: object, destroyWhen: (received: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = '';
    const req = request(
      { host: '127.0.0.1', port, path, method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` } },
      (res) => {
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          received += d;
          if (destroyWhen(received)) {
            req.destroy();
            resolve(received);
          }
        });
        res.on('end', () => resolve(received));
      },
    );
    req.on('error', (err) => (req.destroyed ? resolve(received) : reject(err)));
    req.end(JSON.stringify(body));
  });
}

describe('client disconnects', () => {
  test('mid-stream: the backend signal is aborted and the observer reports abort', async () => {
    rec.events.length = 0;
    script = { ids: tok.ids('abcdefghijklmnopqrstuvwxyz'), delayMs: 20 };
    const aborts = backend.aborts.length;
    const got = await rawRequest('/v1/completions', { model: MODEL, prompt: 'Once', max_tokens: 26, stream: true }, (r) => r.includes('"text":"b"'));
    assert.match(got, /"text":"a"/);
    await until(() => backend.aborts.length > aborts);
    assert.equal(backend.aborts.at(-1), 'client_disconnected');
    await until(() => rec.events.some((e) => e[0] === 'end'));
    const end = rec.events.find((e) => e[0] === 'end')![1] as any;
    assert.equal(end.finishReason, 'abort');
    assert.ok(end.completionTokens < 26);
  });

  test('before the first token of a non-streaming request: aborted too', async () => {
    script = { ids: tok.ids('abc'), delayMs: 300 };
    const aborts = backend.aborts.length;
    const started = backend.requests.length;
    const req = request({
      host: '127.0.0.1',
      port,
      path: '/v1/chat/completions',
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
    });
    req.on('error', () => {});
    req.end(JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'Once' }] }));
    await until(() => backend.requests.length > started);
    req.destroy();
    await until(() => backend.aborts.length > aborts);
    assert.equal(backend.aborts.at(-1), 'client_disconnected');
  });

  test('the server keeps serving after disconnects', async () => {
    script = { ids: tok.ids('fine'), finish: 'stop' };
    const res = await fetch(`${baseURL}/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ model: MODEL, prompt: 'Once' }),
    });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as any).choices[0].text, 'fine');
  });
});

describe('openai client', () => {
  const client = () => new OpenAI({ apiKey: KEY, baseURL, maxRetries: 0 });

  test('completions.create, plain and streamed', async () => {
    script = { ids: tok.ids(' upon a time'), finish: 'stop', delayMs: 1 };
    const c = await client().completions.create({ model: MODEL, prompt: 'Once', max_tokens: 10 });
    assert.equal(c.choices[0]!.text, ' upon a time');
    assert.equal(c.choices[0]!.finish_reason, 'stop');
    assert.equal(c.usage!.completion_tokens, 3);

    const stream = await client().completions.create({
      model: MODEL,
      prompt: 'Once',
      max_tokens: 10,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage;
    let finish;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const ch of chunk.choices) {
        text += ch.text;
        finish = ch.finish_reason ?? finish;
      }
    }
    assert.equal(text, ' upon a time');
    assert.equal(finish, 'stop');
    assert.equal(usage!.total_tokens, 5);
  });

  test('chat.completions.create, plain and streamed', async () => {
    script = { ids: tok.ids('Hello world'), finish: 'length', delayMs: 1 };
    const c = await client().chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Once' }], max_tokens: 2 });
    assert.equal(c.choices[0]!.message.content, 'Hello world');
    assert.equal(c.choices[0]!.message.role, 'assistant');
    assert.equal(c.choices[0]!.finish_reason, 'length');

    const stream = await client().chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Once' }],
      max_tokens: 2,
      stream: true,
    });
    let text = '';
    let role;
    for await (const chunk of stream) {
      const d = chunk.choices[0]?.delta;
      role ??= d?.role;
      text += d?.content ?? '';
    }
    assert.equal(role, 'assistant');
    assert.equal(text, 'Hello world');
  });

  test('errors surface as typed APIError with status and code', async () => {
    script = { ids: [], errorBefore: noCapacity() };
    await assert.rejects(
      client().chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }] }),
      (err: any) => err instanceof OpenAI.APIError && err.status === 503 && err.code === 'no_capacity',
    );
    await assert.rejects(
      client().completions.create({ model: 'nope', prompt: 'x' }),
      (err: any) => err instanceof OpenAI.NotFoundError && err.code === 'model_not_found',
    );
    await assert.rejects(
      new OpenAI({ apiKey: 'wrong', baseURL, maxRetries: 0 }).models.list(),
      (err: any) => err instanceof OpenAI.AuthenticationError,
    );
    const models = await client().models.list();
    assert.equal(models.data[0]!.id, MODEL);
  });
});
