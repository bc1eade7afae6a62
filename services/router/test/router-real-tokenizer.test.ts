// The HTTP layer with the real stories260K tokenizer (from ../shared) and a backend that replays the
// reference implementation's greedy ids: the text must come out exactly as run.c printed it.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { loadTokenizer } from '../../../packages/engine/src/tokenizer/load.ts';
import { requireShared } from '../../../test/support/shared.ts';
import { buildRouterApp } from '../src/app.ts';
import { FakeBackend, parseSse } from './fakes.ts';

interface Golden {
  prompt: string;
  prompt_ids: number[];
  generated_ids: number[];
  completion_text: string;
}

test('stories260K: golden ids decode to the golden text, streamed or not, with stop strings', async (t) => {
  const tokPath = requireShared(t, 'models', 'stories260K', 'tok512.bin');
  const goldenPath = requireShared(t, 'golden', 'stories260K.once-upon-a-time.json');
  if (!tokPath || !goldenPath) return;
  const golden = JSON.parse(readFileSync(goldenPath, 'utf8')) as Golden;
  const tokenizer = loadTokenizer(tokPath, { vocabSize: 512 });
  const backend = new FakeBackend(() => ({ ids: golden.generated_ids, finish: 'length' }));
  const app = buildRouterApp({ backend, tokenizer, modelName: 'stories260K', maxModelLen: 512, vocabSize: 512 });
  t.after(() => app.close());
  const n = golden.generated_ids.length;
  const post = (url: string, payload: object) => app.inject({ method: 'POST', url, payload });

  let res = await post('/v1/completions', { model: 'stories260K', prompt: golden.prompt, max_tokens: n, temperature: 0 });
  assert.deepEqual(backend.requests.at(-1)!.promptIds, golden.prompt_ids);
  assert.equal(res.json().choices[0].text, golden.completion_text);

  res = await post('/v1/completions', { model: 'stories260K', prompt: golden.prompt, max_tokens: n, stream: true });
  const chunks = (parseSse(res.body) as any[]).slice(0, -1);
  assert.equal(chunks.map((c) => c.choices[0].text).join(''), golden.completion_text);

  res = await post('/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: golden.prompt }], stop: ['. One day'] });
  assert.deepEqual(backend.requests.at(-1)!.promptIds, golden.prompt_ids);
  const content = res.json().choices[0].message.content as string;
  assert.equal(content, golden.completion_text.slice(0, golden.completion_text.indexOf('. One day')));
  assert.equal(res.json().choices[0].finish_reason, 'stop');

  res = await post('/v1/completions', { model: 'stories260K', prompt: golden.prompt_ids, max_tokens: 3, echo: true, logprobs: 1 });
  const body = res.json();
  const lp = body.choices[0].logprobs;
  assert.equal(body.choices[0].text, golden.prompt + lp.tokens.join(''));
  assert.equal(lp.text_offset[0], golden.prompt.length);
});
