// Hugging Face `tokenizer.json` tokenizers through @huggingface/tokenizers (a pure-JS port of the
// Rust `tokenizers` pipeline). This module adds what serving needs on top: BOS/EOS ids from the
// model's config files, and streaming decode that never splits a character or drops a space.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizerImpl } from '@huggingface/tokenizers';
import { selectChatTemplate } from '../chat-template.ts';
import { decodeAll, TokenizerLoadError, type StreamDecoder, type Tokenizer } from './types.ts';

type Json = Record<string, unknown>;

/**
 * The part of @huggingface/tokenizers' Tokenizer used here. Its published .d.ts files import each
 * other without file extensions, which NodeNext resolution cannot follow, so TypeScript sees the
 * class as `any`; this interface restores type checking at the boundary.
 */
interface HfImpl {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean; clean_up_tokenization_spaces?: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
  get_vocab(withAddedTokens?: boolean): Map<string, number>;
}

export interface HfTokenizerFiles {
  /** Parsed tokenizer.json. */
  tokenizerJson: Json;
  /** Parsed tokenizer_config.json (bos_token, eos_token, chat_template, ...). */
  tokenizerConfig?: Json;
  /** Parsed config.json (bos_token_id, eos_token_id). */
  modelConfig?: Json;
  /** Parsed generation_config.json (eos_token_id, often a list). */
  generationConfig?: Json;
  /** Contents of chat_template.jinja, which newer checkpoints ship instead of the config field. */
  chatTemplate?: string;
}

/**
 * How many ids before the new ones the stream decoder decodes along with them: enough for the
 * decoder to see that the new text is not at the start (SentencePiece drops the leading space of
 * the first piece), as in text-generation-inference and vLLM.
 */
const CONTEXT_IDS = 5;
/**
 * The stream decoder holds text back while it ends in U+FFFD (an incomplete UTF-8 character).
 * A character spans at most 4 byte-carrying tokens; past this many held ids the U+FFFD is real
 * (invalid bytes) and the text goes out as is, so garbage output cannot stall a stream.
 */
const MAX_HELD_IDS = 8;
const REPLACEMENT = '\uFFFD';

/** A special-token field of tokenizer_config.json: a string or an AddedToken object. */
function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'object' && value !== null && typeof (value as Json).content === 'string') return (value as Json).content as string;
  return undefined;
}

function idList(value: unknown): number[] {
  if (Number.isInteger(value)) return [value as number];
  if (Array.isArray(value)) return value.filter((v): v is number => Number.isInteger(v));
  return [];
}

export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | null;
  readonly eosIds: readonly number[];
  /** Text of the BOS/EOS tokens, for chat templates (`bos_token`, `eos_token`). */
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  /** The model's chat template, if it has one. */
  readonly chatTemplate: string | undefined;
  private readonly impl: HfImpl;

  constructor(files: HfTokenizerFiles) {
    const config = files.tokenizerConfig ?? {};
    this.impl = new HfTokenizerImpl(files.tokenizerJson, config) as HfImpl;
    let maxId = -1;
    for (const id of this.impl.get_vocab(true).values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;

    const idOf = (token: string | undefined): number | undefined => (token === undefined ? undefined : this.impl.token_to_id(token));
    this.bosToken = tokenContent(config.bos_token);
    this.eosToken = tokenContent(config.eos_token);
    this.bosId = idOf(this.bosToken) ?? idList(files.modelConfig?.bos_token_id)[0] ?? null;
    // Every source's EOS ends generation (vLLM likewise adds generation_config's eos ids as stop
    // ids): models often list several, e.g. <|eot_id|> next to <|end_of_text|>.
    const eos = new Set<number>();
    const eosId = idOf(this.eosToken);
    if (eosId !== undefined) eos.add(eosId);
    for (const source of [files.generationConfig?.eos_token_id, files.modelConfig?.eos_token_id]) {
      for (const id of idList(source)) eos.add(id);
    }
    this.eosIds = [...eos];
    this.chatTemplate = files.chatTemplate ?? selectChatTemplate(config.chat_template);
  }

  /** Whether the post-processor's special tokens are added follows `addBos` (default true). */
  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    return this.impl.encode(text, { add_special_tokens: opts.addBos ?? true }).ids;
  }

  /** Id of a token string (e.g. `Ġworld`), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.impl.token_to_id(token);
  }

  /** Token string of an id (e.g. `Ġworld`), or undefined. */
  idToToken(id: number): string | undefined {
    return this.impl.id_to_token(id);
  }

  decode(ids: readonly number[], context?: readonly number[]): string {
    return decodeAll(this.createStreamDecoder(context), ids);
  }

  createStreamDecoder(context?: readonly number[]): StreamDecoder {
    return new HfStreamDecoder((ids) => this.decodeWindow(ids), this.vocabSize, context?.slice(-CONTEXT_IDS) ?? []);
  }

  /**
   * Plain decode of a window of ids. Special tokens are skipped (as vLLM does by default) and
   * clean_up_tokenization_spaces is off: it rewrites " ." to "." and the like, which changes the
   * model's text and breaks the prefix arithmetic of incremental decoding.
   */
  private decodeWindow(ids: number[]): string {
    if (ids.length === 0) return '';
    return this.impl.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }
}

