// Synthetic workloads. Every length is drawn uniformly (integers, both ends included) from the
// ranges below with a seeded generator, then scaled, overridden and clipped:
//
//   chat       prompt  64..256 tokens, output 128..256 tokens   (short question, medium answer)
//   summarize  prompt 512..1024 tokens, output 16..64 tokens    (long document, short summary)
//   mixed      each request is chat or summarize with probability 1/2 (its own seeded stream)
//   prefix     a shared system prompt of --prefix-len tokens (default 1024; --prefix-groups N
//              distinct ones, request i using number i mod N) plus a user turn of 16..64 tokens,
//              output 32..128 tokens: what automatic prefix caching and prefix-aware routing serve
//              (the prompt length is prefix + turn; --input-len fixes the turn)
//   multiturn  conversations of --turns turns (default 4): the first user turn 64..256 tokens, each
//              later one 16..64, every answer 32..128; turn t's prompt is the whole conversation so
//              far (every earlier user turn and answer) plus its own user turn, and it is sent only
//              when turn t-1's answer has arrived (conversations.ts), as a chat client does. On
//              completions the answers in the history are seeded token ids of the answer's length
//              (the API returns text, not ids), so prompt lengths stay exact; on chat they are the
//              server's real replies. Request i is turn i mod turns of conversation i div turns; a
//              conversation that would outgrow max_model_len ends early (its later turns dropped)
//   shifting   the mix changes mid-run: consecutive phases of equal size (by request index), by
//              default summarize, chat, summarize (--phases chooses them), so a planner's
//              adaptation shows; the report gives the attainment of each phase
//
//   1. scale:    len = max(1, round(len * scale))       (--input-len-scale / --output-len-scale)
//   2. override: --input-len / --output-len replace the drawn length for every request
//   3. clip:     when prompt + output > max_model_len both shrink proportionally (each >= 1), so
//                a small-context model keeps the workload's prompt/output balance
//
// Completions prompts are arrays of token ids, uniform in [minTokenId, vocabSize - 1], which the
// server takes verbatim, so prompt lengths are exact. Chat prompts are text (the chat API has no
// token-id input): `promptLen` random words from a fixed list of common English words. Such a word
// is usually one token, but tokenizers and the chat template add some, so chat prompt lengths are
// approximate; the server's `usage.prompt_tokens` gives the true count.
import { Rng, STREAM } from './rng.ts';

export type WorkloadName = 'chat' | 'summarize' | 'mixed' | 'shifting' | 'prefix' | 'multiturn';
export const WORKLOADS: readonly WorkloadName[] = ['chat', 'summarize', 'mixed', 'shifting', 'prefix', 'multiturn'];
export type RequestKind = 'chat' | 'summarize' | 'prefix' | 'multiturn';
export const DEFAULT_PREFIX_LEN = 1024;
export const DEFAULT_TURNS = 4;

/** A phase of the shifting workload: any workload but shifting itself. */
export type PhaseWorkload = Exclude<WorkloadName, 'shifting' | 'prefix' | 'multiturn'>;
export const DEFAULT_PHASES: readonly PhaseWorkload[] = ['summarize', 'chat', 'summarize'];

/** Parses a --phases list ("summarize,chat,summarize"). */
export function parsePhases(text: string): PhaseWorkload[] {
  const phases = text.split(',').map((s) => s.trim()).filter((s) => s !== '');
  const bad = phases.filter((p) => p === 'shifting' || p === 'prefix' || p === 'multiturn' || !WORKLOADS.includes(p as WorkloadName));
  if (phases.length === 0 || bad.length) throw new RangeError(`invalid phases '${text}': a comma-separated list of chat, summarize, mixed`);
  return phases as PhaseWorkload[];
}

/** Phase of request i of n when the run has `phases` phases of equal size (the last takes the remainder). */
export function phaseOf(i: number, n: number, phases: number): number {
  return Math.min(phases - 1, Math.floor((i * phases) / Math.max(1, n)));
}

export interface LengthRange {
  min: number;
  max: number;
}

export interface WorkloadSpec {
  input: LengthRange;
  output: LengthRange;
}

export const WORKLOAD_SPECS: Record<RequestKind, WorkloadSpec> = {
  chat: { input: { min: 64, max: 256 }, output: { min: 128, max: 256 } },
  summarize: { input: { min: 512, max: 1024 }, output: { min: 16, max: 64 } },
  // The user turn after the shared prefix.
  prefix: { input: { min: 16, max: 64 }, output: { min: 32, max: 128 } },
  // A later user turn of a conversation; the first one is drawn from MULTITURN_FIRST_INPUT.
  multiturn: { input: { min: 16, max: 64 }, output: { min: 32, max: 128 } },
};
export const MULTITURN_FIRST_INPUT: LengthRange = { min: 64, max: 256 };

