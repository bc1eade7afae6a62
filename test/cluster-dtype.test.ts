// Quantized models (q8/q4, built from stories260K with --dtype) through real clusters: greedy
// completions equal what one engine of the same model generates (concurrent requests batched where the kernels allow an exact comparison), and in
// the disaggregated cluster every request's KV blocks (float32 at every weight dtype) cross from
// the prefill worker to the decode worker.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertLlama2c, Engine, generate, type WeightDtype } from '../packages/engine/src/index.ts';
import { postJson, startCluster, type TestCluster } from './support/cluster.ts';
import { sharedPath } from './support/shared.ts';

// `concurrent`: the requests are sent at once, so the worker batches them while the reference
// engine ran each alone. That compares exactly only where the weight kernels give a row the same
// result whatever the batch: ORT's q4 MatMulNBits does not on every CPU (on one machine here a
// batch of 4 changed a greedy token at position 38 of 40, in both cluster modes, on the last
// landed code too), so q4 requests go one at a time and still must equal the engine exactly.
const cases: Array<{ dtype: WeightDtype; mode: string; args: string[]; concurrent: boolean }> = [
  { dtype: 'q8', mode: 'disaggregated 1 prefill + 1 decode', args: ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote'], concurrent: true },
  { dtype: 'q4', mode: 'disaggregated 1 prefill + 1 decode', args: ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote'], concurrent: false },
  { dtype: 'q4', mode: 'unified 1', args: ['--unified', '1'], concurrent: false },
];
const prompts = ['Once upon a time', 'The little dog ran to the park', 'Lily and Tom found a big red box under the tree. They opened it and', 'Sam'];

function haveShared(): boolean {
  try {
    return readFileSync(sharedPath('models', 'stories260K', 'stories260K.bin')).length > 0;
  } catch {
    if (process.env.CI === 'true') throw new Error('../shared is missing under CI');
    return false;
  }
}

for (const c of cases) {
  describe(`cluster with a ${c.dtype} model: ${c.mode}`, () => {
    let cluster: TestCluster | undefined;
    let tmp: string | undefined;
    const expected = new Map<string, string>();

    before(async () => {
      if (!haveShared()) return;
      tmp = mkdtempSync(join(tmpdir(), `pdserve-e2e-${c.dtype}-`));
      const dir = join(tmp, 'stories260K');
      const src = sharedPath('models', 'stories260K');
      convertLlama2c({ checkpoint: join(src, 'stories260K.bin'), tokenizer: join(src, 'tok512.bin'), out: dir, dtype: c.dtype });
      const engine = await Engine.load(dir, { threads: 1, maxSequences: 1 });
      for (const p of prompts) {
        const ids = engine.tokenizer.encode(p);
        const r = await generate(engine, ids, { temperature: 0, topK: 0, topP: 1, maxTokens: 40 });
        expected.set(p, engine.tokenizer.decode(r.ids, ids));
      }
      cluster = await startCluster(dir, [...c.args, '--max-sequences', '8', '--planner', 'off']);
    });

    after(async () => {
      await cluster?.stop();
      if (tmp) rmSync(tmp, { recursive: true, force: true });
    });

    test(`${c.concurrent ? 'concurrent' : 'sequential'} greedy completions equal one engine of the same model; KV blocks transfer`, async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      const workers = ((await (await fetch(`${cluster.url}/workers`)).json()) as any).workers as any[];
      const prefillWorker = workers.find((w) => w.role === 'prefill');
      const transferred = async () => {
        if (!prefillWorker) return 0;
        const text = await (await fetch(prefillWorker.metrics_url)).text();
        return text.split('\n').filter((l) => l.startsWith('pdserve_kv_transfer_bytes_total')).reduce((s, l) => s + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
      };
      const bytesBefore = await transferred();
      const ask = (p: string) => postJson(`${cluster!.url}/v1/completions`, { model: cluster!.modelName, prompt: p, max_tokens: 40, temperature: 0 });
      const results = [];
      if (c.concurrent) results.push(...await Promise.all(prompts.map(ask)));
      else for (const p of prompts) results.push(await ask(p));
      for (const [i, r] of results.entries()) {
        assert.equal(r.status, 200, JSON.stringify(r.json));
        assert.equal(r.json.choices[0].text, expected.get(prompts[i]), prompts[i]);
      }
      if (prefillWorker) assert.ok((await transferred()) > bytesBefore, 'the prefill worker sent KV bytes to the decode worker');
      else assert.equal(workers.length, 1);
    });
  });
}
