// Weight dtypes: q8/q4 models converted from the shared llama2.c models stay close to fp32 (bounds
// measured with scripts/quality.ts, BENCHMARKS.md "Weight precision: quality", with margin), record
// their dtype in config.json, and move their (float32) KV blocks between engines like fp32 models.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  agreement, argmax, blocksFor, convertLlama2c, Engine, generate, ModelLoadError, perplexity, readModelConfig, teacherForced,
  WeightDtypeError, type WeightDtype, writeDummyModel,
} from '../src/index.ts';
import { dequantizeBlockwise, quantizeBlockwise } from '../src/model/weight-quant.ts';
import { requireShared } from '../../../test/support/shared.ts';

const models = [
  { name: 'stories260K', checkpoint: 'stories260K.bin', tokenizer: 'tok512.bin' },
  { name: 'babyllama105', checkpoint: 'model.bin', tokenizer: 'tok105.bin' },
];
// Measured (block 32): q8 98.0% / 98.8%, q4 85.9% / 92.2% teacher-forced top-1 agreement with fp32;
// perplexity q8 +0.1% / +0.1%, q4 +10.4% / +8.6%.
const bounds: Record<Exclude<WeightDtype, 'fp32'>, { top1: number; perplexityRise: number }> = {
  q8: { top1: 0.97, perplexityRise: 0.01 },
  q4: { top1: 0.83, perplexityRise: 0.15 },
};
const greedy = { temperature: 0, topK: 0, topP: 1 };

test('block quantization: each weight within half a step of its block scale; a ragged last block is padded', () => {
  const rows = 3;
  const cols = 40; // one whole block of 32 and a padded one of 8
  const w = Float32Array.from({ length: rows * cols }, (_, i) => Math.sin(i * 1.7) * (1 + (i % 5)));
  for (const bits of [8, 4] as const) {
    const q = quantizeBlockwise(w, rows, cols, bits, 32);
    assert.equal(q.blocksPerRow, 2);
    assert.equal(q.codes.length, rows * 2 * (32 * bits) / 8);
    const back = dequantizeBlockwise(q);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const scale = Math.abs(q.scales[r * 2 + (c >> 5)]);
        assert.ok(Math.abs(back[r * cols + c] - w[r * cols + c]) <= scale / 2 + 1e-6, `bits ${bits} [${r}, ${c}]`);
      }
    }
  }
});

for (const m of models) {
  test(`${m.name}: q8 and q4 stay close to fp32 (teacher-forced top-1, perplexity) and config.json records the dtype`, async (t) => {
    const dir = requireShared(t, 'models', m.name);
    const goldenPath = requireShared(t, 'golden', `${m.name}.once-upon-a-time.json`);
    if (!dir || !goldenPath) return;
    const golden = JSON.parse(readFileSync(goldenPath, 'utf8'));
    const text: number[] = [...golden.prompt_ids, ...golden.generated_ids];
    const tmp = mkdtempSync(join(tmpdir(), 'pdserve-dtype-'));
    t.after(() => rmSync(tmp, { recursive: true, force: true }));
    const load = async (dtype: WeightDtype) => {
      const out = join(tmp, dtype);
      convertLlama2c({ checkpoint: join(dir, m.checkpoint), tokenizer: join(dir, m.tokenizer), out, dtype });
      return { out, engine: await Engine.load(out, { threads: 1, maxSequences: 2 }) };
    };
    const fp32 = await load('fp32');
    assert.equal(readModelConfig(fp32.out).dtype, 'fp32');
    const reference = await teacherForced(fp32.engine, text);
    for (const dtype of ['q8', 'q4'] as const) {
      const { out, engine } = await load(dtype);
      const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
      assert.equal(cfg.dtype, dtype);
      assert.deepEqual(cfg.quantization, { method: 'MatMulNBits', bits: dtype === 'q8' ? 8 : 4, block_size: 32, accuracy_level: 4, symmetric: true, embedding: 'GatherBlockQuantized' });
      const tf = await teacherForced(engine, text);
      const top1 = agreement(tf.top1, reference.top1);
      assert.ok(top1 >= bounds[dtype].top1, `${dtype} top-1 agreement ${top1}`);
      assert.ok(top1 < 1, `${dtype} is really quantized: some prediction moved`);
      const rise = perplexity(tf) / perplexity(reference) - 1;
      assert.ok(rise <= bounds[dtype].perplexityRise, `${dtype} perplexity rise ${rise}`);
    }
  });
}

