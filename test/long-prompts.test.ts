// End to end with prompts of 600-1500 tokens and a 128-token prefill chunk, so every request is
// prefilled in several passes and (disaggregated) its KV cache is streamed to the decode worker as
// the chunks complete. The model is the tiny dummy shape (random weights, so it needs nothing from
// ../shared) with a 2048-token context; the cluster's output must equal one in-process engine's
// token for token, greedy and seeded, which holds for random weights as for trained ones.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine, generate } from '../packages/engine/src/index.ts';
import { byteTokenizer, DUMMY_PRESETS, dummyWeights } from '../packages/engine/src/model/dummy.ts';
import { writeLlamaModelDir } from '../packages/engine/src/model/model-dir.ts';
import { postJson, readSse, startCluster, waitFor, type TestCluster } from './support/cluster.ts';

const CONTEXT = 2048;
const CHUNK = 128;
const OUTPUT = 24;

/** The tiny dummy preset with a longer context than the preset's 512 (RoPE tables are built to it). */
function longContextDummy(): { dir: string; cleanup(): void } {
  const root = mkdtempSync(join(tmpdir(), 'pdserve-long-'));
  const dir = join(root, 'dummy-tiny-long');
  const p = DUMMY_PRESETS.tiny;
  writeLlamaModelDir(dir, {
    name: 'dummy-tiny-long', dim: p.dim, hidden_dim: p.hidden_dim, n_layers: p.n_layers, n_heads: p.n_heads,
    n_kv_heads: p.n_kv_heads, vocab_size: p.vocab_size, max_seq_len: CONTEXT, rope_theta: p.rope_theta,
    tied_embeddings: p.tied_embeddings, generation: { bos_token_id: 1, eos_token_ids: [2], add_bos: true },
    source: { kind: 'dummy', preset: 'tiny', seed: 7, note: 'random weights: output text is meaningless' },
  }, dummyWeights(p, 7), { kind: 'llama2c', bin: byteTokenizer(p.vocab_size) }, { dtype: 'fp32' });
  return { dir, cleanup: () => rmSync(root, { recursive: true, force: true }) };
}

/** Deterministic prompts of byte-piece ids (3..258), BOS first. */
function prompt(length: number, seed: number): number[] {
  let s = seed;
  const ids = [1];
  while (ids.length < length) {
    s = (s * 1103515245 + 12345) >>> 0;
    ids.push(3 + (s >>> 8) % 256);
  }
  return ids;
}

const prompts = [prompt(600, 1), prompt(777, 2), prompt(1029, 3), prompt(1500, 4)];
const seeded = { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 42 };

const scrape = async (url: string) => await (await fetch(url)).text();
/** Sum of every series of a metric whose label text contains `labels`. */
const total = (text: string, name: string, labels = '') => text.split('\n')
  .filter((l) => (l.startsWith(name + ' ') || l.startsWith(name + '{')) && l.includes(labels))
  .reduce((s, l) => s + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);

// Disaggregated with 2 + 2 workers checks everything a 1 + 1 cluster would (one KV transfer per
// request summed over the prefill workers, decode workers prefilling nothing, the chunk count; one
// prefill worker may take every request) and the spread besides, so 1 + 1 has no run of its own
// here (test/kv-transfer and test/cluster cover 1 + 1 with chunked prompts).
const modes: Array<{ name: string; args: string[] }> = [
  { name: 'unified 1', args: ['--unified', '1'] },
  { name: 'disaggregated 2 prefill + 2 decode', args: ['--prefill', '2', '--decode', '2', '--prefill-placement', 'remote'] },
];

