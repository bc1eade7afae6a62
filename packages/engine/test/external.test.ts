// Third-party ONNX decoder exports: tiny-random-gpt2 (stacked past_N) loads through Engine.load,
// and its KV-cache path generates exactly what full recomputation does, across engines too; the
// optimum naming (past_key_values.N.key) is checked on a toy graph built here.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { argmax, blockOffset, blocksFor, Engine, generate, ModelLoadError } from '../src/index.ts';
import { describeExternalModel, loadExternalModel, type GraphSignature } from '../src/model/external.ts';
import { GraphBuilder } from '../src/onnx/graph-builder.ts';
import { DataType } from '../src/onnx/onnx-proto.ts';
import { createSession, ort } from '../src/runtime/session.ts';
import { requireShared } from '../../../test/support/shared.ts';

const greedy = { temperature: 0, topK: 0, topP: 1 };
const PROMPT = [98, 5, 17, 300];
const STEPS = 20; // prompt + STEPS > 16 positions: a sequence's store grows on the way

test('tiny-random-gpt2: detected as stacked past_N, 5 layers x 4 heads x 8, vocab 1000, context 512', async (t) => {
  const dir = requireShared(t, 'models', 'tiny-random-gpt2');
  if (!dir) return;
  const { model, session } = await loadExternalModel(dir, { threads: 1 });
  t.after(() => session.release());
  const { config, io } = model;
  assert.equal(io.convention, 'stacked-past');
  assert.equal(config.onnx.io, 'stacked-past');
  assert.equal(config.onnx.file, 'past.onnx');
  assert.deepEqual([config.n_layers, config.n_kv_heads, config.head_dim, config.vocab_size, config.max_seq_len], [5, 4, 8, 1000, 512]);
  assert.deepEqual(io.layers.map((l) => [l.past, l.present]), [0, 1, 2, 3, 4].map((l) => [[`past_${l}`], [`present_${l}`]]));
  assert.deepEqual(io.inputIds, { name: 'input_ids', type: 'int32' });
  assert.deepEqual(io.attentionMask, { name: 'attention_mask', type: 'int32' });
  assert.deepEqual(io.positionIds, { name: 'position_ids', type: 'int32' });
  assert.equal(io.useCacheBranch, null);
  assert.deepEqual(config.generation.eos_token_ids, [98]);
  assert.equal(config.tokenizer.kind, 'hf');
  assert.equal(config.source.kind, 'external');
});

/** One run of `ids` from position 0 with an empty past, straight on ONNX Runtime. */
async function runFull(session: Awaited<ReturnType<typeof createSession>>, ids: number[]) {
  const n = ids.length;
  const feeds: Record<string, InstanceType<typeof ort.Tensor>> = {
    input_ids: new ort.Tensor('int32', Int32Array.from(ids), [1, n]),
    position_ids: new ort.Tensor('int32', Int32Array.from(ids.keys()), [1, n]),
    attention_mask: new ort.Tensor('int32', new Int32Array(n).fill(1), [1, n]),
  };
  for (let l = 0; l < 5; l++) feeds[`past_${l}`] = new ort.Tensor('float32', new Float32Array(0), [2, 1, 4, 0, 8]);
  return session.run(feeds);
}

/** Greedy ids by running the whole sequence through the graph each step (no KV cache). */
async function recompute(dir: string, prompt: number[], steps: number): Promise<number[]> {
  const session = await createSession(join(dir, 'past.onnx'), { threads: 1 });
  try {
    const seq = [...prompt];
    for (let step = 0; step < steps; step++) {
      const logits = (await runFull(session, seq)).logits.data as Float32Array;
      seq.push(argmax(logits.subarray((seq.length - 1) * 1000, seq.length * 1000)));
    }
    return seq.slice(prompt.length);
  } finally {
    await session.release();
  }
}

/** present_0..4 ([2, 1, 4, n, 8]) of the prompt run at once. */
async function presentOf(dir: string, prompt: number[]): Promise<Float32Array[]> {
  const session = await createSession(join(dir, 'past.onnx'), { threads: 1 });
  try {
    const out = await runFull(session, prompt);
    return [0, 1, 2, 3, 4].map((l) => out[`present_${l}`].data as Float32Array);
  } finally {
    await session.release();
  }
}

