// The response side shared by /v1/completions and /v1/chat/completions: run the generation and
// either collect it into one JSON body or stream it as SSE chunks. The endpoint-specific shapes come
// from a ResponseFormat.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { FinishReason } from './backend.ts';
import type { RouterContext } from './context.ts';
import { toApiError } from './errors.ts';
import { Generation, type GenerationSpec } from './generation.ts';
import { SseStream } from './sse.ts';
import type { TextDelta, TokenLogprob } from './text-stream.ts';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** As OpenAI reports it: prompt tokens served from a (prefix) cache. */
  prompt_tokens_details: { cached_tokens: number };
}

export interface ResponseFormat {
  /** Chunks sent when the stream opens (chat: the role; completions with echo: the prompt). */
  openingChunks(): unknown[];
  deltaChunk(d: TextDelta): unknown;
  finalChunk(reason: FinishReason): unknown;
  usageChunk(usage: Usage): unknown;
  /** The non-streaming body. */
  body(text: string, logprobs: TokenLogprob[], reason: FinishReason, usage: Usage): unknown;
}

export interface RespondOptions {
  stream: boolean;
  includeUsage: boolean;
  wantLogprobs: boolean;
}

export async function respond(
  req: FastifyRequest,
  reply: FastifyReply,
  ctx: RouterContext,
  spec: GenerationSpec,
  fmt: ResponseFormat,
  opts: RespondOptions,
): Promise<unknown> {
  const res = reply.raw;
  const client = new AbortController();
  const gen = new Generation(
    { backend: ctx.backend, tokenizer: ctx.tokenizer, observer: ctx.observer, log: req.log },
    spec,
    client.signal,
  );
  req.pd.generation = gen;
  // 'close' before the response finished = the client went away (works before and during streaming).
  res.once('close', () => {
    if (!res.writableFinished) client.abort();
    gen.complete();
  });
  if (res.closed || res.destroyed) client.abort(); // gone while the request was being prepared
  const usage = (o: { completionTokens: number; cachedTokens: number }): Usage => ({
    prompt_tokens: spec.promptIds.length,
    completion_tokens: o.completionTokens,
    total_tokens: spec.promptIds.length + o.completionTokens,
    prompt_tokens_details: { cached_tokens: o.cachedTokens },
  });

  if (!opts.stream) {
    let text = '';
    const logprobs: TokenLogprob[] = [];
    const outcome = await gen.run((d) => {
      text += d.text;
      if (d.logprob) logprobs.push(d.logprob);
    }, opts.wantLogprobs);
    if (outcome.clientGone) {
      gen.complete();
      return reply.hijack();
    }
    return fmt.body(text, logprobs, outcome.finishReason, usage(outcome));
  }

  const sse = new SseStream(reply);
  let opened = false;
  const openStream = async () => {
    if (opened) return;
    opened = true;
    for (const c of fmt.openingChunks()) await sse.send(c);
  };
  try {
    const outcome = await gen.run(async (d) => {
      await openStream();
      await sse.send(fmt.deltaChunk(d));
    }, opts.wantLogprobs);
    if (outcome.clientGone) {
      gen.complete(); // 'close' came before the outcome existed
      if (!sse.isOpen) reply.hijack();
      return;
    }
    await openStream();
    await sse.send(fmt.finalChunk(outcome.finishReason));
    if (opts.includeUsage) await sse.send(fmt.usageChunk(usage(outcome)));
    sse.done();
  } catch (err) {
    if (!sse.isOpen) throw err; // nothing sent yet: a plain HTTP error from the error handler
    gen.fail();
    const e = toApiError(err);
    req.log.error({ err }, 'generation failed after streaming started');
    ctx.observer.call('onError', e.status, e.metricCode, { requestId: req.id, started: true, message: e.message });
    sse.fail(e);
  }
}
