import { test } from 'node:test';
import assert from 'node:assert/strict';
import { requireShared } from '../../../test/support/shared.ts';
import { HfTokenizer, loadHfTokenizer } from '../src/tokenizer/hf.ts';
import { TokenizerLoadError } from '../src/tokenizer/types.ts';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const GPT2_DIR = ['models', 'tiny-random-gpt2'] as const;

/** Feeds ids one at a time; returns the deltas and the flushed rest. */
function stream(tok: HfTokenizer, ids: number[], context?: number[]): { deltas: string[]; rest: string } {
  const dec = tok.createStreamDecoder(context);
  const deltas = ids.map((id) => dec.push(id));
  return { deltas, rest: dec.flush() };
}

test('tiny-random-gpt2: ids, BOS/EOS and special tokens', (t) => {
  const dir = requireShared(t, ...GPT2_DIR);
  if (dir === undefined) return;
  const tok = loadHfTokenizer(dir);
  assert.equal(tok.vocabSize, 50295); // 50257 pieces + 38 added whitespace tokens
  assert.equal(tok.bosId, 50256);
  assert.deepEqual(tok.eosIds, [50256]);
  assert.equal(tok.bosToken, '<|endoftext|>');
  assert.equal(tok.chatTemplate, undefined);
  assert.deepEqual(tok.encode('Hello world'), [15496, 995]);
  // GPT-2's post-processor adds no special tokens, so addBos changes nothing here.
  assert.deepEqual(tok.encode('Hello world', { addBos: false }), [15496, 995]);
  assert.deepEqual(tok.encode('Hello world<|endoftext|>'), [15496, 995, 50256]);
  assert.equal(tok.idToToken(995), 'Ġworld');
  // Special tokens are skipped when decoding.
  assert.equal(tok.decode([15496, 50256, 995]), 'Hello world');
});

test('tiny-random-gpt2: decode round-trips text without "clean up" rewrites', (t) => {
  const dir = requireShared(t, ...GPT2_DIR);
  if (dir === undefined) return;
  const tok = loadHfTokenizer(dir);
  for (const text of ['Hello . world , it \'s', 'héllo 😀 wörld 中文 🦄🦄', '  two  spaces\n\ttab', '\uFEFFbom']) {
    const ids = tok.encode(text);
    assert.equal(tok.decode(ids), text);
    const { deltas, rest } = stream(tok, ids);
    assert.equal(deltas.join('') + rest, text);
    assert.ok(deltas.every((d) => !d.includes('\uFFFD')), `no U+FFFD in ${JSON.stringify(deltas)}`);
  }
});

test('tiny-random-gpt2: byte-level BPE characters split across tokens come out whole', (t) => {
  const dir = requireShared(t, ...GPT2_DIR);
  if (dir === undefined) return;
  const tok = loadHfTokenizer(dir);
  const ids = tok.encode('a😀');
  assert.ok(ids.length >= 3, `😀 spans several byte-level tokens: ${ids}`);
  const { deltas, rest } = stream(tok, ids);
  assert.equal(deltas[0], 'a');
  assert.ok(deltas.slice(1, -1).every((d) => d === ''));
  assert.equal(deltas[deltas.length - 1], '😀');
  assert.equal(rest, '');
  // A character cut off at the end comes out as U+FFFD on flush.
  const cut = stream(tok, ids.slice(0, -1));
  assert.equal(cut.deltas.join(''), 'a');
  assert.equal(cut.rest, '\uFFFD');
  // Bytes that never form a character do not stall the stream forever.
  const junk = tok.tokenToId('Ģ'); // byte 0x80 in GPT-2's byte-to-unicode map: a lone continuation byte
  assert.ok(junk !== undefined);
  const junkIds = Array<number>(20).fill(junk);
  const held = stream(tok, junkIds);
  assert.deepEqual(held.deltas.slice(0, 8), Array(8).fill(''));
  assert.equal(held.deltas[8], '\uFFFD'.repeat(9));
  assert.equal(held.deltas.join('') + held.rest, '\uFFFD'.repeat(20));
  assert.throws(() => tok.decode([50295]), RangeError);
});

