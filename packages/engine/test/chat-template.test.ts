import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatTemplateError, DEFAULT_CHAT_TEMPLATE, renderChat, selectChatTemplate, type ChatMessage } from '../src/chat-template.ts';

// A ChatML template of the kind shipped in tokenizer_config.json (e.g. SmolLM, Qwen).
const CHATML =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// Llama-2 style: BOS token, [INST] markers, raise_exception on bad alternation.
const LLAMA2 =
  "{{ bos_token }}{% for message in messages %}" +
  "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}" +
  '{% endfor %}';

test('default template: the contents joined by one space, nothing else', () => {
  assert.equal(renderChat([{ role: 'user', content: 'Once upon a time' }], { addGenerationPrompt: true }), 'Once upon a time');
  const convo: ChatMessage[] = [
    { role: 'system', content: 'Tell a story.' },
    { role: 'user', content: '' },
    { role: 'user', content: 'Once upon a time' },
    { role: 'assistant', content: 'there was a cat.' },
  ];
  assert.equal(renderChat(convo, { addGenerationPrompt: true }), 'Tell a story. Once upon a time there was a cat.');
  assert.equal(renderChat(convo, { addGenerationPrompt: false }), 'Tell a story. Once upon a time there was a cat.');
  // BOS/EOS are never inserted by the default (the tokenizer adds BOS itself).
  assert.equal(renderChat([{ role: 'user', content: 'x' }], { addGenerationPrompt: true, bosToken: '<s>', eosToken: '</s>' }), 'x');
  // The exported constant is the template used.
  assert.equal(renderChat([{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }], { template: DEFAULT_CHAT_TEMPLATE, addGenerationPrompt: false }), 'a b');
  // Contents are not reinterpreted as template syntax.
  assert.equal(renderChat([{ role: 'user', content: '{{ 1 + 1 }} {% if %}' }], { addGenerationPrompt: true }), '{{ 1 + 1 }} {% if %}');
});

test('a Jinja chat template from tokenizer_config.json', () => {
  const messages: ChatMessage[] = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hi' },
  ];
  assert.equal(
    renderChat(messages, { template: CHATML, addGenerationPrompt: true }),
    '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
  );
  assert.equal(
    renderChat(messages, { template: CHATML, addGenerationPrompt: false }),
    '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n',
  );
  const llama = renderChat(
    [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: 'Hello' },
      { role: 'user', content: 'Story?' },
    ],
    { template: LLAMA2, bosToken: '<s>', eosToken: '</s>', addGenerationPrompt: true },
  );
  assert.equal(llama, '<s>[INST] Hi [/INST] Hello </s>[INST] Story? [/INST]');
});

test('raise_exception in a template is the request\'s fault (ChatTemplateError)', () => {
  assert.throws(
    () => renderChat([{ role: 'assistant', content: 'first' }], { template: LLAMA2, addGenerationPrompt: true }),
    (err: unknown) => err instanceof ChatTemplateError && /alternate/.test(err.message),
  );
});

test('unknown roles and non-string content are rejected', () => {
  const bad = (messages: unknown, pattern: RegExp): void => {
    assert.throws(
      () => renderChat(messages as ChatMessage[], { addGenerationPrompt: true }),
      (err: unknown) => err instanceof ChatTemplateError && pattern.test(err.message),
    );
  };
  bad([{ role: 'wizard', content: 'x' }], /messages\[0\]\.role.*"wizard"/);
  bad([{ role: 'user', content: 'ok' }, { role: 'user', content: 42 }], /messages\[1\]\.content must be a string; got number/);
  bad([{ role: 'user', content: null }], /got null/);
  bad([{ role: 'user', content: [{ type: 'text', text: 'x' }] }], /content must be a string/);
  bad([{ content: 'x' }], /role/);
  bad(['user: hi'], /must be an object/);
  bad([], /must not be empty/);
  bad('hi', /must be an array/);
});

test('a template that does not parse is a plain Error (server configuration), not a 400', () => {
  assert.throws(
    () => renderChat([{ role: 'user', content: 'x' }], { template: '{% for %}', addGenerationPrompt: true }),
    (err: unknown) => err instanceof Error && !(err instanceof ChatTemplateError) && /invalid chat template/.test(err.message),
  );
});

test('selectChatTemplate reads the string or the named list form', () => {
  assert.equal(selectChatTemplate('T'), 'T');
  assert.equal(selectChatTemplate([{ name: 'tool_use', template: 'A' }, { name: 'default', template: 'B' }]), 'B');
  assert.equal(selectChatTemplate([{ name: 'rag', template: 'C' }]), 'C');
  assert.equal(selectChatTemplate(undefined), undefined);
  assert.equal(selectChatTemplate(7), undefined);
});
