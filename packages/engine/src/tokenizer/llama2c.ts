// llama2.c tokenizer (`tokenizer.bin` / `tok*.bin`): an exact port of run.c's `encode` and
// `decode`, so that prompt ids and generated text match the reference implementation byte for
// byte (checked against ../shared/golden).
//
// File layout: int32 max_token_length, then per piece: float32 score, int32 byte length, bytes
// (little-endian). The file does not store the vocabulary size: run.c takes it from the model
// header and reads exactly that many pieces; without `vocabSize` we read pieces until EOF.
//
// Pieces are handled as "binary strings" (one char per byte, code unit = byte value) so that Map
// lookups and concatenations compare exactly like C's strcmp/sprintf on the raw bytes.
import { readFileSync } from 'node:fs';
import { decodeAll, TokenizeError, TokenizerLoadError, type StreamDecoder, type Tokenizer } from './types.ts';

export const LLAMA2C_BOS_ID = 1;
/** SentencePiece's `</s>`. run.c itself only stops on BOS; see `eosIds`. */
export const LLAMA2C_EOS_ID = 2;
/** run.c's byte fallback maps byte b to id b + 3 (after <unk>, <s>, </s>). */
const BYTE_PIECE_OFFSET = 3;
/** run.c starts the best-merge search at this score and merges only pieces scoring above it. */
const MIN_MERGE_SCORE = -1e10;

export interface Llama2cVocab {
  maxTokenLength: number;
  /** Raw bytes of each piece, index = id. */
  pieces: Uint8Array[];
  scores: Float32Array;
}

/** Parses a llama2.c tokenizer file; `source` names it in error messages. */
export function parseLlama2cTokenizer(
  data: Uint8Array,
  opts: { vocabSize?: number; source?: string } = {},
): Llama2cVocab {
  const source = opts.source ?? 'llama2.c tokenizer';
  const fail = (why: string): never => {
    throw new TokenizerLoadError(`${source}: not a valid llama2.c tokenizer file: ${why}`);
  };
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (data.byteLength < 4) fail('shorter than its 4-byte header');
  const maxTokenLength = view.getInt32(0, true);
  if (maxTokenLength <= 0 || maxTokenLength > 1 << 16) fail(`implausible max_token_length ${maxTokenLength}`);
  const pieces: Uint8Array[] = [];
  const scores: number[] = [];
  let off = 4;
  const want = opts.vocabSize;
  while (want === undefined ? off < data.byteLength : pieces.length < want) {
    const id = pieces.length;
    if (off + 8 > data.byteLength) fail(`truncated at piece ${id} (offset ${off})`);
    const score = view.getFloat32(off, true);
    const len = view.getInt32(off + 4, true);
    off += 8;
    if (len < 0 || off + len > data.byteLength) fail(`piece ${id} has bad length ${len} (offset ${off - 4})`);
    pieces.push(data.slice(off, off + len));
    scores.push(score);
    off += len;
  }
  if (pieces.length <= LLAMA2C_EOS_ID) fail(`only ${pieces.length} pieces (need <unk>, <s>, </s> at least)`);
  return { maxTokenLength, pieces, scores: Float32Array.from(scores) };
}

export function loadLlama2cTokenizer(path: string, opts: { vocabSize?: number } = {}): Llama2cTokenizer {
  let data: Uint8Array;
  try {
    data = readFileSync(path);
  } catch (err) {
    throw new TokenizerLoadError(`cannot read llama2.c tokenizer ${path}: ${(err as Error).message}`);
  }
  return new Llama2cTokenizer(parseLlama2cTokenizer(data, { ...opts, source: path }));
}

