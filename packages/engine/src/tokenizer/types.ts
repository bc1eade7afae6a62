// The tokenizer contract the engine and the router program against. Two implementations exist:
// llama2c.ts (llama2.c `tokenizer.bin`, an exact port of run.c) and hf.ts (Hugging Face
// `tokenizer.json`). load.ts picks one for a model directory.

export interface Tokenizer {
  /** Number of ids the tokenizer knows (pieces, plus added tokens for HF). */
  readonly vocabSize: number;
  /** Id prepended by `encode` when `addBos` is on, or null when the tokenizer has none. */
  readonly bosId: number | null;
  /** Ids that end generation by default. */
  readonly eosIds: readonly number[];
  /**
   * Text to ids. `addBos` defaults to true when `bosId != null` (for HF tokenizers it switches the
   * post-processor's special tokens on or off). Throws TokenizeError for text the vocabulary
   * cannot represent.
   */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  /**
   * Text of `ids` read as a continuation. `context` (optional) is the ids that precede them, e.g.
   * the prompt: tokenizers whose pieces carry a leading space that is dropped at the start of a
   * text (SentencePiece) use it to know that `ids` do not start the text. Only its last few ids
   * matter. Equals the concatenation of a stream decoder's pushes and flush over `ids`.
   */
  decode(ids: readonly number[], context?: readonly number[]): string;
  /** Incremental decoder for streaming; `context` as for `decode`. */
  createStreamDecoder(context?: readonly number[]): StreamDecoder;
}

export interface StreamDecoder {
  /** Adds one id and returns the text that became final; never half a UTF-8 character. */
  push(id: number): string;
  /** Returns whatever is still held back (incomplete bytes come out as U+FFFD). */
  flush(): string;
}

/** Text the vocabulary cannot represent (the router turns it into a 400). */
export class TokenizeError extends Error {
  override name = 'TokenizeError';
}

/** A tokenizer file that is missing, unreadable or malformed; the message names the path. */
export class TokenizerLoadError extends Error {
  override name = 'TokenizerLoadError';
}

/** Runs `ids` through a stream decoder: `decode` is defined as exactly what streaming produces. */
export function decodeAll(decoder: StreamDecoder, ids: readonly number[]): string {
  let text = '';
  for (const id of ids) text += decoder.push(id);
  return text + decoder.flush();
}
