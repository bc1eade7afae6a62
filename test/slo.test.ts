// Conditional disaggregation and SLO admission through real processes (`pdserve up`: redis-server,
// the router, a prefill and a decode worker over gRPC, ONNX Runtime), with stories260K.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Engine, generate } from '../packages/engine/src/index.ts';
import { postJson, startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { repoRoot, sharedPath } from './support/shared.ts';

const SHORT = 'Once upon a time';
const LONG = 'Lily and Tom found a big red box under the tree. They opened it and saw a little cat. The cat was sad and';

function haveShared(): boolean {
  if (process.env.CI === 'true') return true;
  try {
    return readFileSync(sharedPath('golden', 'stories260K.once-upon-a-time.json')).length > 0;
  } catch {
    return false;
  }
}

/** Sum of every series of `name{...labels}` whose labels include `match` (e.g. 'where="local"'). */
function counter(text: string, name: string, match: string[] = []): number {
  return text.split('\n')
    .filter((l) => (l.startsWith(name + '{') || l.startsWith(name + ' ')) && match.every((m) => l.includes(m)))
    .reduce((s, l) => s + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

async function expectedTexts(dir: string, prompts: string[], maxTokens: (p: string) => number, ignoreEos = false): Promise<Map<string, string>> {
  const engine = await Engine.load(dir, { threads: 1, maxSequences: 1 });
  const out = new Map<string, string>();
  for (const p of prompts) {
    const ids = engine.tokenizer.encode(p);
    const r = await generate(engine, ids, { temperature: 0, topK: 0, topP: 1, maxTokens: maxTokens(p), ...(ignoreEos ? { stopTokenIds: [] } : {}) });
    out.set(p, engine.tokenizer.decode(r.ids, ids));
  }
  return out;
}

describe('conditional disaggregation: the router places each prompt', () => {
  let cluster: TestCluster | undefined;
  let model: { dir: string; cleanup(): void } | undefined;
  let expected = new Map<string, string>();
  let tokens = new Map<string, number>();
  const maxTokens = () => 24;

  before(async () => {
    if (!haveShared()) return;
    model = stories260K();
    expected = await expectedTexts(model.dir, [SHORT, LONG], maxTokens);
    const engine = await Engine.load(model.dir, { threads: 1, maxSequences: 1 });
    for (const p of [SHORT, LONG]) tokens.set(p, engine.tokenizer.encode(p).length);
    // Prompts above 16 tokens always go to the prefill worker; shorter ones are placed on the estimates.
    cluster = await startCluster(model.dir, ['--prefill', '1', '--decode', '1', '--max-sequences', '8', '--local-prefill-max-tokens', '16', '--planner', 'off']);
  });

  after(async () => {
    await cluster?.stop();
    model?.cleanup();
  });

  test('a short prompt is prefilled on the decode worker, a long one on the prefill worker; both give the single-engine text', async (t) => {
    if (!cluster) return t.skip('no ../shared models');
    assert.ok(tokens.get(SHORT)! <= 16 && tokens.get(LONG)! > 16, `prompt lengths ${[...tokens.values()]}`);
    const metrics = async () => (await fetch(`${cluster!.url}/metrics`)).text();
    const placed = (text: string, where: string, reason?: string) =>
      counter(text, 'pdserve_prefill_placement_total', [`where="${where}"`, ...(reason ? [`reason="${reason}"`] : [])]);
    for (const [prompt, where, reason] of [[SHORT, 'local', 'faster'], [LONG, 'remote', 'over_threshold'], [SHORT, 'local', 'faster']] as const) {
      const before = await metrics();
      const id = `place-${where}-${Date.now()}`;
      const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt, max_tokens: maxTokens(), temperature: 0 }, { 'x-request-id': id });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.choices[0].text, expected.get(prompt), `text of ${JSON.stringify(prompt)}`);
      const after = await metrics();
      assert.equal(placed(after, where, reason) - placed(before, where, reason), 1, `${JSON.stringify(prompt)} placed ${where} (${reason})`);
      assert.equal(placed(after, where === 'local' ? 'remote' : 'local') - placed(before, where === 'local' ? 'remote' : 'local'), 0);
      // The worker that prefilled says so: the decode worker logs a local prefill, the prefill worker a remote one.
      const line = await waitFor(async () => cluster!.output().split('\n').filter((l) => l.includes(id) && l.includes('prefill done')).map((l) => JSON.parse(l))[0], 5_000, 'the prefill log line');
      assert.equal(line.role, where === 'local' ? 'decode' : 'prefill');
      assert.equal(line.decode === 'local', where === 'local');
    }
  });

  test('concurrent short and long prompts, placed both ways, all give the single-engine text', async (t) => {
    if (!cluster) return t.skip('no ../shared models');
    const prompts = [SHORT, LONG, SHORT, LONG, SHORT, LONG];
    const results = await Promise.all(prompts.map((p) => postJson(`${cluster!.url}/v1/completions`, { model: cluster!.modelName, prompt: p, max_tokens: maxTokens(), temperature: 0 })));
    results.forEach((r, i) => {
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.choices[0].text, expected.get(prompts[i]));
    });
  });

  test('a malformed `slo` gets a 400 that names it', async (t) => {
    if (!cluster) return t.skip('no ../shared models');
    for (const slo of ['fast', { ttft_ms: -5 }, { ttft_ms: 'soon' }, { ttft: 100 }, [100]]) {
      const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: SHORT, max_tokens: 4, slo });
      assert.equal(r.status, 400, `slo ${JSON.stringify(slo)}: ${JSON.stringify(r.json)}`);
      assert.equal(r.json.error.type, 'invalid_request_error');
      assert.match(r.json.error.message, /slo/, `the message names the field: ${r.json.error.message}`);
    }
    const ok = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: SHORT, max_tokens: maxTokens(), temperature: 0, slo: { ttft_ms: 60_000, tpot_ms: 60_000 } });
    assert.equal(ok.status, 200);
    assert.equal(ok.json.choices[0].text, expected.get(SHORT));
  });
});