/** Bytes as a binary string (one char per byte). */
function binary(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

/** What C sees of a piece: its bytes up to the first NUL (run.c stores pieces as C strings). */
function cString(bytes: Uint8Array): Uint8Array {
  const nul = bytes.indexOf(0);
  return nul < 0 ? bytes : bytes.subarray(0, nul);
}

/**
 * Builds the string -> id map that run.c's `str_lookup` implements with bsearch over the vocab
 * sorted by strcmp. For unique strings that is simply the piece's id. For duplicate strings the
 * answer depends on the sort and the search: we emulate glibc (qsort is a stable merge sort for
 * arrays this size, and bsearch probes the midpoint (l+u)/2 and returns the first equal element
 * it hits), which is deterministic. Neither shipped vocabulary has duplicates.
 */
function buildLookup(keys: readonly string[]): Map<string, number> {
  // JS sort is stable and compares code units, which for binary strings is strcmp's unsigned
  // byte order (a proper prefix sorts first, as in strcmp).
  const sorted = keys.map((_, id) => id).sort((a, b) => (keys[a] < keys[b] ? -1 : keys[a] > keys[b] ? 1 : 0));
  const map = new Map<string, number>();
  for (const key of keys) {
    if (map.has(key)) continue;
    let lo = 0;
    let hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const probe = keys[sorted[mid]];
      if (key < probe) hi = mid;
      else if (key > probe) lo = mid + 1;
      else {
        map.set(key, sorted[mid]);
        break;
      }
    }
  }
  return map;
}

const HEX = '0123456789ABCDEF';
function bytePieceText(b: number): string {
  return `<0x${HEX[b >> 4]}${HEX[b & 15]}>`;
}

/** run.c decodes a `<0xXX>` piece as that raw byte (it uses sscanf; we accept the exact form). */
function parseBytePiece(key: string): number | undefined {
  if (key.length !== 6 || !key.startsWith('<0x') || key[5] !== '>') return undefined;
  const hex = key.slice(3, 5);
  return /^[0-9A-Fa-f]{2}$/.test(hex) ? parseInt(hex, 16) : undefined;
}

