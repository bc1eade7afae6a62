// `convert --from hf` on Hugging Face folders exported from the shared llama2.c models (HF names,
// rotate-half q/k rows, safetensors, tokenizer.json): greedy output equals llama2.c run.c's goldens,
// sharded checkpoints load the same, bf16/fp16 storage is widened exactly, and malformed folders
// fail with a clear error and leave no output directory behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertHf, convertLlama2c, Engine, generate, ModelLoadError, parseHfConfig } from '../src/index.ts';
import { loadTokenizer } from '../src/tokenizer/load.ts';
import { bf16ToFloat32, f16ToFloat32, float32ToBf16, float32ToF16, SafetensorsFile, writeSafetensors } from '../src/model/safetensors.ts';
import { ropeFrequencies } from '../src/model/llama-graph.ts';
import { requireShared } from '../../../test/support/shared.ts';
import { exportSharedModelToHf, LLAMA2C_MODELS } from '../../../test/support/hf-fixture.ts';
import { assertGreedyGolden } from './support/golden.ts';

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-hf-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

for (const name of Object.keys(LLAMA2C_MODELS)) {
  test(`${name} exported to the HF layout: greedy output equals llama2.c run.c, sharded or not`, async (t) => {
    const src = requireShared(t, 'models', name);
    const goldenPath = requireShared(t, 'golden', `${name}.once-upon-a-time.json`);
    if (!src || !goldenPath) return;
    const golden = JSON.parse(readFileSync(goldenPath, 'utf8'));
    const dir = tempDir(t);
    exportSharedModelToHf(name, join(dir, 'hf'), { chatTemplate: '{% for m in messages %}{{ m.content }}{% endfor %}' });
    exportSharedModelToHf(name, join(dir, 'hf-sharded'), { shards: 3 });
    const cfg = convertHf({ dir: join(dir, 'hf'), out: join(dir, 'model') });
    assert.equal(cfg.rope_layout, 'rotate-half');
    assert.equal(cfg.tokenizer.kind, 'hf');
    assert.deepEqual(cfg.generation.eos_token_ids, [1, 2]);
    convertHf({ dir: join(dir, 'hf-sharded'), out: join(dir, 'model-sharded') });
    assert.ok(readFileSync(join(dir, 'model', 'model.onnx.data')).equals(readFileSync(join(dir, 'model-sharded', 'model.onnx.data'))), 'sharded weights differ');

    const engine = await Engine.load(join(dir, 'model'), { threads: 1, maxSequences: 2 });
    assert.equal((engine.tokenizer as { chatTemplate?: string }).chatTemplate, '{% for m in messages %}{{ m.content }}{% endfor %}');
    await assertGreedyGolden(engine, golden);
  });
}

test('the exported tokenizer.json encodes and decodes like the llama2.c tokenizer', (t) => {
  const src = requireShared(t, 'models', 'stories260K');
  if (!src) return;
  const dir = tempDir(t);
  exportSharedModelToHf('stories260K', join(dir, 'hf'));
  const hf = loadTokenizer(join(dir, 'hf', 'tokenizer.json'));
  const ref = loadTokenizer(join(src, 'tok512.bin'));
  const golden = JSON.parse(readFileSync(requireShared(t, 'golden', 'stories260K.once-upon-a-time.json')!, 'utf8'));
  const texts = [
    golden.completion_text, 'Once upon a time', '  two  spaces', 'tabs\tand\nnewlines\n\n', 'Lily said, "Hi!" 123', 'café 中文 🙂', 'x', '',
  ];
  for (const text of texts) {
    const ids = ref.encode(text);
    assert.deepEqual(hf.encode(text), ids, JSON.stringify(text));
    assert.equal(hf.decode(ids.slice(1), ids.slice(0, 1)), ref.decode(ids.slice(1), ids.slice(0, 1)), JSON.stringify(text));
  }
});