describe('SLO admission: a burst beyond capacity', () => {
  let cluster: TestCluster | undefined;
  let model: { dir: string; cleanup(): void } | undefined;
  let expected = new Map<string, string>();
  const MAX_TOKENS = 300;

  before(async () => {
    if (!haveShared()) return;
    model = stories260K();
    expected = await expectedTexts(model.dir, [SHORT], () => MAX_TOKENS, true);
    // Four decode slots: the fifth concurrent request would wait for a slot with no bound on its TTFT.
    cluster = await startCluster(model.dir, ['--prefill', '1', '--decode', '1', '--max-sequences', '4', '--planner', 'off']);
  });

  after(async () => {
    await cluster?.stop();
    model?.cleanup();
  });

  test('is refused fast with 503 + Retry-After + an OpenAI code; every admitted request finishes with the right text', async (t) => {
    if (!cluster) return t.skip('no ../shared models');
    const t0 = performance.now();
    const burst = await Promise.all(Array.from({ length: 24 }, async () => {
      const r = await postJson(`${cluster!.url}/v1/completions`, { model: cluster!.modelName, prompt: SHORT, max_tokens: MAX_TOKENS, temperature: 0, ignore_eos: true });
      return { ...r, at: performance.now() - t0 };
    }));
    const admitted = burst.filter((r) => r.status === 200);
    const refused = burst.filter((r) => r.status !== 200);
    assert.ok(admitted.length >= 1, 'some requests are admitted');
    assert.ok(refused.length >= 1, 'a burst beyond capacity gets refusals');
    for (const r of refused) {
      assert.equal(r.status, 503, JSON.stringify(r.json));
      assert.ok(Number(r.headers.get('retry-after')) >= 1, `Retry-After: ${r.headers.get('retry-after')}`);
      assert.ok(['overloaded', 'slo_ttft', 'slo_tpot'].includes(r.json.error.code), `code ${r.json.error.code}`);
      assert.equal(typeof r.json.error.message, 'string');
    }
    for (const r of admitted) assert.equal(r.json.choices[0].text, expected.get(SHORT));
    // Refused at once, not after queueing: every refusal came back before the first admitted request finished.
    const firstDone = Math.min(...admitted.map((r) => r.at));
    assert.ok(refused.every((r) => r.at < firstDone), `refusals at ${refused.map((r) => Math.round(r.at))} ms, first completion at ${Math.round(firstDone)} ms`);
    const text = await (await fetch(`${cluster.url}/metrics`)).text();
    assert.ok(counter(text, 'pdserve_admission_rejected_total') >= refused.length);
    // Once the burst is over the cluster admits again.
    const after = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: SHORT, max_tokens: 8, temperature: 0 });
    assert.equal(after.status, 200);
  });
});

describe('placement and admission flags', () => {
  // The four invocations run side by side (each is a node start and an argument check).
  const cli = (args: string[]) => new Promise<{ status: number | null; stderr: string }>((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, 'packages/cli/src/main.ts'), ...args], { cwd: repoRoot, stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 });
    let stderr = '';
    p.stderr!.on('data', (d) => { stderr += d; });
    p.on('error', reject);
    p.on('close', (status) => resolve({ status, stderr }));
  });
  const base = ['router', '--model', '/nonexistent', '--redis-url', 'redis://127.0.0.1:1'];

  test('a negative threshold, an unknown placement or admission mode exit with a clear error', async () => {
    const cases = [
      [['--local-prefill-max-tokens', '-5'], /local-prefill-max-tokens.*non-negative integer.*-5/s],
      [['--prefill-placement', 'sideways'], /--prefill-placement must be one of auto, remote, local, got sideways/],
      [['--admission', 'maybe'], /--admission must be one of slo, off, got maybe/],
    ] as const;
    const [up, ...results] = await Promise.all([cli(['up', '--prefill-placement', 'both']), ...cases.map(([args]) => cli([...base, ...args]))]);
    cases.forEach(([args, pattern], i) => {
      assert.notEqual(results[i]!.status, 0, `${args.join(' ')} exits non-zero`);
      assert.match(results[i]!.stderr, pattern);
    });
    assert.notEqual(up!.status, 0);
    assert.match(up!.stderr, /--prefill-placement must be one of/);
  });
});
