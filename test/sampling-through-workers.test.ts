// The request options that end or annotate a generation, through real workers (issue 14 item 3):
// stop strings that span a token boundary, stop_token_ids, min_tokens against EOS, logprobs and
// top logprobs equal to one in-process engine's, and echo. stories260K from ../shared (real text,
// so EOS and multi-character pieces occur), disaggregated and unified.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Engine, generate } from '../packages/engine/src/index.ts';
import { postJson, readSse, startCluster, stories260K, type TestCluster } from './support/cluster.ts';
import { sharedPath } from './support/shared.ts';

const modes: Array<{ name: string; args: string[] }> = [
  { name: 'disaggregated 1 prefill + 1 decode', args: ['--prefill', '1', '--decode', '1'] },
  { name: 'unified 1', args: ['--unified', '1'] },
];

const PROMPT = 'Once upon a time';
const MAX = 60;

function haveShared(): boolean {
  try { return readFileSync(sharedPath('models', 'stories260K', 'stories260K.bin')).length > 0; } catch { return false; }
}

for (const mode of modes) {
  describe(`request options through workers: ${mode.name}`, () => {
    let cluster: TestCluster | undefined;
    let model: { dir: string; cleanup(): void } | undefined;
    let engine: Engine;
    let promptIds: number[];
    /** Greedy ids with EOS ignored, long enough to contain EOS (stories end). */
    let longIds: number[];
    let eos: number[];

    before(async () => {
      if (process.env.CI !== 'true' && !haveShared()) return;
      model = stories260K();
      engine = await Engine.load(model.dir, { threads: 1, maxSequences: 1 });
      promptIds = engine.tokenizer.encode(PROMPT);
      eos = engine.config.generation.eos_token_ids;
      longIds = (await generate(engine, promptIds, { temperature: 0, topK: 0, topP: 1, maxTokens: 512, stopTokenIds: [] })).ids;
      cluster = await startCluster(model.dir, [...mode.args, '--max-sequences', '4', '--planner', 'off']);
    });
    after(async () => { await cluster?.stop(); model?.cleanup(); });

    const complete = (body: object) => postJson(`${cluster!.url}/v1/completions`, { model: cluster!.modelName, prompt: PROMPT, temperature: 0, ...body });
    const stream = async (body: object) => {
      const res = await fetch(`${cluster!.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: cluster!.modelName, prompt: PROMPT, temperature: 0, stream: true, ...body }),
      });
      const { events, done } = await readSse(res);
      assert.ok(done, 'stream ends with [DONE]');
      const choices = events.filter((e) => e.choices?.length).map((e) => e.choices[0]);
      return { text: choices.map((c) => c.text).join(''), finish: choices.at(-1)?.finish_reason };
    };

    test('a stop string spanning two tokens ends the text before it, streamed and not', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const full = await complete({ max_tokens: MAX, logprobs: 0, ignore_eos: true });
      assert.equal(full.status, 200, JSON.stringify(full.json));
      const pieces: string[] = full.json.choices[0].logprobs.tokens;
      const text: string = full.json.choices[0].text;
      assert.equal(pieces.join(''), text);
      // The first boundary between two pieces of >= 2 characters past the first few tokens.
      const k = pieces.findIndex((p, i) => i >= 3 && p.length >= 2 && (pieces[i + 1]?.length ?? 0) >= 2);
      assert.ok(k > 0, `a boundary to split: ${JSON.stringify(pieces)}`);
      const stop = pieces[k].slice(-2) + pieces[k + 1].slice(0, 2);
      const expected = text.slice(0, text.indexOf(stop));
      const r = await complete({ max_tokens: MAX, ignore_eos: true, stop: [stop] });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.choices[0].text, expected, `stop ${JSON.stringify(stop)}`);
      assert.equal(r.json.choices[0].finish_reason, 'stop');
      const s = await stream({ max_tokens: MAX, ignore_eos: true, stop: [stop] });
      assert.equal(s.text, expected, 'streamed: the held-back partial match is never sent');
      assert.equal(s.finish, 'stop');
    });

    test('stop_token_ids end generation at that id (not included), like one engine', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const id = longIds[5];
      const want = await generate(engine, promptIds, { temperature: 0, topK: 0, topP: 1, maxTokens: MAX, stopTokenIds: [id, ...eos] });
      assert.equal(want.finishReason, 'stop');
      const r = await complete({ max_tokens: MAX, stop_token_ids: [id] });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.choices[0].text, engine.tokenizer.decode(want.ids, promptIds));
      assert.equal(r.json.choices[0].finish_reason, 'stop');
      // The stop token was generated, so usage counts it (as vLLM does), though the text leaves it out.
      assert.equal(r.json.usage.completion_tokens, want.ids.length + 1);
    });

    test('min_tokens carries generation past an EOS; the first EOS after it stops it', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const firstEos = longIds.findIndex((x) => eos.includes(x));
      const max = 512 - promptIds.length;
      assert.ok(firstEos >= 0 && firstEos < max - 1, `greedy output reaches EOS within the context (at ${firstEos})`);
      const plain = await complete({ max_tokens: max });
      assert.equal(plain.json.usage.completion_tokens, firstEos + 1, 'without min_tokens the first EOS stops it (usage counts the EOS)');
      assert.equal(plain.json.choices[0].finish_reason, 'stop');
      const minTokens = firstEos + 1;
      // The scheduler's rule: an EOS at output position n (1-based) stops only when n > min_tokens.
      const stopAt = longIds.findIndex((x, i) => i >= minTokens && eos.includes(x));
      const want = stopAt >= 0 && stopAt < max ? { n: stopAt + 1, reason: 'stop' } : { n: max, reason: 'length' };
      const r = await complete({ max_tokens: max, min_tokens: minTokens });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.usage.completion_tokens, want.n);
      assert.equal(r.json.choices[0].finish_reason, want.reason);
      assert.ok(r.json.choices[0].text.startsWith(plain.json.choices[0].text), 'the text before the first EOS is unchanged');
    });

    test('logprobs and top logprobs equal one engine\'s, sampled with a seed', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const params = { temperature: 0.8, topK: 40, topP: 0.95, seed: 7 };
      const want = await generate(engine, promptIds, { ...params, logprobs: 5, maxTokens: 20 });
      const r = await complete({ max_tokens: 20, temperature: 0.8, top_k: 40, top_p: 0.95, seed: 7, logprobs: 5 });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      const lp = r.json.choices[0].logprobs;
      assert.equal(lp.tokens.length, want.tokens.length);
      const text = (id: number) => engine.tokenizer.decode([id], promptIds);
      want.tokens.forEach((tok, i) => {
        assert.ok(Math.abs(lp.token_logprobs[i] - tok.logprob!) < 1e-5, `token ${i}: ${lp.token_logprobs[i]} vs ${tok.logprob}`);
        const top = lp.top_logprobs[i] as Record<string, number>;
        for (const alt of tok.topLogprobs!) {
          const got = top[text(alt.id)];
          // Two ids can decode to one string; the router keeps the first (the more likely).
          if (got === undefined) assert.fail(`token ${i}: alternative ${JSON.stringify(text(alt.id))} missing from ${JSON.stringify(top)}`);
          assert.ok(got >= alt.logprob - 1e-5, `token ${i} alternative ${alt.id}`);
        }
        const best = tok.topLogprobs![0];
        assert.ok(Math.abs(top[text(best.id)] - best.logprob) < 1e-5, `token ${i}: best alternative`);
      });
      assert.equal(r.json.choices[0].text, engine.tokenizer.decode(want.ids, promptIds));
    });

    test('echo puts the prompt before the completion, streamed and not', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const want = await generate(engine, promptIds, { temperature: 0, topK: 0, topP: 1, maxTokens: 12, stopTokenIds: eos });
      const completion = engine.tokenizer.decode(want.ids, promptIds);
      const r = await complete({ max_tokens: 12, echo: true });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.choices[0].text, PROMPT + completion);
      const s = await stream({ max_tokens: 12, echo: true });
      assert.equal(s.text, PROMPT + completion);
    });
  });
}