describe('long prompts, prefilled in 128-token chunks', () => {
  let model: { dir: string; cleanup(): void };
  const greedy: string[] = [];
  const sampled: string[] = [];

  before(async () => {
    model = longContextDummy();
    // The same chunking as the workers: a chunk boundary is where floating-point sums split.
    const engine = await Engine.load(model.dir, { threads: 1, maxSequences: 1, prefillChunk: CHUNK });
    for (const ids of prompts) {
      const g = await generate(engine, ids, { temperature: 0, topK: 0, topP: 1, maxTokens: OUTPUT, stopTokenIds: [] });
      greedy.push(engine.tokenizer.decode(g.ids, ids));
      const s = await generate(engine, ids, { temperature: seeded.temperature, topK: seeded.top_k, topP: seeded.top_p, seed: seeded.seed, maxTokens: OUTPUT, stopTokenIds: [] });
      sampled.push(engine.tokenizer.decode(s.ids, ids));
    }
  });

  after(() => model?.cleanup());

  for (const mode of modes) {
    describe(mode.name, () => {
      let cluster: TestCluster | undefined;
      before(async () => {
        // --pin-roles, --planner off: the placement checks below are about fixed roles; the
        // planner's role changes (prefill-heavy load like this one turns 1P+1D into unified) are
        // test/planner's, and without it the cluster starts one process fewer.
        cluster = await startCluster(model.dir, [...mode.args, '--max-sequences', '8', '--prefill-chunk', String(CHUNK), '--pin-roles', '--planner', 'off']);
      });
      after(async () => { await cluster?.stop(); });

      test('greedy and seeded output equal one engine, one request at a time and all at once, streamed and not', async (t) => {
        const c = cluster!;
        const url = `${c.url}/v1/completions`;
        const body = (ids: number[], extra: object = {}) => ({ model: c.modelName, prompt: ids, max_tokens: OUTPUT, temperature: 0, ignore_eos: true, ...extra });
        // `up` is ready once one worker of each role is; wait until every worker of this mode has
        // registered, or one joining later would prefill tokens the snapshot below does not count.
        const count = (flag: string) => (mode.args.includes(flag) ? Number(mode.args[mode.args.indexOf(flag) + 1]) : 0);
        const expected = count('--prefill') + count('--decode') + count('--unified');
        const workers = await waitFor(async () => {
          const list = ((await (await fetch(`${c.url}/workers`)).json()) as any).workers as any[];
          return list.filter((w) => w.healthy).length === expected ? list : undefined;
        }, 30_000, `all ${expected} workers registered`);
        const before = await Promise.all(workers.map((w) => scrape(w.metrics_url)));

        for (const [i, ids] of prompts.entries()) {
          const r = await postJson(url, body(ids));
          assert.equal(r.status, 200, JSON.stringify(r.json));
          assert.equal(r.json.choices[0].text, greedy[i], `greedy, prompt of ${ids.length} tokens`);
          assert.equal(r.json.usage.prompt_tokens, ids.length);
        }
        const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body(prompts[3], { stream: true })) });
        const { events, done } = await readSse(res);
        assert.ok(done, 'stream ends with [DONE]');
        assert.equal(events.filter((e) => e.choices?.length).map((e) => e.choices[0].text).join(''), greedy[3]);

        // All at once, greedy and seeded mixed: prefill chunks of several requests share passes and
        // decode steps batch them, which must not change any one of them.
        const all = await Promise.all(prompts.flatMap((ids) => [postJson(url, body(ids)), postJson(url, body(ids, seeded))]));
        all.forEach((r, k) => {
          assert.equal(r.status, 200, JSON.stringify(r.json));
          const i = k >> 1;
          assert.equal(r.json.choices[0].text, k % 2 ? sampled[i] : greedy[i], `${k % 2 ? 'seeded' : 'greedy'}, prompt of ${prompts[i].length} tokens, concurrent`);
        });

        // Every request was prefilled in chunks: at least ceil(tokens / chunk) prefill passes in all.
        const requests = prompts.length * 3 + 1;
        const promptTokens = 3 * prompts.reduce((s, p) => s + p.length, 0) + prompts[3].length;
        // The same prompts come back, so the prefix cache serves part of them: every prompt token
        // is either computed or a cache hit.
        let cachedTokens = 0;
        const afterText = await waitFor(async () => {
          const t = await Promise.all(workers.map((w) => scrape(w.metrics_url)));
          const delta = (name: string) => t.reduce((s, x, i) => s + total(x, name) - total(before[i], name), 0);
          cachedTokens = delta('pdserve_prefix_cache_hits_total');
          return delta('pdserve_prompt_tokens_total') + cachedTokens === promptTokens ? t : undefined;
        }, 10_000, 'the workers to count every prompt token');
        const d = (i: number, name: string, labels = '') => total(afterText[i], name, labels) - total(before[i], name, labels);
        const passes = workers.reduce((s, w, i) => s + (w.role === 'decode' ? 0 : d(i, 'pdserve_step_duration_seconds_count', 'phase="prefill"')), 0);
        const computed = promptTokens - cachedTokens;
        assert.ok(passes >= Math.ceil(computed / CHUNK), `${passes} prefill passes for ${computed} computed prompt tokens in chunks of ${CHUNK}`);

        const prefillWorkers = workers.map((w, i) => [w, i] as const).filter(([w]) => w.role === 'prefill');
        const decodeWorkers = workers.map((w, i) => [w, i] as const).filter(([w]) => w.role === 'decode');
        if (prefillWorkers.length > 0) {
          // One KV transfer per request, each of several blocks' worth of bytes.
          assert.equal(prefillWorkers.reduce((s, [, i]) => s + d(i, 'pdserve_kv_transfer_seconds_count'), 0), requests, 'one KV transfer per request');
          const bytes = prefillWorkers.reduce((s, [, i]) => s + d(i, 'pdserve_kv_transfer_bytes_total'), 0);
          const kvBytesPerToken = 2 * DUMMY_PRESETS.tiny.n_layers * DUMMY_PRESETS.tiny.n_kv_heads * (DUMMY_PRESETS.tiny.dim / DUMMY_PRESETS.tiny.n_heads) * 4;
          assert.ok(bytes >= promptTokens * kvBytesPerToken, `${bytes} KV bytes sent for ${promptTokens} prompt tokens`);
          // A dedicated prefill worker is preferred for prefill (cluster-backend.ts pick()): decode
          // workers prefilled nothing.
          for (const [w, i] of decodeWorkers) assert.equal(d(i, 'pdserve_prompt_tokens_total'), 0, `${w.id} prefilled nothing`);
        }
        if (workers.length > 2) {
          // Load spreads: with 8 requests in flight at once every worker of each role served some.
          // Prefill spread is reported, not asserted: the tiny model drains a prefill queue within
          // the router's view of it, so one prefill worker may legitimately take all 8 (a CI run).
          for (const [w, i] of prefillWorkers) t.diagnostic(`${w.id} prefilled ${d(i, 'pdserve_prompt_tokens_total')} tokens`);
          for (const [w, i] of decodeWorkers) assert.ok(d(i, 'pdserve_generation_tokens_total') > 0, `${w.id} decoded some requests`);
        }
      });
    });
  }
});
