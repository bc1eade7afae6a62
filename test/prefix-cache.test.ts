// Prefix caching end to end (`pdserve up`: real processes, gRPC, ONNX Runtime): a prompt that starts
// like an earlier one is served partly from the worker's prefix cache, gives the same text as a
// cold engine, and says so in usage.prompt_tokens_details.cached_tokens and the workers' metrics;
// disaggregated (the prefill worker hits and still pushes every block) and unified.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { blockHashChain, Engine, generate } from '../packages/engine/src/index.ts';
import { closeRedisClient, createRedisClient, startRedisServer, waitForReady, type RedisServerHandle } from '../packages/common/src/index.ts';
import { postJson, startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { existsSync } from 'node:fs';
import { sharedPath } from './support/shared.ts';

const system = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, ';
const turns = ['she saw a big red ball', 'her mom gave her a cake', 'Lily went to the'];

async function metricValue(url: string, name: string): Promise<number> {
  const text = await (await fetch(url)).text();
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

const modes = [
  { name: 'disaggregated 1 prefill + 1 decode', args: ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote'] },
  { name: 'unified 1', args: ['--unified', '1'] },
];

for (const mode of modes) {
  describe(`prefix cache: ${mode.name}`, () => {
    let cluster: TestCluster | undefined;
    let model: { dir: string; cleanup(): void } | undefined;
    const expected = new Map<string, string>();
    let seededText = '';
    // A two-turn conversation as token ids: turn 2 = turn 1's prompt + its greedy answer + a new user turn.
    const convo = { turn1: [] as number[], answer: [] as number[], turn2: [] as number[], text2: '' };

    before(async () => {
      if (!existsSync(sharedPath('models', 'stories260K'))) {
        if (process.env.CI === 'true') throw new Error('../shared/models/stories260K is missing');
        return;
      }
      model = stories260K();
      const engine = await Engine.load(model.dir, { threads: 1, maxSequences: 1, prefixCache: false });
      for (const u of turns) {
        const ids = engine.tokenizer.encode(system + u);
        expected.set(u, engine.tokenizer.decode((await generate(engine, ids, { temperature: 0, topK: 0, topP: 1, maxTokens: 30 })).ids, ids));
      }
      const ids = engine.tokenizer.encode(system + turns[0]);
      seededText = engine.tokenizer.decode((await generate(engine, ids, { temperature: 0.9, topK: 40, topP: 0.95, seed: 7, maxTokens: 30 })).ids, ids);
      convo.turn1 = engine.tokenizer.encode('Tim and Sue went to the big lake. ');
      convo.answer = (await generate(engine, convo.turn1, { temperature: 0, topK: 0, topP: 1, maxTokens: 40 })).ids;
      convo.turn2 = [...convo.turn1, ...convo.answer, ...engine.tokenizer.encode(' Then they saw a frog.', { addBos: false })];
      convo.text2 = engine.tokenizer.decode((await generate(engine, convo.turn2, { temperature: 0, topK: 0, topP: 1, maxTokens: 20 })).ids, convo.turn2);
      cluster = await startCluster(model.dir, [...mode.args, '--planner', 'off', '--max-sequences', '4']);
    });

    after(async () => {
      await cluster?.stop();
      model?.cleanup();
    });

    test('a shared prefix is served from the cache with the same text, reported in usage and metrics', async (t) => {
      if (!cluster) return t.skip('needs ../shared');
      const ask = (u: string, extra: Record<string, unknown> = {}) =>
        postJson(`${cluster!.url}/v1/completions`, { model: cluster!.modelName, prompt: system + u, max_tokens: 30, temperature: 0, ...extra });
      const cold = await ask(turns[0]);
      assert.equal(cold.status, 200, JSON.stringify(cold.json));
      assert.equal(cold.json.choices[0].text, expected.get(turns[0]));
      assert.equal(cold.json.usage.prompt_tokens_details.cached_tokens, 0, 'nothing cached yet');
      const promptTokens = cold.json.usage.prompt_tokens as number;
      for (const u of [turns[0], ...turns.slice(1)]) {
        const warm = await ask(u);
        assert.equal(warm.status, 200, JSON.stringify(warm.json));
        assert.equal(warm.json.choices[0].text, expected.get(u), `warm "${u}"`);
        const cached = warm.json.usage.prompt_tokens_details.cached_tokens as number;
        assert.ok(cached >= 16 && cached % 16 === 0 && cached < warm.json.usage.prompt_tokens, `"${u}": ${cached} of ${warm.json.usage.prompt_tokens} prompt tokens cached`);
      }
      const seeded = await ask(turns[0], { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 7 });
      assert.equal(seeded.json.choices[0].text, seededText, 'seeded sampling over a cached prefix');
      // Chat streaming reports it in the usage chunk too.
      const res = await fetch(`${cluster.url}/v1/chat/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: cluster.modelName, messages: [{ role: 'user', content: system }], max_tokens: 4, stream: true, stream_options: { include_usage: true } }),
      });
      const usage = (await res.text()).split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6))).find((e) => e.usage)?.usage;
      assert.equal(typeof usage?.prompt_tokens_details?.cached_tokens, 'number');

      // The prefilling worker counts queries and hits in tokens (vLLM's metric names).
      const workers = ((await (await fetch(`${cluster.url}/workers`)).json()) as { workers: Array<{ role: string; metrics_url: string }> }).workers;
      const prefiller = workers.find((w) => w.role !== 'decode')!;
      const counters = await waitFor(async () => {
        const q = await metricValue(prefiller.metrics_url, 'pdserve_prefix_cache_queries_total');
        const h = await metricValue(prefiller.metrics_url, 'pdserve_prefix_cache_hits_total');
        return q >= promptTokens * 5 && h > 0 ? { q, h } : undefined;
      }, 10_000, 'prefix cache counters');
      assert.ok(counters.h < counters.q);
      // The gauges follow the engine's load reports, which trail the last request's end.
      await waitFor(async () => ((await metricValue(prefiller.metrics_url, 'pdserve_prefix_cache_usage_perc')) > 0 ? true : undefined), 10_000, 'idle slots hold cached prefixes');
      assert.equal(await metricValue(prefiller.metrics_url, 'pdserve_kv_cache_usage_perc'), 0, 'cached prefixes are free capacity, not usage');
    });

    test('multi-turn: the next turn reuses the conversation so far (on a unified worker, the previous answer too)', async (t) => {
      if (!cluster) return t.skip('needs ../shared');
      const ask = (prompt: number[], maxTokens: number) => postJson(`${cluster!.url}/v1/completions`, { model: cluster!.modelName, prompt, max_tokens: maxTokens, temperature: 0 });
      const first = await ask(convo.turn1, convo.answer.length);
      assert.equal(first.status, 200, JSON.stringify(first.json));
      const second = await ask(convo.turn2, 20);
      assert.equal(second.status, 200, JSON.stringify(second.json));
      assert.equal(second.json.choices[0].text, convo.text2, 'same text as a cold engine');
      const cached = second.json.usage.prompt_tokens_details.cached_tokens as number;
      const block = 16;
      const promptBlocks = Math.floor(convo.turn1.length / block) * block;
      // The answer's last token was never fed through the model, so its KV does not exist.
      const heldBlocks = Math.floor((convo.turn1.length + convo.answer.length - 1) / block) * block;
      assert.ok(heldBlocks > promptBlocks, 'the answer spans a block boundary (test setup)');
      if (mode.name.startsWith('unified')) {
        // The worker that decoded turn 1 keeps its answer's blocks, so turn 2 skips them too.
        assert.equal(cached, heldBlocks, `${cached} of ${convo.turn2.length} cached; turn 1 + answer held ${heldBlocks}`);
      } else {
        // The prefill worker holds turn 1's prompt (the answer was decoded elsewhere).
        assert.ok(cached >= promptBlocks, `${cached} cached; turn 1's prompt has ${promptBlocks} in full blocks`);
        // The decode worker got the prompt's ids with the request and kept the transferred KV (and
        // the answers it decoded) as reusable prefixes, where auto placement can prefill locally.
        const workers = ((await (await fetch(`${cluster.url}/workers`)).json()) as { workers: Array<{ role: string; metrics_url: string }> }).workers;
        const decoder = workers.find((w) => w.role === 'decode')!;
        await waitFor(async () => ((await metricValue(decoder.metrics_url, 'pdserve_prefix_cache_usage_perc')) > 0 ? true : undefined), 10_000, 'the decode worker\'s idle slots hold cached prefixes');
      }
    });
  });
}

describe('prefix-aware routing: 2 unified workers of one KV slot each', () => {
  let cluster: TestCluster | undefined;
  let model: { dir: string; cleanup(): void } | undefined;
  let redis: RedisServerHandle | undefined;
  let engine: Engine | undefined;
  const prefixes = [
    'Tom had a big red truck. He liked to play with it in the sand every day after school with his dog. ',
    'Anna found a shiny blue stone near the river. She put it in her pocket and ran home to show her mom. ',
  ];

  before(async () => {
    if (!existsSync(sharedPath('models', 'stories260K'))) {
      if (process.env.CI === 'true') throw new Error('../shared/models/stories260K is missing');
      return;
    }
    model = stories260K();
    engine = await Engine.load(model.dir, { threads: 1, maxSequences: 1, prefixCache: false });
    redis = await startRedisServer();
    // One slot per worker: each holds one cached prefix, so routing both prefixes by load alone
    // onto one worker would evict one with the other on every request.
    cluster = await startCluster(model.dir, ['--unified', '2', '--max-sequences', '1', '--planner', 'off', '--redis-url', redis.url]);
  });

  after(async () => {
    await cluster?.stop();
    await redis?.stop();
    model?.cleanup();
  });

  test('requests follow their prefix to the worker that holds it; a forged hint cannot hand out another prompt\'s KV', async (t) => {
    if (!cluster || !engine || !redis) return t.skip('needs ../shared');
    const ask = (text: string) => postJson(`${cluster!.url}/v1/completions`, { model: cluster!.modelName, prompt: text, max_tokens: 12, temperature: 0 });
    const expected = async (text: string) => {
      const ids = engine!.tokenizer.encode(text);
      return engine!.tokenizer.decode((await generate(engine!, ids, { temperature: 0, topK: 0, topP: 1, maxTokens: 12 })).ids, ids);
    };
    const cached: number[][] = [[], []];
    for (let round = 0; round < 3; round++) {
      for (const [i, p] of prefixes.entries()) {
        const text = `${p}Turn ${round}.`;
        const r = await ask(text);
        assert.equal(r.status, 200, JSON.stringify(r.json));
        assert.equal(r.json.choices[0].text, await expected(text));
        cached[i].push(r.json.usage.prompt_tokens_details.cached_tokens);
      }
    }
    // The first request of each prefix is cold; every later one hit the worker holding its prefix.
    for (const c of cached) {
      assert.equal(c[0], 0);
      for (const later of c.slice(1)) assert.ok(later >= 16, `cached tokens per round: ${JSON.stringify(cached)}`);
    }
    const metrics = await (await fetch(`${cluster.url}/metrics`)).text();
    assert.match(metrics, /^pdserve_prefix_routing_total\{result="hit"\} [1-9]/m);

    // Forge the index: tell the routers that each worker holds a third prompt's blocks. Whichever
    // worker the request lands on has nothing of it: it must compute the prompt (cached 0) and
    // answer exactly as a cold engine does.
    const third = 'Ben and Mia built a tall tower of blocks in the kitchen, and then the cat came in and ';
    const workers = ((await (await fetch(`${cluster.url}/workers`)).json()) as { workers: Array<{ id: string }> }).workers;
    const pub = createRedisClient({ url: redis.url });
    try {
      await waitForReady(pub, 2000);
      for (const w of workers) {
        const meta = await pub.hgetall(`pdserve:prefix_meta:${w.id}`);
        const forged = blockHashChain(meta.root, engine.tokenizer.encode(third), Number(meta.block_tokens));
        await pub.publish('pdserve:prefix_events', JSON.stringify({ worker: w.id, root: meta.root, block_tokens: Number(meta.block_tokens), seq: 1, resync: true, stored: forged, removed: [] }));
      }
      const r = await ask(third);
      assert.equal(r.status, 200);
      assert.equal(r.json.usage.prompt_tokens_details.cached_tokens, 0, 'the worker verified token ids: nothing reused');
      assert.equal(r.json.choices[0].text, await expected(third));
    } finally {
      await closeRedisClient(pub);
    }
  });
});