/**
 * Incremental detokenization as in text-generation-inference / vLLM: decode the window
 * ids[prefixOffset:readOffset] (already emitted) and ids[prefixOffset:] (with the new ids); the new
 * text is the difference. Decoding a window rather than single ids lets byte-level BPE join the
 * bytes of one character across tokens and lets SentencePiece keep the space of a word that is
 * not first. While the text ends in U+FFFD the character is incomplete, so nothing is emitted.
 */
class HfStreamDecoder implements StreamDecoder {
  private ids: number[];
  private prefixOffset = 0;
  private readOffset: number;

  constructor(
    private readonly decode: (ids: number[]) => string,
    private readonly vocabSize: number,
    context: readonly number[],
  ) {
    this.ids = [...context];
    this.readOffset = this.ids.length;
  }

  push(id: number): string {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new RangeError(`token id ${id} is outside the vocabulary (0..${this.vocabSize - 1})`);
    }
    this.ids.push(id);
    const held = this.ids.length - this.readOffset;
    return this.emit(held <= MAX_HELD_IDS);
  }

  flush(): string {
    return this.readOffset < this.ids.length ? this.emit(false) : '';
  }

  private emit(holdIncomplete: boolean): string {
    const prefixText = this.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const fullText = this.decode(this.ids.slice(this.prefixOffset));
    if (fullText.length <= prefixText.length) {
      // Nothing new (e.g. a skipped special token). When flushing, the window is done with.
      if (!holdIncomplete) this.advance();
      return '';
    }
    if (holdIncomplete && fullText.endsWith(REPLACEMENT)) return '';
    this.advance();
    return fullText.slice(prefixText.length);
  }

  /** The emitted ids become the prefix of the next window; older ids are no longer needed. */
  private advance(): void {
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    if (this.prefixOffset > 0) {
      this.ids = this.ids.slice(this.prefixOffset);
      this.readOffset -= this.prefixOffset;
      this.prefixOffset = 0;
    }
  }
}

function readJson(path: string, required: boolean): Json | undefined {
  if (!existsSync(path)) {
    if (required) throw new TokenizerLoadError(`${path} is missing`);
    return undefined;
  }
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new TokenizerLoadError(`cannot read ${path}: ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new TokenizerLoadError(`${path} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new TokenizerLoadError(`${path} must hold a JSON object`);
  }
  return value as Json;
}

/**
 * Loads `tokenizer.json` (or `tokenizerFile`) from a model directory, with the optional tokenizer_config.json,
 * config.json, generation_config.json and chat_template.jinja beside it. (onnxruntime-genai's
 * genai_config.json is not read: its ids are the exporter's choice, e.g. 98 in tiny-random-gpt2.)
 */
export function loadHfTokenizer(dir: string, tokenizerFile = 'tokenizer.json'): HfTokenizer {
  const tokenizerPath = join(dir, tokenizerFile);
  const tokenizerJson = readJson(tokenizerPath, true) as Json;
  const templatePath = join(dir, 'chat_template.jinja');
  const files: HfTokenizerFiles = {
    tokenizerJson,
    tokenizerConfig: readJson(join(dir, 'tokenizer_config.json'), false),
    modelConfig: readJson(join(dir, 'config.json'), false),
    generationConfig: readJson(join(dir, 'generation_config.json'), false),
    chatTemplate: existsSync(templatePath) ? readFileSync(templatePath, 'utf8') : undefined,
  };
  try {
    return new HfTokenizer(files);
  } catch (err) {
    throw new TokenizerLoadError(`${tokenizerPath}: cannot build the tokenizer: ${(err as Error).message}`);
  }
}
