// Quality of each KV wire dtype (kv/wire.ts): what a decode worker generates from KV blocks that
// travelled as fp16 / bf16 / int8, against the same blocks as fp32 (exact).
//
//   node --import tsx scripts/kv-wire-quality.ts [--prompts 64] [--prompt-len 32] [--tokens 32] [--model DIR]
//
// Per prompt: one fp32 prefill; its blocks go through each dtype's encode -> decode, exactly as on the
// wire, into a fresh sequence per dtype (fp32 too, as the reference); then greedy decoding of all of
// them in one batch. Reported per dtype: prompts whose greedy text equals fp32's, first divergence
// position (generated tokens before the first difference; the mean over the prompts that diverge),
// fraction of identical tokens position by position, and the max abs error of the logits after the
// first decode step. Models: the golden prompts of ../shared's stories260K and babyllama105 (the
// full 256 positions of the golden files) and --prompts random-id prompts of the smollm2-135m dummy
// (or of the model in --model).
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { argmax, blocksFor, convertLlama2c, decodeKvBlocks, encodeKvBlocks, Engine, KV_WIRE_DTYPES, writeDummyModel, type KvWireDtype } from '../packages/engine/src/index.ts';

const { values } = parseArgs({ options: { prompts: { type: 'string', default: '64' }, 'prompt-len': { type: 'string', default: '32' }, tokens: { type: 'string', default: '32' }, model: { type: 'string' } } });
const root = new URL('..', import.meta.url).pathname;
const shared = join(root, '..', 'shared');

interface Case { prompt: number[]; tokens: number }
interface DtypeStats { identical: number; divergedAt: number[]; sameTokens: number; allTokens: number; maxLogitErr: number }

async function run(engine: Engine, cases: Case[]): Promise<Map<KvWireDtype, DtypeStats>> {
  const stats = new Map(KV_WIRE_DTYPES.map((d) => [d, { identical: 0, divergedAt: [], sameTokens: 0, allTokens: 0, maxLogitErr: 0 } as DtypeStats]));
  const V = engine.vocabSize;
  for (const [i, c] of cases.entries()) {
    const src = engine.newSequence(`src-${i}`);
    const logits = await engine.prefill(src, c.prompt);
    const first = argmax(logits.subarray(0, V));
    const blocks = engine.runner.readBlocks(src, 0, blocksFor(src.length, engine.runner.kvShape.blockTokens));
    const length = src.length;
    engine.release(src);
    const seqs = KV_WIRE_DTYPES.map((d) => {
      const seq = engine.newSequence(`${d}-${i}`);
      engine.runner.writeBlocks(seq, 0, decodeKvBlocks(encodeKvBlocks(blocks, engine.runner.kvShape, d), engine.runner.kvShape, d), length);
      return seq;
    });
    const ids = KV_WIRE_DTYPES.map(() => [first]);
    for (let step = 0; step < c.tokens - 1; step++) {
      const l = await engine.decode(seqs.map((seq, k) => ({ seq, token: ids[k][ids[k].length - 1] })));
      if (step === 0) {
        const ref = l.subarray(0, V);
        KV_WIRE_DTYPES.forEach((d, k) => {
          const row = l.subarray(k * V, (k + 1) * V);
          let err = 0;
          for (let j = 0; j < V; j++) err = Math.max(err, Math.abs(row[j] - ref[j]));
          stats.get(d)!.maxLogitErr = Math.max(stats.get(d)!.maxLogitErr, err);
        });
      }
      seqs.forEach((_, k) => ids[k].push(argmax(l.subarray(k * V, (k + 1) * V))));
    }
    seqs.forEach((s) => engine.release(s));
    KV_WIRE_DTYPES.forEach((d, k) => {
      const s = stats.get(d)!;
      const div = ids[k].findIndex((t, j) => t !== ids[0][j]);
      if (div < 0) s.identical++;
      else s.divergedAt.push(div);
      s.sameTokens += ids[k].filter((t, j) => t === ids[0][j]).length;
      s.allTokens += ids[k].length;
    });
  }
  return stats;
}

function report(name: string, cases: Case[], stats: Map<KvWireDtype, DtypeStats>): void {
  console.log(`\n${name}: ${cases.length} prompt(s), ${cases[0].prompt.length}${cases.length > 1 ? ' tokens each' : ' prompt tokens'}, ${cases[0].tokens} generated tokens each`);
  console.log('| wire dtype | greedy text = fp32 | first divergence (generated tokens, mean of diverging prompts) | identical tokens | max abs logit error, first decode step |');
  console.log('|---|---|---|---|---|');
  for (const [d, s] of stats) {
    const div = s.divergedAt.length ? `${(s.divergedAt.reduce((a, b) => a + b, 0) / s.divergedAt.length).toFixed(1)} (min ${Math.min(...s.divergedAt)})` : 'none';
    console.log(`| ${d} | ${s.identical}/${cases.length} | ${div} | ${(100 * s.sameTokens / s.allTokens).toFixed(1)}% | ${s.maxLogitErr.toExponential(2)} |`);
  }
}

async function main(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'pdserve-kv-quality-'));
  try {
    for (const [name, checkpoint, tokenizer] of [['stories260K', 'stories260K.bin', 'tok512.bin'], ['babyllama105', 'model.bin', 'tok105.bin']]) {
      const dir = join(shared, 'models', name);
      if (!existsSync(join(dir, checkpoint))) { console.log(`\n${name}: not found under ../shared, skipped`); continue; }
      const out = join(tmp, name);
      convertLlama2c({ checkpoint: join(dir, checkpoint), tokenizer: join(dir, tokenizer), out });
      const golden = JSON.parse(readFileSync(join(shared, 'golden', `${name}.once-upon-a-time.json`), 'utf8'));
      const engine = await Engine.load(out, { threads: 1, maxSequences: KV_WIRE_DTYPES.length + 1 });
      const cases = [{ prompt: golden.prompt_ids as number[], tokens: golden.positions - golden.prompt_ids.length + 1 }];
      report(`${name} (golden prompt "${golden.prompt}")`, cases, await run(engine, cases));
    }
    const model = values.model ?? join(root, '.cache/bench-models/smollm2-135m-4k');
    if (!values.model && !existsSync(join(model, 'config.json'))) writeDummyModel('smollm2-135m', model, { maxSeqLen: 4096 });
    const engine = await Engine.load(model, { threads: 1, maxSequences: KV_WIRE_DTYPES.length + 1 });
    let x = 2026;
    const rand = () => (x = (x * 1103515245 + 12345) >>> 0) / 2 ** 32;
    const cases = Array.from({ length: Number(values.prompts) }, () => ({
      prompt: Array.from({ length: Number(values['prompt-len']) }, () => 3 + Math.floor(rand() * (engine.vocabSize - 3))),
      tokens: Number(values.tokens),
    }));
    report(values.model ? `${values.model} (random prompts)` : 'smollm2-135m dummy (random weights, random prompts)', cases, await run(engine, cases));
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

await main();