test('tiny-random-gpt2: continuation after a prompt', (t) => {
  const dir = requireShared(t, ...GPT2_DIR);
  if (dir === undefined) return;
  const tok = loadHfTokenizer(dir);
  const prompt = tok.encode('The cat');
  const gen = tok.encode(' sat on the mat 中');
  assert.equal(tok.decode(gen, prompt), ' sat on the mat 中');
  const { deltas, rest } = stream(tok, gen, prompt);
  assert.equal(deltas.join('') + rest, ' sat on the mat 中');
});

/** A Llama-style SentencePiece BPE tokenizer.json: ▁ for spaces, byte fallback, <s> prepended. */
function sentencepieceJson(): Record<string, unknown> {
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  let next = 259;
  for (const p of ['▁', 'H', 'e', 'l', 'o', 'w', 'r', 'd', 'He', 'll', 'llo', 'Hello', '▁Hello', 'or', 'orl', 'orld', '▁w', '▁world']) {
    vocab[p] = next++;
  }
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }],
    },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE', unk_token: '<unk>', fuse_unk: true, byte_fallback: true, vocab,
      merges: ['H e', 'l l', 'll o', 'He llo', '▁ Hello', 'o r', 'or l', 'orl d', '▁ w', '▁w orld'],
    },
  };
}

test('sentencepiece-style: BOS added, leading spaces kept in continuations, byte fallback', () => {
  const tok = new HfTokenizer({
    tokenizerJson: sentencepieceJson(),
    tokenizerConfig: { bos_token: '<s>', eos_token: { content: '</s>', __type: 'AddedToken' }, chat_template: 'T' },
    generationConfig: { eos_token_id: [2, 5] },
  });
  assert.equal(tok.bosId, 1);
  assert.deepEqual(tok.eosIds, [2, 5]);
  assert.equal(tok.eosToken, '</s>');
  assert.equal(tok.chatTemplate, 'T');
  const hello = 271; // ▁Hello
  const world = 276; // ▁world
  assert.deepEqual(tok.encode('Hello world'), [1, hello, world]);
  assert.deepEqual(tok.encode('Hello world', { addBos: false }), [hello, world]);
  // At the start of a text the decoder drops the leading space; in a continuation it must not.
  assert.equal(tok.decode([hello, world]), 'Hello world');
  assert.equal(tok.decode([world]), 'world');
  assert.equal(tok.decode([world], [1, hello]), ' world');
  assert.deepEqual(stream(tok, [world, world], [hello]).deltas, [' world', ' world']);
  assert.deepEqual(stream(tok, [hello, world], [1]).deltas, ['Hello', ' world']);
  // é is not a piece: two byte tokens, emitted together.
  const ids = tok.encode('Hello é', { addBos: false });
  assert.deepEqual(ids.slice(-2), [3 + 0xc3, 3 + 0xa9]);
  const { deltas, rest } = stream(tok, ids.slice(1), ids.slice(0, 1));
  assert.deepEqual(deltas, [' ', '', 'é']);
  assert.equal(rest, '');
});

test('BOS/EOS fall back to config.json ids', () => {
  const tok = new HfTokenizer({ tokenizerJson: sentencepieceJson(), modelConfig: { bos_token_id: 1, eos_token_id: 2 } });
  assert.equal(tok.bosId, 1);
  assert.deepEqual(tok.eosIds, [2]);
  const none = new HfTokenizer({ tokenizerJson: sentencepieceJson() });
  assert.equal(none.bosId, null);
  assert.deepEqual(none.eosIds, []);
});

test('loadHfTokenizer: missing and corrupt files name the path; chat_template.jinja is read', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-hf-'));
  try {
    assert.throws(() => loadHfTokenizer(dir), (err: unknown) => err instanceof TokenizerLoadError && err.message.includes(join(dir, 'tokenizer.json')));
    writeFileSync(join(dir, 'tokenizer.json'), '{"model": ');
    assert.throws(() => loadHfTokenizer(dir), (err: unknown) => err instanceof TokenizerLoadError && /not valid JSON/.test(err.message));
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(sentencepieceJson()));
    writeFileSync(join(dir, 'tokenizer_config.json'), '[1, 2]');
    assert.throws(() => loadHfTokenizer(dir), (err: unknown) => err instanceof TokenizerLoadError && err.message.includes('tokenizer_config.json'));
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', chat_template: 'old' }));
    writeFileSync(join(dir, 'chat_template.jinja'), '{{ messages[0].content }}');
    const tok = loadHfTokenizer(dir);
    assert.equal(tok.bosId, 1);
    assert.equal(tok.chatTemplate, '{{ messages[0].content }}');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
