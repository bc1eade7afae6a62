// POST /v1/completions (OpenAI legacy completions, with vLLM's sampling extensions).
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { checkModel, type RouterContext } from '../context.ts';
import { completionPrompt, promptText } from '../prompt.ts';
import { respond, type ResponseFormat, type Usage } from '../respond.ts';
import {
  DEFAULT_COMPLETION_MAX_TOKENS,
  buildSampling,
  checkContextLength,
  checkUnsupported,
  resolveSlo,
  stopStrings,
} from '../sampling-params.ts';
import { completionsBodySchema, type CompletionsBody } from '../schemas.ts';
import { legacyLogprobs, type TokenLogprob } from '../text-stream.ts';

export async function completionsRoutes(app: FastifyInstance, opts: { ctx: RouterContext }): Promise<void> {
  const { ctx } = opts;
  app.post('/v1/completions', { schema: { body: completionsBodySchema } }, async (req, reply) => {
    const body = req.body as CompletionsBody;
    checkModel(ctx, body.model);
    checkUnsupported(body);
    const prompt = completionPrompt(body.prompt, ctx.tokenizer, ctx.vocabSize, ctx.maxModelLen);
    const maxTokens = body.max_tokens ?? DEFAULT_COMPLETION_MAX_TOKENS;
    checkContextLength(prompt.ids.length, maxTokens, ctx.maxModelLen, 'prompt');
    const topN = body.logprobs ?? undefined;
    const sampling = buildSampling(body, { maxTokens, logprobs: topN, vocabSize: ctx.vocabSize });
    const echo = body.echo ? promptText(prompt, ctx.tokenizer) : '';
    const stream = body.stream ?? false;
    const includeUsage = stream && (body.stream_options?.include_usage ?? false);

    const id = `cmpl-${randomUUID().replace(/-/g, '')}`;
    const created = Math.floor(Date.now() / 1000);
    const base = () => ({ id, object: 'text_completion', created, model: ctx.modelName });
    const usageNull = includeUsage ? { usage: null } : {};
    let offset = echo.length;
    const fmt: ResponseFormat = {
      openingChunks: () =>
        echo === '' ? [] : [{ ...base(), choices: [{ index: 0, text: echo, logprobs: null, finish_reason: null }], ...usageNull }],
      deltaChunk: (d) => {
        let logprobs = null;
        if (d.logprob && topN !== undefined) {
          const r = legacyLogprobs([d.logprob], topN, offset);
          offset = r.next;
          logprobs = r.logprobs;
        }
        return { ...base(), choices: [{ index: 0, text: d.text, logprobs, finish_reason: null }], ...usageNull };
      },
      finalChunk: (reason) => ({ ...base(), choices: [{ index: 0, text: '', logprobs: null, finish_reason: reason }], ...usageNull }),
      usageChunk: (usage: Usage) => ({ ...base(), choices: [], usage }),
      body: (text: string, entries: TokenLogprob[], reason, usage: Usage) => ({
        ...base(),
        choices: [
          {
            index: 0,
            text: echo + text,
            logprobs: topN === undefined ? null : legacyLogprobs(entries, topN, echo.length).logprobs,
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
        endpoint: 'completions',
        promptIds: prompt.ids,
        sampling,
        slo: resolveSlo(body.slo, ctx.defaultSlo),
        stop: stopStrings(body.stop),
        stream,
        arrivedAt: req.pd.arrivedAt,
      },
      fmt,
      { stream, includeUsage, wantLogprobs: topN !== undefined },
    );
  });
}