export interface WorkloadOptions {
  workload: WorkloadName;
  n: number;
  seed: number;
  /**
   * Seed of the prompts' token content (default `seed`); lengths, mix and shared prefixes stay
   * those of `seed`. A sweep gives each rate its own, so that a server's prefix cache cannot serve a
   * rate's prompts from the rate before.
   */
  contentSeed?: number;
  /** Which seeded stream to draw from (the warmup uses its own so it never shifts the run). */
  stream?: number;
  inputLenScale?: number;
  outputLenScale?: number;
  inputLen?: number;
  outputLen?: number;
  /** Clip prompt + output to this many tokens when given. */
  maxModelLen?: number;
  /** The shifting workload's phases (default DEFAULT_PHASES); ignored by the other workloads. */
  phases?: readonly PhaseWorkload[];
  /** The prefix workload: tokens of the shared system prompt (default DEFAULT_PREFIX_LEN) and how many distinct ones (default 1). */
  prefixLen?: number;
  prefixGroups?: number;
  /** The multiturn workload: turns per conversation (default DEFAULT_TURNS). */
  turns?: number;
  /** 'completions' → token-id prompts; 'chat' → word prompts. */
  endpoint: 'completions' | 'chat';
  vocabSize: number;
  minTokenId: number;
}

export interface BenchRequest {
  index: number;
  /** Which base workload produced it (for mixed). */
  kind: RequestKind;
  /** The prefix workload: which shared system prompt it starts with, and its length in tokens. */
  prefixGroup?: number;
  prefixLen?: number;
  /** The shifting workload's phase (0-based). */
  phase?: number;
  /** The multiturn workload: which conversation, which turn of it (0-based), and its own user turn's length. */
  conversation?: number;
  turn?: number;
  userLen?: number;
  /**
   * The multiturn workload on chat: this turn's own user message (promptText is unused); the
   * runner sends it after the conversation's earlier messages and real replies.
   */
  userText?: string;
  /** Set by the runner just before sending a multiturn chat turn: the conversation so far plus userText. */
  messages?: ChatMessage[];
  promptLen: number;
  outputLen: number;
  /** True when max_model_len clipping shortened it. */
  clipped: boolean;
  promptTokenIds?: number[];
  promptText?: string;
}

export interface ChatMessage {
  role: 'user' | 'assistant';
  content: string;
}

export interface Lengths {
  kind: RequestKind;
  phase?: number;
  conversation?: number;
  turn?: number;
  /** multiturn: this turn's own user tokens (promptLen is the whole history plus them). */
  userLen?: number;
  promptLen: number;
  outputLen: number;
  clipped: boolean;
}

/** Shrinks prompt and output proportionally so that they fit in maxModelLen (each stays >= 1). */
export function clipLengths(promptLen: number, outputLen: number, maxModelLen: number | undefined): [number, number, boolean] {
  if (maxModelLen === undefined || promptLen + outputLen <= maxModelLen) return [promptLen, outputLen, false];
  if (maxModelLen < 2) throw new RangeError(`max_model_len ${maxModelLen} leaves no room for a prompt and an output`);
  const f = maxModelLen / (promptLen + outputLen);
  let p = Math.max(1, Math.floor(promptLen * f));
  let o = Math.max(1, Math.floor(outputLen * f));
  while (p + o > maxModelLen) {
    if (p >= o && p > 1) p--;
    else o--;
  }
  return [p, o, true];
}

function scaled(len: number, scale: number | undefined): number {
  return scale === undefined ? len : Math.max(1, Math.round(len * scale));
}

