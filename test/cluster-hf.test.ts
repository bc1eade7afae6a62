// Hugging Face folders served by a real cluster: the shared llama2.c models exported to the HF
// layout (safetensors, rotate-half q/k, tokenizer.json, a chat template in tokenizer_config.json),
// converted with `convert --from hf`, give the llama2.c goldens through `pdserve up` with KV blocks
// moving between prefill and decode workers (and in a unified worker); the chat endpoint renders
// the folder's own template.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertHf } from '../packages/engine/src/index.ts';
import { exportSharedModelToHf } from './support/hf-fixture.ts';
import { postJson, startCluster, type TestCluster } from './support/cluster.ts';
import { sharedPath } from './support/shared.ts';

const cases = [
  { name: 'stories260K', args: ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote'], mode: 'disaggregated 1 prefill + 1 decode' },
  { name: 'babyllama105', args: ['--unified', '1'], mode: 'unified 1' },
];
const TEMPLATE = '{% for m in messages %}{{ m.content }}{% endfor %}';

for (const c of cases) {
  describe(`HF-layout ${c.name} in a cluster (${c.mode})`, () => {
    let cluster: TestCluster | undefined;
    let dir: string | undefined;
    let golden: any;

    before(async () => {
      if (process.env.CI !== 'true' && !existsSync(sharedPath('models', c.name))) return;
      golden = JSON.parse(readFileSync(sharedPath('golden', `${c.name}.once-upon-a-time.json`), 'utf8'));
      dir = mkdtempSync(join(tmpdir(), 'pdserve-e2e-hf-'));
      exportSharedModelToHf(c.name, join(dir, 'hf'), { shards: 2, chatTemplate: TEMPLATE });
      convertHf({ dir: join(dir, 'hf'), out: join(dir, c.name) });
      cluster = await startCluster(join(dir, c.name), [...c.args, '--max-sequences', '4', '--planner', 'off'], 60_000, { modelName: c.name });
    });

    after(async () => {
      await cluster?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    test('greedy /v1/completions equals the llama2.c golden; chat uses the folder\'s template', async (t) => {
      if (!cluster) return t.skip('no ../shared models');
      // run.c samples 256 positions after the prompt's first; the context holds 256 tokens in all
      // (babyllama105's whole context), so the last golden token is left out.
      const maxTokens = golden.positions - golden.prompt_ids.length;
      const r = await postJson(`${cluster.url}/v1/completions`, { model: c.name, prompt: golden.prompt, max_tokens: maxTokens, temperature: 0 });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.usage.completion_tokens, maxTokens);
      assert.ok(golden.completion_text.startsWith(r.json.choices[0].text), r.json.choices[0].text);
      assert.ok(r.json.choices[0].text.length >= golden.completion_text.length - 8);
      assert.equal(r.json.usage.prompt_tokens, golden.prompt_ids.length);
      // The template renders the message text alone, so the chat prompt is the completion prompt.
      const chat = await postJson(`${cluster.url}/v1/chat/completions`, { model: c.name, messages: [{ role: 'user', content: golden.prompt }], max_tokens: 30, temperature: 0 });
      assert.equal(chat.status, 200, JSON.stringify(chat.json));
      assert.equal(chat.json.usage.prompt_tokens, golden.prompt_ids.length);
      assert.ok(golden.completion_text.startsWith(chat.json.choices[0].message.content), chat.json.choices[0].message.content);
    });
  });
}
