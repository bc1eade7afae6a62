// Renders OpenAI-style chat messages into the prompt text a model was trained on. Models that ship
// a Jinja chat template (tokenizer_config.json `chat_template`) use it via @huggingface/jinja;
// models without one (the llama2.c story models) use DEFAULT_CHAT_TEMPLATE.
import { Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface RenderChatOptions {
  /** Jinja chat template; when absent DEFAULT_CHAT_TEMPLATE is used. */
  template?: string;
  bosToken?: string;
  eosToken?: string;
  /** Whether to end with the cue for the assistant's turn (templates read add_generation_prompt). */
  addGenerationPrompt: boolean;
}

/** The request's fault (bad role, bad content, or the template's raise_exception): a 400. */
export class ChatTemplateError extends Error {
  override name = 'ChatTemplateError';
}

export const CHAT_ROLES: readonly string[] = ['system', 'developer', 'user', 'assistant', 'tool'];

/**
 * Default for models without a chat template. Story models (llama2.c) only continue text, so the
 * prompt is the messages' contents, in order, joined by one space, with no role markers and
 * nothing added for the generation prompt; empty contents are skipped. A single user message
 * "Once upon a time" renders exactly as "Once upon a time". The separator is a space, not a
 * newline, because character vocabularies such as babyllama105's have no newline piece.
 */
export const DEFAULT_CHAT_TEMPLATE =
  "{%- set ns = namespace(first=true) -%}" +
  "{%- for message in messages -%}" +
  "{%- if message['content'] -%}" +
  "{%- if not ns.first %} {% endif -%}" +
  "{{- message['content'] -}}" +
  "{%- set ns.first = false -%}" +
  "{%- endif -%}" +
  "{%- endfor -%}";

// Parsing is the costly part of rendering and a server uses one or two templates, so keep the
// parsed ones (bounded, in case templates come from requests).
const parsed = new Map<string, Template>();
const MAX_CACHED_TEMPLATES = 16;

function compile(source: string): Template {
  let template = parsed.get(source);
  if (template === undefined) {
    try {
      template = new Template(source);
    } catch (err) {
      // A template that does not parse is the server's configuration error, not the request's.
      throw new Error(`invalid chat template: ${(err as Error).message}`);
    }
    if (parsed.size >= MAX_CACHED_TEMPLATES) parsed.delete(parsed.keys().next().value as string);
    parsed.set(source, template);
  }
  return template;
}

export function validateMessages(messages: unknown): asserts messages is ChatMessage[] {
  if (!Array.isArray(messages)) throw new ChatTemplateError('messages must be an array');
  if (messages.length === 0) throw new ChatTemplateError('messages must not be empty');
  messages.forEach((m: unknown, i) => {
    if (typeof m !== 'object' || m === null) throw new ChatTemplateError(`messages[${i}] must be an object`);
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== 'string' || !CHAT_ROLES.includes(role)) {
      throw new ChatTemplateError(`messages[${i}].role must be one of ${CHAT_ROLES.join(', ')}; got ${JSON.stringify(role)}`);
    }
    if (typeof content !== 'string') {
      throw new ChatTemplateError(`messages[${i}].content must be a string; got ${content === null ? 'null' : typeof content}`);
    }
  });
}

export function renderChat(messages: ChatMessage[], opts: RenderChatOptions): string {
  validateMessages(messages);
  const template = compile(opts.template ?? DEFAULT_CHAT_TEMPLATE);
  try {
    return template.render({
      // Plain copies: the template sees exactly role and content.
      messages: messages.map(({ role, content }) => ({ role, content })),
      bos_token: opts.bosToken ?? '',
      eos_token: opts.eosToken ?? '',
      add_generation_prompt: opts.addGenerationPrompt,
    });
  } catch (err) {
    // Templates reject conversations they cannot express (raise_exception, e.g. "roles must
    // alternate user/assistant"): that is the request's fault.
    throw new ChatTemplateError(`chat template rejected the messages: ${(err as Error).message}`);
  }
}

/**
 * The default template out of tokenizer_config.json's `chat_template`, which is either a string
 * or a list of named templates ({name, template}); returns the one named "default" (else the
 * first), or undefined when there is none.
 */
export function selectChatTemplate(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    const named = value.filter(
      (v): v is { name: unknown; template: string } => typeof v === 'object' && v !== null && typeof v.template === 'string',
    );
    return (named.find((v) => v.name === 'default') ?? named[0])?.template;
  }
  return undefined;
}
