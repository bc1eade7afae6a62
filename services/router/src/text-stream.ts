// Generated token ids → text deltas: the tokenizer's stream decoder (never half a character), then
// the stop-string matcher (the stop string and anything after it are never emitted). Also the
// per-token logprob entries and their two OpenAI formats (legacy completions and chat).
import { StopMatcher } from '../../../packages/engine/src/sampling/stop.ts';
import type { StreamDecoder, Tokenizer } from '../../../packages/engine/src/tokenizer/types.ts';
import type { TokenEvent } from './backend.ts';

export interface TokenLogprob {
  id: number;
  /** The token's own text (decoded alone, after the ids before it). */
  text: string;
  /** null when the backend sent none. */
  logprob: number | null;
  /** The backend's alternatives, best first. */
  top: Array<{ id: number; text: string; logprob: number }>;
}

export interface TextDelta {
  text: string;
  /** The entry of the token that produced this delta, when logprobs were asked for. */
  logprob?: TokenLogprob;
}

/** How many preceding ids are given as context when decoding one token's text. */
const CONTEXT_IDS = 8;

export class TextStream {
  private readonly decoder: StreamDecoder;
  private readonly matcher: StopMatcher;
  private readonly context: number[];

  constructor(
    private readonly tokenizer: Tokenizer,
    promptIds: readonly number[],
    stop: readonly string[],
    private readonly wantLogprobs: boolean,
  ) {
    this.context = promptIds.slice(-CONTEXT_IDS);
    this.decoder = tokenizer.createStreamDecoder(this.context);
    this.matcher = new StopMatcher(stop);
  }

  /** A stop string matched: the text is over. */
  get stopped(): boolean {
    return this.matcher.stopped;
  }

  push(ev: TokenEvent): TextDelta {
    const logprob = this.wantLogprobs ? this.logprobEntry(ev) : undefined;
    this.context.push(ev.id);
    if (this.context.length > CONTEXT_IDS) this.context.shift();
    const text = this.decoder.push(ev.id);
    const emit = this.matcher.stopped ? '' : this.matcher.push(text).emit;
    return logprob ? { text: emit, logprob } : { text: emit };
  }

  /** The generation ended (not by a stop string): the text still held back by decoder and matcher. */
  finish(): string {
    if (this.matcher.stopped) return '';
    const r = this.matcher.push(this.decoder.flush());
    return r.stopped ? r.emit : r.emit + this.matcher.flush();
  }

  private logprobEntry(ev: TokenEvent): TokenLogprob {
    const text = (id: number) => this.tokenizer.decode([id], this.context);
    return {
      id: ev.id,
      text: text(ev.id),
      logprob: ev.logprob ?? null,
      top: (ev.topLogprobs ?? []).map((t) => ({ id: t.id, text: text(t.id), logprob: t.logprob })),
    };
  }
}

/** Legacy completions logprobs: {tokens, token_logprobs, top_logprobs, text_offset}. */
export interface LegacyLogprobs {
  tokens: string[];
  token_logprobs: Array<number | null>;
  top_logprobs: Array<Record<string, number> | null>;
  text_offset: number[];
}

/**
 * Formats entries in the completions format. `topN` alternatives per token plus the chosen token
 * (OpenAI: "up to logprobs+1 elements"); `offset` is where the first token's text starts in the
 * choice's text (the prompt's length with echo). Returns the next offset too, for streaming.
 */
export function legacyLogprobs(entries: readonly TokenLogprob[], topN: number, offset: number): { logprobs: LegacyLogprobs; next: number } {
  const out: LegacyLogprobs = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  for (const e of entries) {
    out.tokens.push(e.text);
    out.token_logprobs.push(e.logprob);
    const top: Record<string, number> = {};
    for (const t of e.top.slice(0, topN)) if (!(t.text in top)) top[t.text] = t.logprob;
    if (!(e.text in top) && e.logprob !== null) top[e.text] = e.logprob;
    out.top_logprobs.push(top);
    out.text_offset.push(offset);
    offset += e.text.length;
  }
  return { logprobs: out, next: offset };
}

export interface ChatTokenLogprob {
  token: string;
  logprob: number | null;
  bytes: number[];
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }>;
}

const utf8 = (s: string) => [...Buffer.from(s, 'utf8')];

/** Chat logprobs `content` entries, with `topN` alternatives each. */
export function chatLogprobs(entries: readonly TokenLogprob[], topN: number): ChatTokenLogprob[] {
  return entries.map((e) => ({
    token: e.text,
    logprob: e.logprob,
    bytes: utf8(e.text),
    top_logprobs: e.top.slice(0, topN).map((t) => ({ token: t.text, logprob: t.logprob, bytes: utf8(t.text) })),
  }));
}