export class Llama2cTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosId = LLAMA2C_BOS_ID;
  /**
   * run.c stops when the model emits BOS (every TinyStories story starts with BOS, so the model
   * emits it to begin the next one). `</s>` (2) is SentencePiece's end-of-sequence: these models
   * never saw it in training, but if one emits it the text is over, so it stops too.
   */
  readonly eosIds: readonly number[] = [LLAMA2C_BOS_ID, LLAMA2C_EOS_ID];
  readonly maxTokenLength: number;
  /** Text of each piece (UTF-8 decoded; byte pieces keep their `<0xXX>` spelling). */
  readonly pieces: readonly string[];
  readonly scores: Float32Array;
  /** Whether ids 3..258 are the byte pieces `<0x00>`..`<0xFF>`, enabling byte fallback. */
  readonly hasBytePieces: boolean;

  /** Piece bytes as C sees them, as binary strings (index = id). */
  private readonly keys: string[];
  private readonly lookup: Map<string, number>;
  /** Bytes each id prints, index = id: normally, and right after BOS. */
  private readonly output: PieceOutput;

  constructor(vocab: Llama2cVocab) {
    if (vocab.pieces.length !== vocab.scores.length) throw new Error('pieces and scores differ in length');
    this.vocabSize = vocab.pieces.length;
    this.maxTokenLength = vocab.maxTokenLength;
    this.scores = vocab.scores;
    const cstrs = vocab.pieces.map(cString);
    this.keys = cstrs.map(binary);
    this.lookup = buildLookup(this.keys);
    const text = new TextDecoder('utf-8', { ignoreBOM: true });
    this.pieces = cstrs.map((b) => text.decode(b));
    let bytes = this.vocabSize >= BYTE_PIECE_OFFSET + 256;
    for (let b = 0; bytes && b < 256; b++) bytes = this.keys[BYTE_PIECE_OFFSET + b] === bytePieceText(b);
    this.hasBytePieces = bytes;
    // run.c's decode: after BOS a leading space is dropped first, then a `<0xXX>` piece becomes
    // its byte (so the byte piece <0x20> keeps its space after BOS).
    const printed = (c: Uint8Array): Uint8Array => {
      const byte = parseBytePiece(binary(c));
      return byte === undefined ? c : Uint8Array.of(byte);
    };
    this.output = {
      normal: cstrs.map(printed),
      afterBos: cstrs.map((c) => (c[0] === 0x20 ? printed(c.subarray(1)) : printed(c))),
    };
  }

  /** Id of a piece given as text, or undefined (exact match, as run.c's str_lookup). */
  pieceId(piece: string): number | undefined {
    return this.lookup.get(binary(new TextEncoder().encode(piece)));
  }

  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const addBos = opts.addBos ?? true;
    const tokens: number[] = [];
    if (addBos) tokens.push(LLAMA2C_BOS_ID);
    // SentencePiece's add_dummy_prefix, as run.c does it: a " " token that the merges below
    // fuse with the first word.
    if (text.length > 0) {
      const dummy = this.lookup.get(' ');
      if (dummy === undefined) throw new TokenizeError('the vocabulary has no " " piece for the dummy prefix');
      tokens.push(dummy);
    }
    this.encodeCodepoints(text, tokens);
    return this.mergePairs(tokens);
  }

  /**
   * run.c's loop over the UTF-8 bytes: group a lead byte with up to 3 continuation bytes, look the
   * group up, else fall back to one token per byte. JS strings always give valid UTF-8 (a lone
   * surrogate becomes U+FFFD), so a group is one code point; we also count UTF-16 units to name
   * the position of a character we cannot encode. Unlike run.c (whose prompt is a C string), a NUL
   * character does not end the text: it is encoded like any other character.
   */
  private encodeCodepoints(text: string, out: number[]): void {
    const bytes = new TextEncoder().encode(text);
    let group = '';
    let utf16Index = 0;
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i];
      if ((b & 0xc0) !== 0x80) group = '';
      group += String.fromCharCode(b);
      const next = i + 1 < bytes.length ? bytes[i + 1] : 0;
      if ((next & 0xc0) === 0x80 && group.length < 4) continue;
      const id = this.lookup.get(group);
      if (id !== undefined) out.push(id);
      else if (this.hasBytePieces) for (let j = 0; j < group.length; j++) out.push(group.charCodeAt(j) + BYTE_PIECE_OFFSET);
      else {
        const ch = new TextDecoder().decode(Uint8Array.from(group, (c) => c.charCodeAt(0)));
        throw new TokenizeError(
          `character ${JSON.stringify(ch)} (U+${(ch.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}) at index ${utf16Index} is not in the vocabulary, which has no byte fallback`,
        );
      }
      utf16Index += group.length === 4 ? 2 : 1;
      group = '';
    }
  }

  /**
   * run.c merges, repeatedly, the adjacent pair whose concatenation is a piece with the highest
   * score (ties: the leftmost pair; only scores above -1e10), until no pair merges. It rescans all
   * pairs each round (quadratic); we keep the candidate pairs in a heap ordered by (score desc,
   * position asc) over a linked list, which picks the same pair each round: positions keep their
   * order because a merge keeps the left node. Stale heap entries are skipped when popped.
   */
  private mergePairs(tokens: number[]): number[] {
    const n = tokens.length;
    if (n < 2) return tokens;
    const ids = Int32Array.from(tokens);
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    const version = new Int32Array(n); // bumped when a node's id changes or it is removed
    for (let i = 0; i < n; i++) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const heap = new PairHeap();
    const consider = (left: number): void => {
      const right = next[left];
      if (left < 0 || right < 0) return;
      const id = this.lookup.get(this.keys[ids[left]] + this.keys[ids[right]]);
      if (id === undefined) return;
      const score = this.scores[id];
      if (!(score > MIN_MERGE_SCORE)) return;
      heap.push({ score, left, right, merged: id, leftVersion: version[left], rightVersion: version[right] });
    };
    for (let i = 0; i < n - 1; i++) consider(i);
    for (;;) {
      const top = heap.pop();
      if (top === undefined) break;
      const { left, right } = top;
      if (version[left] !== top.leftVersion || version[right] !== top.rightVersion || next[left] !== right) continue;
      ids[left] = top.merged;
      version[left]++;
      version[right]++;
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      consider(prev[left]);
      consider(left);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) out.push(ids[i]);
    return out;
  }

  decode(ids: readonly number[], context?: readonly number[]): string {
    return decodeAll(this.createStreamDecoder(context), ids);
  }

  createStreamDecoder(context?: readonly number[]): StreamDecoder {
    return new Llama2cStreamDecoder(this.output, context !== undefined && context.length > 0 ? context[context.length - 1] : -1);
  }
}

interface PieceOutput {
  normal: readonly Uint8Array[];
  afterBos: readonly Uint8Array[];
}

interface PairCandidate {
  score: number;
  left: number;
  right: number;
  merged: number;
  leftVersion: number;
  rightVersion: number;
}

/** Binary max-heap on (score desc, left position asc). */
class PairHeap {
  private readonly items: PairCandidate[] = [];