/** The (prompt, output) lengths of n requests, deterministic in the seed. */
export function generateLengths(opts: Omit<WorkloadOptions, 'endpoint' | 'vocabSize' | 'minTokenId'>): Lengths[] {
  const stream = opts.stream ?? STREAM.workload;
  const rng = new Rng(opts.seed, stream);
  const mix = new Rng(opts.seed, stream + 1);
  for (const [name, v] of [['inputLen', opts.inputLen], ['outputLen', opts.outputLen]] as const) {
    if (v !== undefined && !(Number.isInteger(v) && v >= 1)) throw new RangeError(`${name} must be an integer >= 1 (got ${v})`);
  }
  for (const [name, v] of [['inputLenScale', opts.inputLenScale], ['outputLenScale', opts.outputLenScale]] as const) {
    if (v !== undefined && !(v > 0 && Number.isFinite(v))) throw new RangeError(`${name} must be > 0 (got ${v})`);
  }
  if (!WORKLOADS.includes(opts.workload)) throw new RangeError(`unknown workload '${opts.workload}' (one of ${WORKLOADS.join(', ')})`);
  if (opts.workload === 'multiturn') return multiturnLengths(opts, rng);
  const phases = opts.workload === 'shifting' ? (opts.phases ?? DEFAULT_PHASES) : undefined;
  const out: Lengths[] = [];
  for (let i = 0; i < opts.n; i++) {
    const phase = phases ? phaseOf(i, opts.n, phases.length) : undefined;
    const workload: Exclude<WorkloadName, 'shifting'> = phases ? phases[phase!]! : (opts.workload as Exclude<WorkloadName, 'shifting'>);
    // Always draw the mix so a phase boundary never shifts the other streams.
    const coin = mix.float();
    const kind: RequestKind = workload === 'mixed' ? (coin < 0.5 ? 'chat' : 'summarize') : workload;
    const spec = WORKLOAD_SPECS[kind];
    // Always draw both so overriding one length never shifts the other's sequence.
    const drawnIn = rng.int(spec.input.min, spec.input.max);
    const drawnOut = rng.int(spec.output.min, spec.output.max);
    const p0 = (kind === 'prefix' ? prefixLenOf(opts) : 0) + (opts.inputLen ?? scaled(drawnIn, opts.inputLenScale));
    const o0 = opts.outputLen ?? scaled(drawnOut, opts.outputLenScale);
    const [promptLen, outputLen, clipped] = clipLengths(p0, o0, opts.maxModelLen);
    out.push(phase === undefined ? { kind, promptLen, outputLen, clipped } : { kind, phase, promptLen, outputLen, clipped });
  }
  return out;
}

/** Turns per conversation, validated. */
export function turnsOf(opts: { turns?: number }): number {
  const t = opts.turns ?? DEFAULT_TURNS;
  if (!(Number.isInteger(t) && t >= 1)) throw new RangeError(`turns must be an integer >= 1 (got ${t})`);
  return t;
}

/**
 * The multiturn lengths: request i is turn i mod turns of conversation i div turns; its prompt is
 * every earlier user turn and answer of its conversation plus its own user turn. A turn that would
 * not fit in maxModelLen ends its conversation (the turn and the rest are dropped; a first turn is
 * clipped instead, as in the other workloads).
 */
function multiturnLengths(opts: Omit<WorkloadOptions, 'endpoint' | 'vocabSize' | 'minTokenId'>, rng: Rng): Lengths[] {
  const turns = turnsOf(opts);
  const out: Lengths[] = [];
  let history = 0;
  let ended = false;
  for (let i = 0; i < opts.n; i++) {
    const conversation = Math.floor(i / turns);
    const turn = i % turns;
    if (turn === 0) { history = 0; ended = false; }
    const spec = turn === 0 ? MULTITURN_FIRST_INPUT : WORKLOAD_SPECS.multiturn.input;
    // Always draw both so an override or a dropped turn never shifts the other requests' lengths.
    const drawnIn = rng.int(spec.min, spec.max);
    const drawnOut = rng.int(WORKLOAD_SPECS.multiturn.output.min, WORKLOAD_SPECS.multiturn.output.max);
    if (ended) continue;
    const user = opts.inputLen ?? scaled(drawnIn, opts.inputLenScale);
    const output = opts.outputLen ?? scaled(drawnOut, opts.outputLenScale);
    if (turn === 0) {
      const [promptLen, outputLen, clipped] = clipLengths(user, output, opts.maxModelLen);
      out.push({ kind: 'multiturn', conversation, turn, userLen: promptLen, promptLen, outputLen, clipped });
      history = promptLen + outputLen;
      continue;
    }
    if (opts.maxModelLen !== undefined && history + user + output > opts.maxModelLen) {
      ended = true;
      continue;
    }
    out.push({ kind: 'multiturn', conversation, turn, userLen: user, promptLen: history + user, outputLen: output, clipped: false });
    history += user + output;
  }
  return out;
}

function prefixLenOf(opts: { prefixLen?: number }): number {
  const n = opts.prefixLen ?? DEFAULT_PREFIX_LEN;
  if (!(Number.isInteger(n) && n >= 0)) throw new RangeError(`prefixLen must be an integer >= 0 (got ${n})`);
  return n;
}

