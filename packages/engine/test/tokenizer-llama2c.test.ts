import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { requireShared } from '../../../test/support/shared.ts';
import {
  Llama2cTokenizer,
  LLAMA2C_BOS_ID,
  incompleteTail,
  loadLlama2cTokenizer,
  parseLlama2cTokenizer,
} from '../src/tokenizer/llama2c.ts';
import { TokenizeError, TokenizerLoadError } from '../src/tokenizer/types.ts';

interface Golden {
  prompt: string;
  prompt_ids: number[];
  generated_ids: number[];
  stop: string;
  completion_text: string;
  run_c_stdout: string;
}

const MODELS = [
  { name: 'stories260K', tokenizer: 'tok512.bin', golden: 'stories260K.once-upon-a-time.json' },
  { name: 'babyllama105', tokenizer: 'tok105.bin', golden: 'babyllama105.once-upon-a-time.json' },
];

/** Writes a llama2.c tokenizer file in memory. */
function tokenizerFile(pieces: Array<string | Uint8Array>, scores: number[], maxLen = 16): Uint8Array {
  const bytes = pieces.map((p) => (typeof p === 'string' ? new TextEncoder().encode(p) : p));
  const size = 4 + bytes.reduce((n, b) => n + 8 + b.length, 0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setInt32(0, maxLen, true);
  let off = 4;
  bytes.forEach((b, i) => {
    view.setFloat32(off, scores[i], true);
    view.setInt32(off + 4, b.length, true);
    out.set(b, off + 8);
    off += 8 + b.length;
  });
  return out;
}

/** A tiny vocabulary: the three control pieces, then `rest` with the given scores. */
function tinyTokenizer(rest: Array<[string, number]>): Llama2cTokenizer {
  const pieces = ['<unk>', '\n<s>\n', '\n</s>\n', ...rest.map(([p]) => p)];
  const scores = [0, 0, 0, ...rest.map(([, s]) => s)];
  return new Llama2cTokenizer(parseLlama2cTokenizer(tokenizerFile(pieces, scores)));
}

/**
 * A line-by-line port of run.c's encode (quadratic rescans, first-match lookup), to check the
 * heap-based merge against. Pieces are binary strings.
 */
function referenceEncode(keys: string[], scores: Float32Array, text: string, bos: boolean): number[] {
  const lookup = new Map<string, number>();
  keys.forEach((k, i) => {
    if (!lookup.has(k)) lookup.set(k, i);
  });
  const str = (s: string): number => lookup.get(s) ?? -1;
  const tokens: number[] = [];
  if (bos) tokens.push(1);
  if (text !== '') tokens.push(str(' '));
  const bytes = new TextEncoder().encode(text);
  let buf: number[] = [];
  for (let c = 0; c < bytes.length; c++) {
    if ((bytes[c] & 0xc0) !== 0x80) buf = [];
    buf.push(bytes[c]);
    if (((bytes[c + 1] ?? 0) & 0xc0) === 0x80 && buf.length < 4) continue;
    const id = str(String.fromCharCode(...buf));
    if (id !== -1) tokens.push(id);
    else for (const b of buf) tokens.push(b + 3);
    buf = [];
  }
  for (;;) {
    let bestScore = -1e10;
    let bestId = -1;
    let bestIdx = -1;
    for (let i = 0; i < tokens.length - 1; i++) {
      const id = str(keys[tokens[i]] + keys[tokens[i + 1]]);
      if (id !== -1 && scores[id] > bestScore) {
        bestScore = scores[id];
        bestId = id;
        bestIdx = i;
      }
    }
    if (bestIdx === -1) break;
    tokens.splice(bestIdx, 2, bestId);
  }
  return tokens;
}

for (const model of MODELS) {
  test(`${model.name}: prompt ids and completion text match run.c (golden)`, (t) => {
    const tokPath = requireShared(t, 'models', model.name, model.tokenizer);
    const goldenPath = requireShared(t, 'golden', model.golden);
    if (tokPath === undefined || goldenPath === undefined) return;
    const tok = loadLlama2cTokenizer(tokPath);
    const golden = JSON.parse(readFileSync(goldenPath, 'utf8')) as Golden;

    assert.deepEqual(tok.encode(golden.prompt), golden.prompt_ids);
    assert.deepEqual(tok.encode(golden.prompt, { addBos: false }), golden.prompt_ids.slice(1));

    const generated = golden.stop === 'bos' ? golden.generated_ids.slice(0, -1) : golden.generated_ids;
    assert.equal(tok.decode(generated), golden.completion_text);
    assert.equal(tok.decode(generated, golden.prompt_ids), golden.completion_text);
    // Streaming gives the same text, piece by piece.
    const stream = tok.createStreamDecoder(golden.prompt_ids);
    const pieces = generated.map((id) => stream.push(id));
    assert.equal(pieces.join('') + stream.flush(), golden.completion_text);
    // run.c prints the prompt (after BOS) then the completion, then a newline.
    assert.equal(tok.decode(golden.prompt_ids.slice(1), [LLAMA2C_BOS_ID]) + tok.decode(generated) + '\n', golden.run_c_stdout);
    // A trailing BOS (the stop token) adds no text.
    assert.equal(tok.decode([...generated, LLAMA2C_BOS_ID]), golden.completion_text);
  });
}

test('stories260K: vocabulary facts (BOS/EOS, dummy prefix, byte pieces, piece list)', (t) => {
  const path = requireShared(t, 'models', 'stories260K', 'tok512.bin');
  if (path === undefined) return;
  const tok = loadLlama2cTokenizer(path);
  assert.equal(tok.vocabSize, 512);
  assert.equal(tok.bosId, 1);
  assert.deepEqual(tok.eosIds, [1, 2]);
  assert.equal(tok.hasBytePieces, true);
  assert.equal(tok.pieces.length, 512);
  assert.equal(tok.pieces[410], ' ');
  assert.equal(tok.pieces[13], '<0x0A>');
  assert.equal(tok.pieces[403], ' Once');
  assert.equal(tok.pieceId(' Once'), 403);
  assert.equal(tok.pieceId('no such piece'), undefined);
  assert.equal(tok.scores.length, 512);
  assert.deepEqual(tok.encode(''), [1]);
  assert.deepEqual(tok.encode('', { addBos: false }), []);
  // The dummy prefix " " (410) merges into the first word.
  assert.deepEqual(tok.encode('Once'), [1, 403]);
  // Reading exactly vocabSize pieces, as run.c does with the model's vocab_size.
  assert.equal(loadLlama2cTokenizer(path, { vocabSize: 300 }).vocabSize, 300);
});

test('stories260K: byte fallback round-trips emoji and unusual characters', (t) => {
  const path = requireShared(t, 'models', 'stories260K', 'tok512.bin');
  if (path === undefined) return;
  const tok = loadLlama2cTokenizer(path);
  const text = 'Lily saw a 🦄 and said "héllo" — 中文\tok\nZ̈!';
  const ids = tok.encode(text);
  // 🦄 is F0 9F A6 84: four byte tokens (byte + 3).
  const unicorn = [0xf0, 0x9f, 0xa6, 0x84].map((b) => b + 3);
  const at = ids.findIndex((id, i) => unicorn.every((u, j) => ids[i + j] === u));
  assert.ok(at > 0, `byte tokens of 🦄 in ${ids}`);
  // é and — are pieces of their own (485, 481), not bytes.
  assert.ok(ids.includes(485) && ids.includes(481));
  // Decoding after BOS drops the dummy-prefix space, giving back the text exactly.
  assert.equal(tok.decode(ids.slice(1), [LLAMA2C_BOS_ID]), text);
  assert.equal(tok.decode(ids), text);
  // Matches the reference port of run.c.
  assert.deepEqual(ids, referenceEncode(keysOf(path), tok.scores, text, true));

  // NUL is encoded through byte fallback (run.c could not see it: its prompt is a C string) and,
  // being a control byte, prints nothing.
  assert.deepEqual(tok.encode('\u0000', { addBos: false }), [410, 3]);
  assert.equal(tok.decode([3]), '');

  // Streaming holds the incomplete character back until its last byte.
  const stream = tok.createStreamDecoder([LLAMA2C_BOS_ID]);
  assert.deepEqual(unicorn.map((id) => stream.push(id)), ['', '', '', '🦄']);
  assert.equal(stream.flush(), '');
});

test('stories260K: decode details follow run.c', (t) => {
  const path = requireShared(t, 'models', 'stories260K', 'tok512.bin');
  if (path === undefined) return;
  const tok = loadLlama2cTokenizer(path);
  // Leading space of a piece is dropped only right after BOS.
  assert.equal(tok.decode([403]), ' Once');
  assert.equal(tok.decode([403], [LLAMA2C_BOS_ID]), 'Once');
  assert.equal(tok.decode([LLAMA2C_BOS_ID, 403]), 'Once');
  assert.equal(tok.decode([403], [5, 6]), ' Once');
  // The space byte piece <0x20> is not a piece starting with a space: it keeps its space.
  assert.equal(tok.decode([0x20 + 3], [LLAMA2C_BOS_ID]), ' ');
  // <0x0A> is a newline; control bytes other than whitespace are dropped (safe_printf).
  assert.equal(tok.decode([13]), '\n');
  assert.equal(tok.decode([0x07 + 3]), '');
  assert.equal(tok.decode([0x09 + 3]), '\t');
  // <unk> prints as text; BOS and EOS print nothing.
  assert.equal(tok.decode([0, 1, 2]), '<unk>');
  // An invalid byte comes out as U+FFFD at once; an incomplete one at flush.
  const stream = tok.createStreamDecoder();
  assert.equal(stream.push(0xff + 3), '\uFFFD');
  assert.equal(stream.push(0xe4 + 3), '');
  assert.equal(stream.push(0xb8 + 3), '');
  assert.equal(stream.push(411), '\uFFFDe');
  assert.equal(stream.push(0xe4 + 3), '');
  assert.equal(stream.flush(), '\uFFFD');
  assert.throws(() => tok.decode([512]), RangeError);
  assert.throws(() => tok.decode([-1]), RangeError);
});

test('stories260K: heap merge equals a direct port of run.c on random text', (t) => {
  const path = requireShared(t, 'models', 'stories260K', 'tok512.bin');
  if (path === undefined) return;
  const tok = loadLlama2cTokenizer(path);
  const keys = keysOf(path);
  const alphabet = [...'aeiou tnshrdlLyOS.,"\'!?é—中😀\n', ' the', ' Lily', 'ing', ' was'];
  let seed = 12345;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  for (let i = 0; i < 300; i++) {
    let text = '';
    for (let n = rand(40); n > 0; n--) text += alphabet[rand(alphabet.length)];
    assert.deepEqual(tok.encode(text), referenceEncode(keys, tok.scores, text, true), JSON.stringify(text));
  }
});

test('babyllama105: an unencodable character is rejected, naming it and its index', (t) => {
  const path = requireShared(t, 'models', 'babyllama105', 'tok105.bin');
  if (path === undefined) return;
  const tok = loadLlama2cTokenizer(path);
  assert.equal(tok.vocabSize, 105);
  assert.equal(tok.hasBytePieces, false);
  assert.throws(
    () => tok.encode('Once upon a 😀 time'),
    (err: unknown) => err instanceof TokenizeError && /"😀"/.test(err.message) && /U\+1F600/.test(err.message) && /index 12/.test(err.message),
  );
  // The vocabulary has no newline either (the model writes <unk> where one would go).
  assert.throws(() => tok.encode('a\nb'), (err: unknown) => err instanceof TokenizeError && /index 1\b/.test(err.message));
  assert.equal(tok.decode([0]), '<unk>');
  // Characters it has encode one id each (no merges in a character vocabulary).
  assert.deepEqual(tok.encode('é!'), [1, 3, 78, 36]);
});

test('merges: highest score first, ties go to the leftmost pair', () => {
  // "aba": pairs "ab" and "ba" both in the vocabulary.
  const tied = tinyTokenizer([[' ', 0], ['a', -1], ['b', -1], ['ab', -5], ['ba', -5]]);
  assert.deepEqual(tied.encode('aba'), [1, 3, 6, 4]); // " ", "ab", "a"
  const baWins = tinyTokenizer([[' ', 0], ['a', -1], ['b', -1], ['ab', -5], ['ba', -4]]);
  assert.deepEqual(baWins.encode('aba'), [1, 3, 4, 7]); // " ", "a", "ba"
  // Merges cascade, and a merge result takes part in later merges.
  const cascade = tinyTokenizer([[' ', 0], ['a', -1], ['b', -1], ['ab', -2], [' ab', -3], [' abab', -1], ['abab', -9]]);
  assert.deepEqual(cascade.encode('abab'), [1, 8]); // " abab"
  // Pieces scoring -1e10 or less never merge (run.c starts its search there).
  const floor = tinyTokenizer([[' ', 0], ['a', -1], ['b', -1], ['ab', -1e10]]);
  assert.deepEqual(floor.encode('ab'), [1, 3, 4, 5]);
});

test('merges: duplicate pieces resolve like glibc bsearch over the stably sorted vocabulary', () => {
  // Sorted by strcmp: "\n</s>\n"(2) "\n<s>\n"(1) " "(3) "<unk>"(0) "a"(4) "ab"(6) "ab"(7) "b"(5);
  // bsearch probes index 4 ("a"), then 6, the second "ab": id 7.
  const tok = tinyTokenizer([[' ', 0], ['a', -1], ['b', -1], ['ab', -2], ['ab', -3]]);
  assert.deepEqual(tok.encode('ab'), [1, 3, 7]);
  assert.equal(tok.pieceId('ab'), 7);
});

test('a vocabulary without byte pieces or without " " gives TokenizeError', () => {
  const noSpace = tinyTokenizer([['a', -1]]);
  assert.throws(() => noSpace.encode('a'), TokenizeError);
  assert.deepEqual(noSpace.encode(''), [1]);
  const tiny = tinyTokenizer([[' ', 0], ['a', -1]]);
  assert.throws(() => tiny.encode('ab'), (err: unknown) => err instanceof TokenizeError && /"b"/.test(err.message));
});

test('corrupt tokenizer files are rejected with the path in the message', () => {
  const good = tokenizerFile(['<unk>', '\n<s>\n', '\n</s>\n', ' '], [0, 0, 0, 0]);
  assert.equal(parseLlama2cTokenizer(good).pieces.length, 4);
  const bad = (data: Uint8Array, opts: { vocabSize?: number } = {}): void => {
    assert.throws(
      () => parseLlama2cTokenizer(data, { ...opts, source: '/models/x/tokenizer.bin' }),
      (err: unknown) => err instanceof TokenizerLoadError && err.message.includes('/models/x/tokenizer.bin'),
    );
  };
  bad(new Uint8Array(2));
  bad(good.subarray(0, good.length - 1)); // truncated last piece
  bad(good, { vocabSize: 5 }); // fewer pieces than the model's vocabulary
  const negative = good.slice();
  new DataView(negative.buffer).setInt32(8, -3, true);
  bad(negative);
  const zeroHeader = good.slice();
  new DataView(zeroHeader.buffer).setInt32(0, 0, true);
  bad(zeroHeader);
  assert.throws(() => loadLlama2cTokenizer('/nonexistent/tokenizer.bin'), /\/nonexistent\/tokenizer\.bin/);
});

test('incompleteTail holds only valid prefixes of a UTF-8 character', () => {
  assert.equal(incompleteTail([]), 0);
  assert.equal(incompleteTail([0x41]), 0);
  assert.equal(incompleteTail([0x41, 0xc3]), 1);
  assert.equal(incompleteTail([0xc3, 0xa9]), 0);
  assert.equal(incompleteTail([0xf0, 0x9f, 0xa6]), 3);
  assert.equal(incompleteTail([0xf0, 0x9f, 0xa6, 0x84]), 0);
  assert.equal(incompleteTail([0xe0, 0x80]), 0); // overlong: never valid
  assert.equal(incompleteTail([0xed, 0xa0]), 0); // surrogate range: never valid
  assert.equal(incompleteTail([0xf4, 0x90]), 0); // above U+10FFFF
  assert.equal(incompleteTail([0x80, 0x80]), 0); // stray continuation bytes
  assert.equal(incompleteTail([0xc0]), 0); // invalid lead
});

/** Binary-string keys of a tokenizer file, for the reference encoder. */
function keysOf(path: string): string[] {
  return parseLlama2cTokenizer(readFileSync(path)).pieces.map((p) => String.fromCharCode(...p));
}