  private static before(a: PairCandidate, b: PairCandidate): boolean {
    return a.score > b.score || (a.score === b.score && a.left < b.left);
  }

  push(item: PairCandidate): void {
    const items = this.items;
    let i = items.length;
    items.push(item);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!PairHeap.before(items[i], items[parent])) break;
      [items[i], items[parent]] = [items[parent], items[i]];
      i = parent;
    }
  }

  pop(): PairCandidate | undefined {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (items.length > 0 && last !== undefined) {
      items[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let best = i;
        if (l < items.length && PairHeap.before(items[l], items[best])) best = l;
        if (r < items.length && PairHeap.before(items[r], items[best])) best = r;
        if (best === i) break;
        [items[i], items[best]] = [items[best], items[i]];
        i = best;
      }
    }
    return top;
  }
}

/** C's isprint || isspace for an ASCII byte (run.c's safe_printf filter). */
function isPrintableOrSpace(b: number): boolean {
  return (b >= 0x20 && b <= 0x7e) || (b >= 0x09 && b <= 0x0d);
}

/**
 * run.c's `decode(prev, token)` + `safe_printf`, with one deliberate difference: run.c prints
 * each piece on its own and drops single non-printable bytes, which includes every byte >= 0x80
 * that byte fallback produces (so it prints nothing for an emoji). We collect the bytes instead
 * and UTF-8 decode them, holding back an incomplete character until its last byte arrives.
 * Control-character bytes (< 0x20 or 0x7F, other than whitespace) are still dropped as run.c does.
 * BOS and EOS print nothing (run.c stops before printing them).
 */
class Llama2cStreamDecoder implements StreamDecoder {
  private pending: number[] = [];
  private readonly text = new TextDecoder('utf-8', { ignoreBOM: true });

  constructor(
    private readonly output: PieceOutput,
    private prev: number,
  ) {}

  push(id: number): string {
    const vocab = this.output.normal.length;
    if (!Number.isInteger(id) || id < 0 || id >= vocab) {
      throw new RangeError(`token id ${id} is outside the vocabulary (0..${vocab - 1})`);
    }
    const prev = this.prev;
    this.prev = id;
    if (id === LLAMA2C_BOS_ID || id === LLAMA2C_EOS_ID) return '';
    // SentencePiece drops the leading space of the first piece after BOS.
    const piece = (prev === LLAMA2C_BOS_ID ? this.output.afterBos : this.output.normal)[id];
    if (piece.length === 0) return '';
    if (piece.length === 1 && piece[0] < 0x80 && !isPrintableOrSpace(piece[0])) return '';
    for (const b of piece) this.pending.push(b);
    const keep = incompleteTail(this.pending);
    if (keep === this.pending.length) return '';
    const ready = this.pending.splice(0, this.pending.length - keep);
    return this.text.decode(Uint8Array.from(ready));
  }

  flush(): string {
    const rest = this.pending;
    this.pending = [];
    return rest.length > 0 ? this.text.decode(Uint8Array.from(rest)) : '';
  }
}

/**
 * Length of the trailing bytes that begin a UTF-8 character not yet complete (a valid lead byte
 * followed by fewer continuation bytes than it needs, each in its allowed range), else 0. Bytes
 * that can never become valid are not held: they decode to U+FFFD right away.
 */
export function incompleteTail(bytes: readonly number[]): number {
  const len = bytes.length;
  for (let k = 1; k <= 3 && k <= len; k++) {
    const lead = bytes[len - k];
    if ((lead & 0xc0) === 0x80) continue; // continuation byte: keep looking for the lead
    const need = lead >= 0xc2 && lead <= 0xdf ? 2 : lead >= 0xe0 && lead <= 0xef ? 3 : lead >= 0xf0 && lead <= 0xf4 ? 4 : 0;
    if (need <= k) return 0;
    if (k >= 2) {
      const second = bytes[len - k + 1];
      let lo = 0x80;
      let hi = 0xbf;
      if (lead === 0xe0) lo = 0xa0;
      else if (lead === 0xed) hi = 0x9f;
      else if (lead === 0xf0) lo = 0x90;
      else if (lead === 0xf4) hi = 0x8f;
      if (second < lo || second > hi) return 0;
    }
    return k; // later bytes were checked as continuations by the loop
  }
  return 0;
}
