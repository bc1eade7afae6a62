// Prefix caching end to end (`pdserve up`: real processes, gRPC, ONNX Runtime): a prompt that starts
// like an earlier one is served partly from the worker's prefix cache, gives the same text as a
// cold engine, and says so in usage.prompt_tokens_details.cached_tokens and the workers' metrics;
// disaggregated (the prefill worker hits and still pushes every block) and unified.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Engine, generate } from '../packages/engine/src/index.ts';
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
      assert.ok((await metricValue(prefiller.metrics_url, 'pdserve_prefix_cache_usage_perc')) > 0, 'idle slots hold cached prefixes');
      assert.equal(await metricValue(prefiller.metrics_url, 'pdserve_kv_cache_usage_perc'), 0, 'cached prefixes are free capacity, not usage');
    });
  });
}