test('bf16 and fp16 checkpoints convert: weights widened exactly, text still the model\'s', async (t) => {
  const src = requireShared(t, 'models', 'stories260K');
  if (!src) return;
  const dir = tempDir(t);
  exportSharedModelToHf('stories260K', join(dir, 'hf-F32'));
  const f32 = SafetensorsFile.open(join(dir, 'hf-F32', 'model.safetensors'));
  t.after(() => f32.close());
  const round = { BF16: (x: Float32Array) => bf16ToFloat32(float32ToBf16(x)), F16: (x: Float32Array) => f16ToFloat32(float32ToF16(x)) };
  for (const dtype of ['BF16', 'F16'] as const) {
    const hf = join(dir, `hf-${dtype}`);
    exportSharedModelToHf('stories260K', hf, { dtype });
    const file = SafetensorsFile.open(join(hf, 'model.safetensors'));
    for (const name of file.tensors.keys()) {
      assert.equal(file.tensors.get(name)!.dtype, dtype);
      assert.deepEqual(file.readFloat32(name), round[dtype](f32.readFloat32(name)), name);
    }
    file.close();
    const cfg = convertHf({ dir: hf, out: join(dir, `m-${dtype}`) });
    assert.deepEqual(cfg.source.weight_dtypes, [dtype]);
    const engine = await Engine.load(join(dir, `m-${dtype}`), { threads: 1, maxSequences: 1 });
    const ids = engine.tokenizer.encode('Once upon a time');
    const r = await generate(engine, ids, { temperature: 0, topK: 0, topP: 1, maxTokens: 30 });
    assert.match(engine.tokenizer.decode(r.ids, ids), /^[ ,.a-zA-Z\n'"!?]+$/);
  }
});

/** Asserts that `fn` throws a ModelLoadError matching `pattern` and that `out` does not exist afterwards. */
function refuses(out: string, pattern: RegExp, fn: () => unknown): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ModelLoadError, `expected a ModelLoadError, got ${String(err)}`);
    assert.match((err as Error).message, pattern);
    return true;
  });
  assert.equal(existsSync(out), false, `${out} was left behind`);
  const parent = join(out, '..');
  assert.deepEqual(readdirSync(parent).filter((n) => n.includes('.partial-')), [], 'a temporary directory was left behind');
}

test('malformed HF folders: each a clear error, no output directory left behind', (t) => {
  const src = requireShared(t, 'models', 'stories260K');
  if (!src) return;
  const dir = tempDir(t);
  const fresh = (label: string, opts: Parameters<typeof exportSharedModelToHf>[2] = {}) => {
    const d = join(dir, label);
    exportSharedModelToHf('stories260K', d, opts);
    return d;
  };
  mkdirSync(join(dir, 'out'));
  const out = join(dir, 'out', 'model');
  const config = (d: string) => JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
  const setConfig = (d: string, c: unknown) => writeFileSync(join(d, 'config.json'), JSON.stringify(c));

  // A truncated safetensors file.
  let d = fresh('truncated');
  const st = readFileSync(join(d, 'model.safetensors'));
  writeFileSync(join(d, 'model.safetensors'), st.subarray(0, st.length - 100));
  refuses(out, /model\.safetensors is not a valid safetensors file: .*truncated/, () => convertHf({ dir: d, out }));

  // A header that lies about offsets, and one that lies about the dtype.
  const rewriteHeader = (d: string, edit: (h: Record<string, any>) => void) => {
    const buf = readFileSync(join(d, 'model.safetensors'));
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString());
    edit(header);
    const json = Buffer.from(JSON.stringify(header).padEnd(n, ' '));
    assert.equal(json.length, n, 'test: the edited header must keep its length');
    writeFileSync(join(d, 'model.safetensors'), Buffer.concat([buf.subarray(0, 8), json, buf.subarray(8 + n)]));
  };
  d = fresh('offsets');
  rewriteHeader(d, (h) => { const o = h['model.norm.weight'].data_offsets; h['model.norm.weight'].data_offsets = [o[0] - 4, o[1] - 4]; });
  refuses(out, /model\.norm\.weight starts at data byte \d+, expected \d+/, () => convertHf({ dir: d, out }));
  d = fresh('dtype');
  rewriteHeader(d, (h) => { h['model.norm.weight'].dtype = 'F16'; });
  refuses(out, /model\.norm\.weight: data_offsets \[\d+, \d+\] span 256 bytes, but F16 \[64\] needs 128/, () => convertHf({ dir: d, out }));
  d = fresh('int-dtype');
  rewriteHeader(d, (h) => { h['model.norm.weight'].dtype = 'I32'; });
  refuses(out, /model\.norm\.weight has dtype I32/, () => convertHf({ dir: d, out }));

  // A missing shard.
  d = fresh('shard', { shards: 2 });
  rmSync(join(d, 'model-00002-of-00002.safetensors'));
  refuses(out, /shard model-00002-of-00002\.safetensors listed in .*index\.json is missing/, () => convertHf({ dir: d, out }));

  // An unsupported architecture, a missing required field, an unknown tensor, a missing tensor.
  d = fresh('arch');
  setConfig(d, { ...config(d), architectures: ['GPT2LMHeadModel'], model_type: 'gpt2' });
  refuses(out, /unsupported architecture GPT2LMHeadModel \(pdserve converts LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM\)/, () => convertHf({ dir: d, out }));
  d = fresh('field');
  const { hidden_size: _drop, ...noHidden } = config(d);
  setConfig(d, noHidden);
  refuses(out, /config\.json: required field hidden_size is missing/, () => convertHf({ dir: d, out }));
  d = fresh('scaling');
  setConfig(d, { ...config(d), rope_scaling: { rope_type: 'yarn', factor: 4 } });
  refuses(out, /rope_scaling type "yarn" is not supported/, () => convertHf({ dir: d, out }));
  d = fresh('unknown-tensor');
  setConfig(d, { ...config(d), num_hidden_layers: 4 });
  refuses(out, /unexpected tensors for LlamaForCausalLM: model\.layers\.4\./, () => convertHf({ dir: d, out }));
  d = fresh('missing-tensor');
  setConfig(d, { ...config(d), num_hidden_layers: 6 });
  refuses(out, /tensor model\.layers\.5\.input_layernorm\.weight is missing/, () => convertHf({ dir: d, out }));
  d = fresh('shape');
  setConfig(d, { ...config(d), intermediate_size: 100 });
  refuses(out, /mlp\.gate_proj\.weight has shape \[172,64\], config\.json implies \[100,64\]/, () => convertHf({ dir: d, out }));
  d = fresh('no-tokenizer');
  rmSync(join(d, 'tokenizer.json'));
  refuses(out, /tokenizer\.json is missing/, () => convertHf({ dir: d, out }));
});