test('tiny-random-gpt2: greedy generation with the KV cache equals full recomputation', async (t) => {
  const dir = requireShared(t, 'models', 'tiny-random-gpt2');
  if (!dir) return;
  const expected = await recompute(dir, PROMPT, STEPS);
  const whole = await Engine.load(dir, { threads: 1, maxSequences: 2 });
  const chunked = await Engine.load(dir, { threads: 1, maxSequences: 2, prefillChunk: 3 });
  const a = await generate(whole, PROMPT, { ...greedy, maxTokens: STEPS, stopTokenIds: [] });
  const b = await generate(chunked, PROMPT, { ...greedy, maxTokens: STEPS, stopTokenIds: [] });
  assert.deepEqual(a.ids, expected);
  assert.deepEqual(b.ids, expected);
  assert.deepEqual((await generate(whole, PROMPT, { ...greedy, maxTokens: STEPS, stopTokenIds: [] })).ids, expected, 'deterministic');
  assert.equal(whole.runner.capacity().freeSequences, 2, 'generate releases its sequence');
});

test('tiny-random-gpt2: prefill on one engine, blocks into another, decode there = one generation; batched decode = alone', async (t) => {
  const dir = requireShared(t, 'models', 'tiny-random-gpt2');
  if (!dir) return;
  const B = 4;
  const prefill = await Engine.load(dir, { threads: 1, blockTokens: B, maxSequences: 2 });
  const decode = await Engine.load(dir, { threads: 1, blockTokens: B, maxSequences: 2 });
  const prompt = [98, 5, 17, 300, 42, 7, 611]; // 7 tokens: the last block is partly filled
  const whole = await generate(prefill, prompt, { ...greedy, maxTokens: STEPS, stopTokenIds: [] });

  const a = prefill.newSequence('a');
  const first = argmax((await prefill.prefill(a, prompt)).subarray(0, prefill.vocabSize));
  const count = blocksFor(a.length, B);
  const data = prefill.runner.readBlocks(a, 0, count);
  assert.equal(data.byteLength, count * prefill.runner.blockBytes);
  const tokens = a.length;
  prefill.release(a);
  // The blocks are in the canonical layout (kv/layout.ts), checked against the graph's own present_N.
  const shape = prefill.runner.kvShape;
  const presents = await presentOf(dir, prompt);
  const canonical = new Float32Array(data.byteLength / 4);
  for (let l = 0; l < 5; l++) {
    for (let kind = 0; kind < 2; kind++) {
      for (let h = 0; h < 4; h++) {
        for (let p = 0; p < prompt.length; p++) {
          const at = Math.floor(p / B) * (prefill.runner.blockBytes / 4) + blockOffset(shape, l, kind as 0 | 1, h) + (p % B) * 8;
          const from = ((kind * 4 + h) * prompt.length + p) * 8;
          canonical.set(presents[l].subarray(from, from + 8), at);
        }
      }
    }
  }
  const got = new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4);
  assert.ok(got.every((x, i) => Math.abs(x - canonical[i]) < 1e-5), 'blocks hold present_N in the pdserve-kv/1 layout');

  const other = decode.newSequence('other'); // so the transferred sequence does not sit in slot 0
  const otherIds = [argmax((await decode.prefill(other, [1, 2, 3])).subarray(0, 1000))];
  const b = decode.newSequence('b');
  decode.runner.writeBlocks(b, 0, data, tokens);
  assert.deepEqual(decode.runner.readBlocks(b, 0, count), data, 'blocks round-trip');
  const ids = [first];
  while (ids.length < STEPS) {
    // One decode call for both sequences: items run one at a time and must not mix their caches.
    const l = await decode.decode([{ seq: b, token: ids[ids.length - 1] }, { seq: other, token: otherIds[otherIds.length - 1] }]);
    ids.push(argmax(l.subarray(0, 1000)));
    otherIds.push(argmax(l.subarray(1000, 2000)));
  }
  assert.deepEqual(ids, whole.ids);
  const alone = await generate(prefill, [1, 2, 3], { ...greedy, maxTokens: STEPS, stopTokenIds: [] });
  assert.deepEqual(otherIds, alone.ids);
});

test('tiny-random-gpt2: a prompt id outside the model vocabulary is rejected naming the vocab size', async (t) => {
  const dir = requireShared(t, 'models', 'tiny-random-gpt2');
  if (!dir) return;
  const engine = await Engine.load(dir, { threads: 1, maxSequences: 1 });
  await assert.rejects(generate(engine, [98, 1000], { ...greedy, maxTokens: 3 }), /token id 1000 at position 1 .*vocabulary of 1000 ids/);
  await assert.rejects(generate(engine, [98, -1], { ...greedy, maxTokens: 3 }), /vocabulary of 1000/);
  assert.equal(engine.runner.capacity().freeSequences, 1);
  const seq = engine.newSequence('s');
  await assert.rejects(engine.prefill(seq, [31373]), /tokenizer knows \d+ ids but the model only 1000/);
  assert.equal(seq.length, 0);
});

// --- The optimum / transformers.js naming on a toy graph ---------------------------------------

const V = 16;
const D = 4;

/** Seeded values in [-1, 1). */
function values(count: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: count }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32) * 2 - 1;
  });
}