/** Common short English words for chat prompts (each is one token in most BPE vocabularies). */
export const WORDS: readonly string[] = (
  'the of and to in is you that it he was for on are as with his they at be this have from or one had by ' +
  'word but not what all were we when your can said there use an each which she do how their if will up ' +
  'other about out many then them these so some her would make like him into time has look two more write ' +
  'go see number no way could people my than first water been call who oil its now find long down day did ' +
  'get come made may part over new sound take only little work know place year live me back give most very ' +
  'after thing our just name good sentence man think say great where help through much before line right too ' +
  'mean old any same tell boy follow came want show also around form three small set put end does another ' +
  'well large must big even such because turn here why ask went men read need land different home us move ' +
  'try kind hand picture again change off play spell air away animal house point page letter mother answer'
).split(' ');

/** Builds the requests: lengths plus token-id (completions) or word (chat) prompts. */
export function generateRequests(opts: WorkloadOptions): BenchRequest[] {
  const lengths = generateLengths(opts);
  const stream = opts.stream ?? STREAM.workload;
  const tokRng = new Rng(opts.contentSeed ?? opts.seed, stream + 2);
  const lo = opts.minTokenId;
  const hi = opts.vocabSize - 1;
  if (opts.endpoint === 'completions' && !(Number.isInteger(lo) && Number.isInteger(hi) && lo >= 0 && lo <= hi)) {
    throw new RangeError(`no token ids to draw from: min-token-id ${lo}, vocab size ${opts.vocabSize}`);
  }
  if (opts.workload === 'multiturn') return multiturnRequests(lengths, opts, tokRng);
  // The prefix workload's shared system prompts: from their own stream, the same for every request
  // of a group (a request clipped below the prefix keeps the start of it).
  const groups = opts.workload === 'prefix' ? Math.max(1, opts.prefixGroups ?? 1) : 0;
  if (!Number.isInteger(groups)) throw new RangeError(`prefixGroups must be an integer >= 1 (got ${opts.prefixGroups})`);
  const shared = Array.from({ length: groups }, (_, g) => {
    const rng = new Rng(opts.seed, STREAM.workload + 16 + g);
    const len = prefixLenOf(opts);
    return opts.endpoint === 'completions'
      ? Array.from({ length: len }, () => rng.int(lo, hi))
      : Array.from({ length: len }, () => rng.int(0, WORDS.length - 1));
  });
  return lengths.map((l, index) => {
    const req: BenchRequest = { index, ...l };
    const prefix = groups > 0 ? shared[index % groups].slice(0, l.promptLen) : [];
    if (groups > 0) { req.prefixGroup = index % groups; req.prefixLen = prefix.length; }
    if (opts.endpoint === 'completions') {
      const ids = new Array<number>(l.promptLen);
      for (let k = 0; k < l.promptLen; k++) ids[k] = k < prefix.length ? prefix[k] : tokRng.int(lo, hi);
      req.promptTokenIds = ids;
    } else {
      const words = new Array<string>(l.promptLen);
      for (let k = 0; k < l.promptLen; k++) words[k] = WORDS[k < prefix.length ? prefix[k] : tokRng.int(0, WORDS.length - 1)];
      req.promptText = words.join(' ');
    }
    return req;
  });
}

/**
 * Multiturn prompts. Completions: the whole conversation as token ids, each earlier answer stood in
 * for by seeded ids of its length, so turn t's prompt starts with turn t-1's prompt. Chat: each
 * request holds only its own user message (userText); the runner adds the history and the real replies.
 */
function multiturnRequests(lengths: Lengths[], opts: WorkloadOptions, tokRng: Rng): BenchRequest[] {
  const lo = opts.minTokenId;
  const hi = opts.vocabSize - 1;
  let history: number[] = [];
  return lengths.map((l, index) => {
    const req: BenchRequest = { index, ...l };
    const userLen = l.userLen ?? l.promptLen;
    if (opts.endpoint === 'completions') {
      if (l.turn === 0) history = [];
      const user = Array.from({ length: userLen }, () => tokRng.int(lo, hi));
      req.promptTokenIds = history.concat(user);
      const answer = Array.from({ length: l.outputLen }, () => tokRng.int(lo, hi));
      history = req.promptTokenIds.concat(answer);
    } else {
      req.userText = Array.from({ length: userLen }, () => WORDS[tokRng.int(0, WORDS.length - 1)]).join(' ');
    }
    return req;
  });
}