test('a failed conversion leaves an existing model directory as it was', (t) => {
  const src = requireShared(t, 'models', 'stories260K');
  if (!src) return;
  const dir = tempDir(t);
  const out = join(dir, 'model');
  convertLlama2c({ checkpoint: join(src, 'stories260K.bin'), tokenizer: join(src, 'tok512.bin'), out });
  const before = readFileSync(join(out, 'config.json'), 'utf8');
  const hf = join(dir, 'hf');
  exportSharedModelToHf('stories260K', hf);
  writeFileSync(join(hf, 'config.json'), '{"architectures": ["LlamaForCausalLM"]}');
  assert.throws(() => convertHf({ dir: hf, out }), /required field hidden_size/);
  assert.equal(readFileSync(join(out, 'config.json'), 'utf8'), before);
  // A conversion that succeeds replaces the model directory whole: no llama2.c file is left over.
  exportSharedModelToHf('stories260K', join(dir, 'hf-good'));
  convertHf({ dir: join(dir, 'hf-good'), out });
  assert.deepEqual(readdirSync(out).sort(), ['config.json', 'generation_config.json', 'model.onnx', 'model.onnx.data', 'tokenizer.json', 'tokenizer_config.json']);
  assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith('.')), []);
  // Not a model directory: refused rather than replaced.
  const other = join(dir, 'other');
  exportSharedModelToHf('stories260K', other);
  rmSync(join(other, 'config.json'));
  assert.throws(() => convertLlama2c({ checkpoint: join(src, 'stories260K.bin'), tokenizer: join(src, 'tok512.bin'), out: other }), /not a model directory: refusing to replace it/);
});

/** Rewrites a folder's model.safetensors with extra tensors (F32). */
function addTensors(dir: string, extra: Array<{ name: string; shape: number[]; data: Float32Array }>): void {
  const path = join(dir, 'model.safetensors');
  const f = SafetensorsFile.open(path);
  const tensors = [...f.tensors.values()].map((i) => ({ name: i.name, shape: i.shape, data: f.readFloat32(i.name), dtype: 'F32' as const }));
  f.close();
  writeSafetensors(path, [...tensors, ...extra.map((e) => ({ ...e, dtype: 'F32' as const }))]);
}