const E = values(V * D, 1); // key embedding
const F = values(V * D, 2); // value embedding
const W = values(D * V, 3);
const C = values(V, 4); // times the attention_mask sum

/**
 * One layer, one KV head of size D: present.0.key = Concat(past key, E[ids]), present.0.value =
 * Concat(past value, F[ids]), and logits = (E[id] + sum of all keys + 0.5 * sum of all values) W
 * + sum(attention_mask) C. The last row depends on every cached position, so a lost, swapped or
 * misplaced past changes the greedy ids.
 */
function buildToy(dir: string): void {
  const g = new GraphBuilder(join(dir, 'model.onnx.data'));
  const ids = g.input('input_ids', DataType.INT64, ['batch', 'seq']);
  const mask = g.input('attention_mask', DataType.INT64, ['batch', 'total']);
  const pastK = g.input('past_key_values.0.key', DataType.FLOAT, ['batch', 1, 'past', D]);
  const pastV = g.input('past_key_values.0.value', DataType.FLOAT, ['batch', 1, 'past', D]);
  const emb = g.node('Gather', [g.weight('E', E, [V, D]), ids], 1, { axis: 0 })[0]; // [B, S, D]
  const embV = g.node('Gather', [g.weight('F', F, [V, D]), ids], 1, { axis: 0 })[0];
  const axis1 = g.constInt64([1]);
  g.node('Concat', [pastK, g.node('Unsqueeze', [emb, axis1])[0]], ['present.0.key'], { axis: 2 });
  g.node('Concat', [pastV, g.node('Unsqueeze', [embV, axis1])[0]], ['present.0.value'], { axis: 2 });
  const sum = (x: string) => g.node('Reshape', [g.node('ReduceSum', [x, g.constInt64([1, 2])], 1, { keepdims: 1 })[0], g.constInt64([0, 1, D])])[0];
  const h = g.node('Add', [g.node('Add', [emb, sum('present.0.key')])[0], g.node('Mul', [sum('present.0.value'), g.constFloat([0.5])])[0]])[0];
  const logits = g.node('MatMul', [h, g.weight('W', W, [D, V])])[0];
  const maskSum = g.node('Cast', [g.node('ReduceSum', [mask, axis1], 1, { keepdims: 1 })[0]], 1, { to: DataType.FLOAT })[0]; // [B, 1]
  const maskTerm = g.node('Mul', [g.node('Unsqueeze', [maskSum, g.constInt64([2])])[0], g.weight('C', C, [V])])[0]; // [B, 1, V]
  g.node('Add', [logits, maskTerm], ['logits']);
  g.output('logits', DataType.FLOAT, ['batch', 'seq', V]);
  g.output('present.0.key', DataType.FLOAT, ['batch', 1, 'total', D]);
  g.output('present.0.value', DataType.FLOAT, ['batch', 1, 'total', D]);
  g.save(join(dir, 'model.onnx'), { '': 17 });
  writeFileSync(join(dir, 'config.json'), JSON.stringify({
    model_type: 'toy', num_hidden_layers: 1, num_attention_heads: 1, hidden_size: D, max_position_embeddings: 64, vocab_size: V, eos_token_id: 15,
  }));
  const vocab = Object.fromEntries(Array.from({ length: V }, (_, i) => [`w${i}`, i]));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'Whitespace' }, post_processor: null, decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: 'w0' },
  }));
}

/** The toy's greedy ids in plain arithmetic; `cached: false` forgets the past (what a broken KV path would do). */
function toyReference(prompt: number[], steps: number, cached = true): number[] {
  const seq = [...prompt];
  const out: number[] = [];
  let fed = 0; // tokens whose keys/values a no-cache runner would still see: the last call's
  for (let step = 0; step < steps; step++) {
    const visible = cached ? seq : seq.slice(fed);
    const last = seq[seq.length - 1];
    const h = Array.from({ length: D }, (_, d) => E[last * D + d] + visible.reduce((a, t) => a + E[t * D + d] + 0.5 * F[t * D + d], 0));
    const logits = Array.from({ length: V }, (_, v) => h.reduce((a, x, d) => a + x * W[d * V + v], 0) + seq.length * C[v]);
    const next = logits.indexOf(Math.max(...logits));
    fed = seq.length;
    out.push(next);
    seq.push(next);
  }
  return out;
}

