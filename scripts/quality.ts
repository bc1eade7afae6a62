// Weight-precision quality: converts both shared llama2.c models at every weight dtype and measures,
// against the fp32 model, over the golden text (the golden prompt + run.c's greedy continuation,
// ../shared/golden): teacher-forced top-1 agreement and perplexity; and greedy agreement from the
// golden prompt (how many generated tokens equal fp32's before the first one that differs; after it
// the two texts go separate ways, so a position-by-position match says little).
//
//   node --import tsx scripts/quality.ts
//
// Prints a markdown table (BENCHMARKS.md, "Weight precision: quality"), then a JSON blob.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { convertLlama2c, Engine, agreement, firstDivergence, greedyIds, perplexity, teacherForced, type WeightFormat } from '../packages/engine/src/index.ts';

const shared = resolve('../shared');
const models = [
  { name: 'stories260K', checkpoint: 'stories260K.bin', tokenizer: 'tok512.bin' },
  { name: 'babyllama105', checkpoint: 'model.bin', tokenizer: 'tok105.bin' },
];
// fp32 first: it is the reference the others are compared with.
const FORMATS: WeightFormat[] = [
  { dtype: 'fp32' }, { dtype: 'q8', blockSize: 32 }, { dtype: 'q8', blockSize: 16 }, { dtype: 'q4', blockSize: 32 }, { dtype: 'q4', blockSize: 16 },
];
const tmp = mkdtempSync(join(tmpdir(), 'pdserve-quality-'));
const rows: Array<Record<string, unknown>> = [];
try {
  for (const m of models) {
    const golden = JSON.parse(readFileSync(join(shared, 'golden', `${m.name}.once-upon-a-time.json`), 'utf8'));
    const text: number[] = [...golden.prompt_ids, ...golden.generated_ids];
    let reference: { top1: number[]; greedy: number[] } | undefined;
    for (const { dtype, blockSize } of FORMATS) {
      const out = join(tmp, `${m.name}-${dtype}-${blockSize ?? ''}`);
      convertLlama2c({ checkpoint: join(shared, 'models', m.name, m.checkpoint), tokenizer: join(shared, 'models', m.name, m.tokenizer), out, dtype, blockSize });
      const engine = await Engine.load(out, { threads: 1, maxSequences: 2 });
      const tf = await teacherForced(engine, text);
      const greedy = await greedyIds(engine, golden.prompt_ids, golden.positions);
      reference ??= { top1: tf.top1, greedy };
      const row = {
        model: m.name,
        dtype,
        blockSize: blockSize ?? null,
        positions: tf.top1.length,
        top1Agreement: agreement(tf.top1, reference.top1),
        perplexity: perplexity(tf),
        goldenTop1: agreement(tf.top1, text.slice(1)),
        greedyAgreement: agreement(greedy, reference.greedy),
        greedyFirstDivergence: firstDivergence(greedy, reference.greedy),
        greedyTokens: greedy.length,
        greedyEqualsGolden: JSON.stringify(greedy) === JSON.stringify(golden.stop === 'bos' ? golden.generated_ids.slice(0, -1) : golden.generated_ids),
      };
      rows.push(row);
      process.stderr.write(`[quality] ${JSON.stringify(row)}\n`);
    }
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
const pct = (x: unknown) => `${((x as number) * 100).toFixed(1)}%`;
console.log('| model | dtype (block) | teacher-forced top-1 = fp32 | perplexity | greedy: tokens equal to fp32 before the first difference | greedy = run.c |');
console.log('|---|---|---|---|---|---|');
for (const r of rows) {
  console.log(`| ${r.model} | ${r.dtype}${r.blockSize ? ` (${r.blockSize})` : ''} | ${pct(r.top1Agreement)} of ${r.positions} | ${(r.perplexity as number).toFixed(3)} | ${r.greedyFirstDivergence} of ${r.greedyTokens}${r.greedyFirstDivergence === r.greedyTokens ? ' (all)' : ''} | ${r.greedyEqualsGolden ? 'yes' : 'no'} |`);
}
console.log('\n```json\n' + JSON.stringify({ date: new Date().toISOString(), rows }, null, 2) + '\n```');