test('Qwen2: q/k/v biases are read and added; Mistral: the context stops at the sliding window', async (t) => {
  const src = requireShared(t, 'models', 'stories260K');
  const goldenPath = requireShared(t, 'golden', 'stories260K.once-upon-a-time.json');
  if (!src || !goldenPath) return;
  const golden = JSON.parse(readFileSync(goldenPath, 'utf8'));
  const dir = tempDir(t);
  const greedy = async (model: string) => {
    const engine = await Engine.load(model, { threads: 1, maxSequences: 1 });
    return (await generate(engine, golden.prompt_ids, { temperature: 0, topK: 0, topP: 1, maxTokens: 60 })).ids;
  };
  const asQwen2 = (label: string, bias: (layer: number, which: 'q' | 'k' | 'v', n: number) => Float32Array) => {
    const d = join(dir, label);
    exportSharedModelToHf('stories260K', d);
    const c = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
    writeFileSync(join(d, 'config.json'), JSON.stringify({ ...c, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', use_sliding_window: false, sliding_window: 64 }));
    const extra = [];
    for (let l = 0; l < c.num_hidden_layers; l++) {
      for (const [which, n] of [['q', 64], ['k', 32], ['v', 32]] as const) extra.push({ name: `model.layers.${l}.self_attn.${which}_proj.bias`, shape: [n], data: bias(l, which, n) });
    }
    addTensors(d, extra);
    return d;
  };
  // Zero biases: the graph with its bias Adds still gives run.c's tokens.
  const zero = asQwen2('qwen2-zero', (_l, _w, n) => new Float32Array(n));
  const cfg = convertHf({ dir: zero, out: join(dir, 'm-zero') });
  assert.equal(cfg.source.architecture, 'Qwen2ForCausalLM');
  assert.equal(cfg.max_seq_len, 512, 'use_sliding_window false: no cap');
  assert.deepEqual(await greedy(join(dir, 'm-zero')), golden.generated_ids.slice(0, 60));
  // A value bias changes the output: the biases are used, not dropped.
  const vbias = asQwen2('qwen2-v', (l, w, n) => new Float32Array(n).fill(w === 'v' && l === 0 ? 0.5 : 0));
  convertHf({ dir: vbias, out: join(dir, 'm-v') });
  assert.notDeepEqual(await greedy(join(dir, 'm-v')), golden.generated_ids.slice(0, 60));
  // Qwen2 without biases is an incomplete checkpoint.
  const nobias = join(dir, 'qwen2-nobias');
  exportSharedModelToHf('stories260K', nobias);
  const c = JSON.parse(readFileSync(join(nobias, 'config.json'), 'utf8'));
  writeFileSync(join(nobias, 'config.json'), JSON.stringify({ ...c, architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2' }));
  assert.throws(() => convertHf({ dir: nobias, out: join(dir, 'm-nobias') }), /tensor model\.layers\.0\.self_attn\.q_proj\.bias is missing/);

  // Mistral: within its sliding window attention is full, so the model is built for that context.
  const mistral = join(dir, 'mistral');
  exportSharedModelToHf('stories260K', mistral);
  writeFileSync(join(mistral, 'config.json'), JSON.stringify({ ...c, architectures: ['MistralForCausalLM'], model_type: 'mistral', sliding_window: 128 }));
  const m = convertHf({ dir: mistral, out: join(dir, 'm-mistral') });
  assert.equal(m.max_seq_len, 128);
  assert.match(String(m.source.note), /sliding window of 128/);
  assert.deepEqual(await greedy(join(dir, 'm-mistral')), golden.generated_ids.slice(0, 60));
});

test('rope_scaling llama3: high frequencies kept, low ones divided by the factor, a ramp between', () => {
  const base = { head_dim: 64, rope_theta: 500000 };
  const plain = ropeFrequencies({ ...base, rope_scaling: null });
  const scaling = parseHfConfig({
    architectures: ['LlamaForCausalLM'], hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32,
    num_key_value_heads: 8, vocab_size: 128256, max_position_embeddings: 131072,
    rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  }, 'config.json').ropeScaling;
  assert.deepEqual(scaling, { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 });
  const scaled = ropeFrequencies({ ...base, rope_scaling: scaling });
  let ramp = 0;
  for (let i = 0; i < 32; i++) {
    const wavelen = (2 * Math.PI) / plain[i];
    if (wavelen < 8192 / 4) assert.equal(scaled[i], plain[i], `high frequency ${i}`);
    else if (wavelen > 8192) assert.equal(scaled[i], Math.fround(plain[i] / 32), `low frequency ${i}`);
    else {
      ramp++;
      assert.ok(scaled[i] < plain[i] && scaled[i] > plain[i] / 32, `ramp ${i}`);
    }
  }
  assert.ok(ramp > 0 && scaled[0] === plain[0] && scaled[31] === Math.fround(plain[31] / 32));
  const linear = ropeFrequencies({ ...base, rope_scaling: { rope_type: 'linear', factor: 2 } });
  assert.equal(linear[5], Math.fround(plain[5] / 2));
});

test('--dtype q8 applies to Hugging Face folders: recorded, and greedy text stays the model\'s', async (t) => {
  const src = requireShared(t, 'models', 'stories260K');
  const goldenPath = requireShared(t, 'golden', 'stories260K.once-upon-a-time.json');
  if (!src || !goldenPath) return;
  const golden = JSON.parse(readFileSync(goldenPath, 'utf8'));
  const dir = tempDir(t);
  exportSharedModelToHf('stories260K', join(dir, 'hf'), { dtype: 'BF16' });
  const cfg = convertHf({ dir: join(dir, 'hf'), out: join(dir, 'q8'), dtype: 'q8' });
  assert.equal(cfg.dtype, 'q8');
  assert.equal(cfg.rope_layout, 'rotate-half');
  const engine = await Engine.load(join(dir, 'q8'), { threads: 1, maxSequences: 1 });
  const r = await generate(engine, golden.prompt_ids, { temperature: 0, topK: 0, topP: 1, maxTokens: 20 });
  // bf16 storage then int8 blocks: on this machine the first 60+ tokens still equal fp32's; 20 leaves margin.
  assert.deepEqual(r.ids, golden.generated_ids.slice(0, 20));
});