test('optimum naming (past_key_values.N.key -> present.N.key): detected, and generation uses the whole past', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-ext-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  buildToy(dir);
  const engine = await Engine.load(dir, { threads: 1, maxSequences: 2, prefillChunk: 2, blockTokens: 4 });
  assert.equal(engine.config.onnx.io, 'hf-past-key-values');
  assert.deepEqual([engine.config.n_layers, engine.config.n_kv_heads, engine.config.head_dim, engine.config.vocab_size, engine.config.max_seq_len], [1, 1, D, V, 64]);
  assert.deepEqual(engine.config.generation.eos_token_ids, [15]);
  const io = (engine.runner as unknown as { io: import('../src/model/external.ts').ExternalIo }).io;
  assert.deepEqual(io.layers, [{ past: ['past_key_values.0.key', 'past_key_values.0.value'], present: ['present.0.key', 'present.0.value'] }]);
  assert.deepEqual(io.attentionMask, { name: 'attention_mask', type: 'int64' });
  assert.equal(io.positionIds, null);

  const prompt = engine.tokenizer.encode('w3 w9 w1 w12 w7');
  assert.deepEqual(prompt, [3, 9, 1, 12, 7]);
  const expected = toyReference(prompt, 10);
  assert.notDeepEqual(expected, toyReference(prompt, 10, false), 'the toy notices a lost past');
  const got = await generate(engine, prompt, { ...greedy, maxTokens: 10, stopTokenIds: [] });
  assert.deepEqual(got.ids, expected);
});

function signature(inputs: Array<[string, string, Array<number | string>]>, outputs: Array<[string, string, Array<number | string>]>): GraphSignature {
  const meta = (list: typeof inputs) => list.map(([name, type, shape]) => ({ name, isTensor: true as const, type, shape }));
  return {
    inputNames: inputs.map((i) => i[0]), outputNames: outputs.map((o) => o[0]),
    inputMetadata: meta(inputs), outputMetadata: meta(outputs),
  } as unknown as GraphSignature;
}

test('unsupported exports fail naming the file and what was found', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-ext-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ num_attention_heads: 2, hidden_size: 8, max_position_embeddings: 32, vocab_size: 10 }));
  const ids: [string, string, Array<number | string>] = ['input_ids', 'int64', ['b', 's']];
  const logits: [string, string, Array<number | string>] = ['logits', 'float32', ['b', 's', 10]];
  assert.throws(
    () => describeExternalModel(dir, 'decoder_model.onnx', signature([ids], [logits])),
    (err: unknown) => err instanceof ModelLoadError && err.message.includes(join(dir, 'decoder_model.onnx')) && /no KV-cache inputs/.test(err.message) && /inputs: input_ids/.test(err.message),
  );
  const half = signature(
    [ids, ['past_key_values.0.key', 'float16', ['b', 2, 'p', 4]], ['past_key_values.0.value', 'float16', ['b', 2, 'p', 4]]],
    [logits, ['present.0.key', 'float16', ['b', 2, 't', 4]], ['present.0.value', 'float16', ['b', 2, 't', 4]]],
  );
  assert.throws(() => describeExternalModel(dir, 'model.onnx', half), /past_key_values\.0\.key is float16; only float32/);
  const extra = signature(
    [ids, ['token_type_ids', 'int64', ['b', 's']], ['past_key_values.0.key', 'float32', ['b', 2, 'p', 4]], ['past_key_values.0.value', 'float32', ['b', 2, 'p', 4]]],
    [logits, ['present.0.key', 'float32', ['b', 2, 't', 4]], ['present.0.value', 'float32', ['b', 2, 't', 4]]],
  );
  assert.throws(() => describeExternalModel(dir, 'model.onnx', extra), /unsupported input token_type_ids/);
  const wrongHeads = signature(
    [ids, ['past_key_values.0.key', 'float32', ['b', 3, 'p', 4]], ['past_key_values.0.value', 'float32', ['b', 3, 'p', 4]]],
    [logits, ['present.0.key', 'float32', ['b', 3, 't', 4]], ['present.0.value', 'float32', ['b', 3, 't', 4]]],
  );
  assert.throws(() => describeExternalModel(dir, 'model.onnx', wrongHeads), /2 attention heads are not a multiple of 3 KV heads/);
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ num_hidden_layers: 2, num_attention_heads: 2, hidden_size: 8, max_position_embeddings: 32, vocab_size: 10 }));
  const oneLayer = signature(
    [ids, ['past_key_values.0.key', 'float32', ['b', 2, 'p', 4]], ['past_key_values.0.value', 'float32', ['b', 2, 'p', 4]]],
    [logits, ['present.0.key', 'float32', ['b', 2, 't', 4]], ['present.0.value', 'float32', ['b', 2, 't', 4]]],
  );
  assert.throws(() => describeExternalModel(dir, 'model.onnx', oneLayer), /the number of layers is 1 in .*model\.onnx but 2 in .*config\.json/);
});

test('a folder with neither a pdserve config nor an ONNX decoder says so', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-ext-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await assert.rejects(Engine.load(dir), /neither a pdserve model directory .* nor an ONNX decoder export/);
});