for (const dtype of ['q8', 'q4'] as const) {
  test(`${dtype}: KV blocks from one engine's prefill continue on another engine exactly as one generation`, async (t) => {
    const dir = requireShared(t, 'models', 'stories260K');
    if (!dir) return;
    const out = mkdtempSync(join(tmpdir(), 'pdserve-dtype-kv-'));
    t.after(() => rmSync(out, { recursive: true, force: true }));
    convertLlama2c({ checkpoint: join(dir, 'stories260K.bin'), tokenizer: join(dir, 'tok512.bin'), out, dtype });
    const prefill = await Engine.load(out, { threads: 1, blockTokens: 4, maxSequences: 4, prefillChunk: 7 });
    const decode = await Engine.load(out, { threads: 1, blockTokens: 4, maxSequences: 4 });
    const prompt = prefill.tokenizer.encode('Once upon a time, there was a big dog named Max');
    const whole = await generate(decode, prompt, { ...greedy, maxTokens: 40 });
    const a = prefill.newSequence('a');
    const first = argmax((await prefill.prefill(a, prompt)).subarray(0, prefill.vocabSize));
    const data = prefill.runner.readBlocks(a, 0, blocksFor(a.length, 4));
    const b = decode.newSequence('b');
    decode.runner.writeBlocks(b, 0, data, a.length);
    const ids = [first];
    while (ids.length < 40) ids.push(argmax((await decode.decode([{ seq: b, token: ids.at(-1)! }])).subarray(0, decode.vocabSize)));
    assert.deepEqual(ids, whole.ids);
  });
}

test('a batched q4 decode step gives each sequence the tokens it gets alone', async (t) => {
  const dir = requireShared(t, 'models', 'stories260K');
  if (!dir) return;
  const out = mkdtempSync(join(tmpdir(), 'pdserve-dtype-batch-'));
  t.after(() => rmSync(out, { recursive: true, force: true }));
  convertLlama2c({ checkpoint: join(dir, 'stories260K.bin'), tokenizer: join(dir, 'tok512.bin'), out, dtype: 'q4' });
  const engine = await Engine.load(out, { threads: 1, maxSequences: 4 });
  const prompts = ['Once upon a time', 'The cat sat', 'Lily went to the park and'].map((p) => engine.tokenizer.encode(p));
  const alone = [];
  for (const p of prompts) alone.push((await generate(engine, p, { ...greedy, maxTokens: 20 })).ids);
  const seqs = prompts.map((_, i) => engine.newSequence(`s${i}`));
  const ids: number[][] = [];
  for (let i = 0; i < prompts.length; i++) ids.push([argmax((await engine.prefill(seqs[i], prompts[i])).subarray(0, engine.vocabSize))]);
  while (ids[0].length < 20) {
    const logits = await engine.decode(seqs.map((seq, i) => ({ seq, token: ids[i].at(-1)! })));
    for (let i = 0; i < seqs.length; i++) ids[i].push(argmax(logits.subarray(i * engine.vocabSize, (i + 1) * engine.vocabSize)));
  }
  assert.deepEqual(ids, alone);
});

test('bad dtypes: a clear error before anything is written; an unknown dtype in config.json is refused; old "float32" reads as fp32', (t) => {
  const tmp = mkdtempSync(join(tmpdir(), 'pdserve-dtype-bad-'));
  t.after(() => rmSync(tmp, { recursive: true, force: true }));
  assert.throws(() => writeDummyModel('tiny', join(tmp, 'a'), { dtype: 'int3' as WeightDtype }), (e: Error) => e instanceof WeightDtypeError && /unknown --dtype "int3"/.test(e.message));
  assert.throws(() => writeDummyModel('tiny', join(tmp, 'b'), { dtype: 'fp16' as WeightDtype }), /fp16 is not supported: ONNX Runtime's CPU provider converts float16 weights to float32/);
  assert.throws(() => writeDummyModel('tiny', join(tmp, 'c'), { dtype: 'q4', blockSize: 24 }), /unsupported quantization block size 24/);
  assert.throws(() => writeDummyModel('tiny', join(tmp, 'd'), { dtype: 'fp32', blockSize: 32 }), /block size applies only to --dtype q8 or q4/);
  for (const d of ['a', 'b', 'c', 'd']) assert.throws(() => readFileSync(join(tmp, d, 'config.json')), /ENOENT/);

  const dir = join(tmp, 'tiny');
  writeDummyModel('tiny', dir, { dtype: 'q8' });
  const path = join(dir, 'config.json');
  const cfg = JSON.parse(readFileSync(path, 'utf8'));
  writeFileSync(path, JSON.stringify({ ...cfg, dtype: 'float32' }));
  assert.equal(readModelConfig(dir).dtype, 'fp32');
  writeFileSync(path, JSON.stringify({ ...cfg, dtype: 'bf16' }));
  assert.throws(() => readModelConfig(dir), (e: Error) => e instanceof ModelLoadError && /unsupported dtype "bf16"/.test(e.message));
});
