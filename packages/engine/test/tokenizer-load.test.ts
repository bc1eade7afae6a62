import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { requireShared } from '../../../test/support/shared.ts';
import { HfTokenizer } from '../src/tokenizer/hf.ts';
import { Llama2cTokenizer } from '../src/tokenizer/llama2c.ts';
import { loadTokenizer } from '../src/tokenizer/load.ts';
import { TokenizerLoadError } from '../src/tokenizer/types.ts';

/** Runs `fn` with a fresh temporary directory (model files are linked into it, never copied). */
function withTempDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-tok-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const loadError = (path: string, pattern: RegExp) => (err: unknown) =>
  err instanceof TokenizerLoadError && err.message.includes(path) && pattern.test(err.message);

test('loadTokenizer picks tokenizer.bin, tokenizer.json, or a single tok*.bin', (t) => {
  const tok512 = requireShared(t, 'models', 'stories260K', 'tok512.bin');
  const gpt2 = requireShared(t, 'models', 'tiny-random-gpt2');
  if (tok512 === undefined || gpt2 === undefined) return;
  // Karpathy's layout: tok512.bin beside the checkpoint.
  assert.ok(loadTokenizer(join(tok512, '..')) instanceof Llama2cTokenizer);
  assert.ok(loadTokenizer(gpt2) instanceof HfTokenizer);
  // A tokenizer file named directly.
  assert.ok(loadTokenizer(tok512) instanceof Llama2cTokenizer);
  assert.ok(loadTokenizer(join(gpt2, 'tokenizer.json')) instanceof HfTokenizer);
  withTempDir((dir) => {
    // The project's layout: tokenizer.bin.
    symlinkSync(tok512, join(dir, 'tokenizer.bin'));
    const tok = loadTokenizer(dir, { vocabSize: 512 });
    assert.ok(tok instanceof Llama2cTokenizer);
    assert.equal(tok.vocabSize, 512);
    // Both kinds present: ambiguous unless the kind is given.
    symlinkSync(join(gpt2, 'tokenizer.json'), join(dir, 'tokenizer.json'));
    assert.throws(() => loadTokenizer(dir), loadError(dir, /both/));
    assert.ok(loadTokenizer(dir, 'llama2c') instanceof Llama2cTokenizer);
    assert.ok(loadTokenizer(dir, { kind: 'hf' }) instanceof HfTokenizer);
  });
});

test('loadTokenizer: clear errors for missing, ambiguous and corrupt tokenizers', () => {
  withTempDir((dir) => {
    assert.throws(() => loadTokenizer(join(dir, 'nope')), loadError(join(dir, 'nope'), /does not exist/));
    assert.throws(() => loadTokenizer(dir), loadError(dir, /no tokenizer/));
    assert.throws(() => loadTokenizer(dir, 'hf'), loadError(join(dir, 'tokenizer.json'), /missing/));
    assert.throws(() => loadTokenizer(dir, 'llama2c'), loadError(join(dir, 'tokenizer.bin'), /missing/));
    writeFileSync(join(dir, 'tokenizer.bin'), new Uint8Array([7, 0, 0, 0, 1, 2]));
    assert.throws(() => loadTokenizer(dir), loadError(join(dir, 'tokenizer.bin'), /not a valid llama2.c tokenizer/));
    writeFileSync(join(dir, 'vocab.txt'), 'x');
    assert.throws(() => loadTokenizer(join(dir, 'vocab.txt')), loadError(join(dir, 'vocab.txt'), /cannot tell/));
    const several = join(dir, 'several');
    mkdirSync(several);
    writeFileSync(join(several, 'tok1.bin'), '');
    writeFileSync(join(several, 'tok2.bin'), '');
    assert.throws(() => loadTokenizer(several), loadError(several, /several/));
  });
});
