// Picks and loads the tokenizer of a model directory. The project's model layout holds either
// `tokenizer.bin` (llama2.c format) or `tokenizer.json` (+ `tokenizer_config.json`). Karpathy's
// published folders name the llama2.c file `tok<N>.bin`, so a single `tok*.bin` is accepted too.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { HfTokenizer, loadHfTokenizer } from './hf.ts';
import { Llama2cTokenizer, loadLlama2cTokenizer } from './llama2c.ts';
import { TokenizerLoadError } from './types.ts';

export type TokenizerKind = 'llama2c' | 'hf';
export type LoadedTokenizer = Llama2cTokenizer | HfTokenizer;

export interface LoadTokenizerOptions {
  /** Which format to load; by default it is inferred from the files present. */
  kind?: TokenizerKind;
  /** llama2.c only: the model's vocab_size; exactly that many pieces are read (as run.c does). */
  vocabSize?: number;
}

export const LLAMA2C_TOKENIZER_FILE = 'tokenizer.bin';
export const HF_TOKENIZER_FILE = 'tokenizer.json';

/**
 * Loads the tokenizer at `path`: a model directory, or a tokenizer file itself (`*.bin` is
 * llama2.c, `*.json` is Hugging Face). Throws TokenizerLoadError naming the path when the files
 * are missing, ambiguous or corrupt.
 */
export function loadTokenizer(path: string, kindOrOpts: TokenizerKind | LoadTokenizerOptions = {}): LoadedTokenizer {
  const opts = typeof kindOrOpts === 'string' ? { kind: kindOrOpts } : kindOrOpts;
  if (!existsSync(path)) throw new TokenizerLoadError(`tokenizer path ${path} does not exist`);
  const { kind, file } = statSync(path).isDirectory() ? pickInDirectory(path, opts.kind) : pickFile(path, opts.kind);
  return kind === 'llama2c'
    ? loadLlama2cTokenizer(file, { vocabSize: opts.vocabSize })
    : loadHfTokenizer(dirname(file), basename(file));
}

function pickFile(file: string, kind: TokenizerKind | undefined): { kind: TokenizerKind; file: string } {
  const inferred = file.endsWith('.json') ? 'hf' : file.endsWith('.bin') ? 'llama2c' : undefined;
  const chosen = kind ?? inferred;
  if (chosen === undefined) {
    throw new TokenizerLoadError(`cannot tell the tokenizer format of ${file}: expected a .bin (llama2.c) or .json (Hugging Face) file`);
  }
  return { kind: chosen, file };
}

function pickInDirectory(dir: string, kind: TokenizerKind | undefined): { kind: TokenizerKind; file: string } {
  const hf = join(dir, HF_TOKENIZER_FILE);
  const hasHf = existsSync(hf);
  const llama = findLlama2c(dir);
  if (kind === 'hf') {
    if (!hasHf) throw new TokenizerLoadError(`${hf} is missing`);
    return { kind, file: hf };
  }
  if (kind === 'llama2c') {
    if (llama === undefined) throw new TokenizerLoadError(`${join(dir, LLAMA2C_TOKENIZER_FILE)} is missing`);
    return { kind, file: llama };
  }
  if (hasHf && llama !== undefined) {
    throw new TokenizerLoadError(`${dir} holds both ${HF_TOKENIZER_FILE} and ${basename(llama)}: say which tokenizer kind to load`);
  }
  if (hasHf) return { kind: 'hf', file: hf };
  if (llama !== undefined) return { kind: 'llama2c', file: llama };
  throw new TokenizerLoadError(`no tokenizer in ${dir}: expected ${LLAMA2C_TOKENIZER_FILE} (llama2.c) or ${HF_TOKENIZER_FILE} (Hugging Face)`);
}

/** `tokenizer.bin`, else the only `tok*.bin`, else undefined (several are ambiguous: an error). */
function findLlama2c(dir: string): string | undefined {
  const standard = join(dir, LLAMA2C_TOKENIZER_FILE);
  if (existsSync(standard)) return standard;
  const candidates = readdirSync(dir).filter((name) => /^tok.*\.bin$/.test(name));
  if (candidates.length > 1) {
    throw new TokenizerLoadError(`${dir} holds several llama2.c tokenizers (${candidates.join(', ')}): name the file`);
  }
  return candidates.length === 1 ? join(dir, candidates[0]) : undefined;
}
