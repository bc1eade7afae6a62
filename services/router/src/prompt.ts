// Prompts to token ids: the completions `prompt` field (text or ids, one prompt only) and chat
// `messages` (rendered by the chat template, then encoded).
import { renderChat, type ChatMessage } from '../../../packages/engine/src/chat-template.ts';
import type { Tokenizer } from '../../../packages/engine/src/tokenizer/types.ts';
import { ApiError, invalidRequest } from './errors.ts';
import { checkTokenIds } from './sampling-params.ts';
import type { ChatMessageBody } from './schemas.ts';

export interface PromptInput {
  ids: number[];
  /** The prompt text when it was given as text (token-id prompts are decoded on demand). */
  text?: string;
}

export interface ChatTemplateConfig {
  template?: string;
  /** BOS / EOS texts the template may reference as bos_token / eos_token (default ''). */
  bosToken?: string;
  eosToken?: string;
}

/**
 * Encoding is synchronous CPU work (~1 ms per 1,000 characters), so text that cannot fit the context
 * is refused before it is encoded: no real token spans more than this many characters, so longer
 * text has more than maxModelLen tokens (413, as for a prompt counted too long).
 */
export const MAX_CHARS_PER_TOKEN = 64;

function checkChars(chars: number, maxModelLen: number, param: string): void {
  if (chars > maxModelLen * MAX_CHARS_PER_TOKEN) {
    throw new ApiError(
      413,
      `This model's maximum context length is ${maxModelLen} tokens. However, your ${param} (${chars} characters) is far longer than that. Please reduce the length of the ${param}.`,
      { param, code: 'context_length_exceeded' },
    );
  }
}

function encodeWithin(tokenizer: Tokenizer, text: string, maxModelLen: number, param: string, addBos?: boolean): number[] {
  checkChars(text.length, maxModelLen, param);
  return addBos === undefined ? tokenizer.encode(text) : tokenizer.encode(text, { addBos });
}

const isIds = (v: unknown): v is number[] => Array.isArray(v) && v.every((x) => typeof x === 'number');

function nonEmpty(ids: number[], param: string): number[] {
  if (ids.length === 0) throw invalidRequest('The prompt is empty.', param);
  return ids;
}

/** `prompt`: a string, [string], [ids...] or [[ids...]]; batches of several prompts are refused. */
export function completionPrompt(
  prompt: string | unknown[],
  tokenizer: Tokenizer,
  vocabSize: number,
  maxModelLen: number,
): PromptInput {
  if (typeof prompt === 'string') {
    return { ids: nonEmpty(encodeWithin(tokenizer, prompt, maxModelLen, 'prompt'), 'prompt'), text: prompt };
  }
  if (prompt.length === 0) throw invalidRequest('The prompt is empty.', 'prompt');
  if (isIds(prompt)) {
    checkTokenIds(prompt, vocabSize, 'prompt');
    return { ids: [...prompt] };
  }
  if (prompt.every((p) => typeof p === 'string' || isIds(p))) {
    if (prompt.length > 1) {
      throw invalidRequest('Batched prompts are not supported: send one prompt per request.', 'prompt', 'unsupported_parameter');
    }
    return completionPrompt(prompt[0] as string | number[], tokenizer, vocabSize, maxModelLen);
  }
  throw invalidRequest(
    "'prompt' must be a string, an array of one string, an array of token ids, or an array of one array of token ids.",
    'prompt',
  );
}

export function promptText(p: PromptInput, tokenizer: Tokenizer): string {
  return p.text ?? tokenizer.decode(p.ids);
}

/** /tokenize: plain text, with the same length guard. */
export function encodeText(tokenizer: Tokenizer, text: string, maxModelLen: number, addSpecialTokens: boolean): number[] {
  return encodeWithin(tokenizer, text, maxModelLen, 'prompt', addSpecialTokens ? undefined : false);
}

function messageText(m: ChatMessageBody): string {
  if (m.content == null) return '';
  if (typeof m.content === 'string') return m.content;
  return m.content.map((part) => part.text ?? '').join('\n');
}

/**
 * Renders the messages with the chat template and encodes the result. BOS: when the template put
 * the BOS text at the start itself the encoder adds none; otherwise the tokenizer adds its BOS as
 * for any text (so templates without bos_token, like the default one, still get a BOS).
 */
export function chatPrompt(
  messages: ChatMessageBody[],
  tokenizer: Tokenizer,
  cfg: ChatTemplateConfig,
  addGenerationPrompt: boolean,
  maxModelLen: number,
): PromptInput {
  const msgs: ChatMessage[] = messages.map((m) => ({ role: m.role, content: messageText(m) }));
  checkChars(msgs.reduce((n, m) => n + m.content.length, 0), maxModelLen, 'messages'); // before rendering
  const text = renderChat(msgs, {
    template: cfg.template,
    bosToken: cfg.bosToken ?? '',
    eosToken: cfg.eosToken ?? '',
    addGenerationPrompt,
  });
  const templateAddedBos = cfg.bosToken !== undefined && cfg.bosToken !== '' && text.startsWith(cfg.bosToken);
  const ids = encodeWithin(tokenizer, text, maxModelLen, 'messages', templateAddedBos ? false : undefined);
  return { ids: nonEmpty(ids, 'messages'), text };
}
