// POST /v1/chat/completions: messages → chat template → ids; responses in OpenAI's chat shapes.
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { checkModel, type RouterContext } from '../context.ts';
import { invalidRequest } from '../errors.ts';
import { chatPrompt } from '../prompt.ts';
import { respond, type ResponseFormat, type Usage } from '../respond.ts';
import { buildSampling, checkContextLength, checkUnsupported, resolveSlo, stopStrings } from '../sampling-params.ts';
import { chatBodySchema, type ChatBody } from '../schemas.ts';
import { chatLogprobs, type TokenLogprob } from '../text-stream.ts';

function checkChatUnsupported(body: ChatBody): void {
  if (body.top_logprobs != null && body.logprobs !== true) {
    throw invalidRequest('top_logprobs requires logprobs to be true.', 'top_logprobs');
  }
  if (body.tools != null && body.tools.length > 0) {
    throw invalidRequest('tools are not supported.', 'tools', 'unsupported_parameter');
  }
  const format = body.response_format?.type;
  if (format != null && format !== 'text') {
    throw invalidRequest(`response_format type '${format}' is not supported (only 'text').`, 'response_format', 'unsupported_parameter');
  }
}

export async function chatRoutes(app: FastifyInstance, opts: { ctx: RouterContext }): Promise<void> {
  const { ctx } = opts;
  app.post('/v1/chat/completions', { schema: { body: chatBodySchema } }, async (req, reply) => {
    const body = req.body as ChatBody;
    checkModel(ctx, body.model);
    checkUnsupported(body);
    checkChatUnsupported(body);
    const prompt = chatPrompt(body.messages, ctx.tokenizer, ctx.chat, body.add_generation_prompt ?? true, ctx.maxModelLen);
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? ctx.maxModelLen - prompt.ids.length;
    checkContextLength(prompt.ids.length, maxTokens, ctx.maxModelLen, 'messages');
    const wantLogprobs = body.logprobs === true;
    const topN = body.top_logprobs ?? 0;
    const sampling = buildSampling(body, { maxTokens, logprobs: wantLogprobs ? topN : undefined, vocabSize: ctx.vocabSize });
    const stream = body.stream ?? false;
    const includeUsage = stream && (body.stream_options?.include_usage ?? false);

    const id = `chatcmpl-${randomUUID().replace(/-/g, '')}`;
    const created = Math.floor(Date.now() / 1000);
    const chunk = (choices: unknown[]) => ({
      id,
      object: 'chat.completion.chunk',
      created,
      model: ctx.modelName,
      choices,
      ...(includeUsage ? { usage: null } : {}),
    });
    const fmt: ResponseFormat = {
      openingChunks: () => [chunk([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }])],
      deltaChunk: (d) =>
        chunk([
          {
            index: 0,
            delta: { content: d.text },
            logprobs: d.logprob ? { content: chatLogprobs([d.logprob], topN), refusal: null } : null,
            finish_reason: null,
          },
        ]),
      finalChunk: (reason) => chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: reason }]),
      usageChunk: (usage: Usage) => ({ ...chunk([]), usage }),
      body: (text: string, entries: TokenLogprob[], reason, usage: Usage) => ({
        id,
        object: 'chat.completion',
        created,
        model: ctx.modelName,
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: text, refusal: null },
            logprobs: wantLogprobs ? { content: chatLogprobs(entries, topN), refusal: null } : null,
            finish_reason: reason,
          },
        ],
        usage,
      }),
    };
    return respond(
      req,
      reply,
      ctx,
      {
        requestId: req.id,
        endpoint: 'chat',
        promptIds: prompt.ids,
        sampling,
        slo: resolveSlo(body.slo, ctx.defaultSlo),
        stop: stopStrings(body.stop),
        stream,
        arrivedAt: req.pd.arrivedAt,
      },
      fmt,
      { stream, includeUsage, wantLogprobs },
    );
  });
}
