// Operational routes: liveness, readiness, the worker registry, and vLLM-style tokenize/detokenize.
import type { FastifyInstance } from 'fastify';
import { checkModel, type RouterContext } from '../context.ts';
import { invalidRequest } from '../errors.ts';
import { chatPrompt, encodeText } from '../prompt.ts';
import { checkTokenIds } from '../sampling-params.ts';
import { detokenizeBodySchema, tokenizeBodySchema, type DetokenizeBody, type TokenizeBody } from '../schemas.ts';

export async function adminRoutes(app: FastifyInstance, opts: { ctx: RouterContext }): Promise<void> {
  const { ctx } = opts;

  /** Liveness: 200 as long as the process serves HTTP. */
  app.get('/health', async () => ({ status: 'ok' }));

  /**
   * Readiness: 200 when the backend can serve (a prefill- and a decode-capable worker), else 503.
   * `?min_workers=N` also waits for N healthy workers (`pdserve up` waits for all it started, so
   * that its `ready` line means the cluster that was asked for).
   */
  app.get('/ready', { schema: { querystring: { type: 'object', properties: { min_workers: { type: 'string', pattern: '^[0-9]{1,6}$' } } } } }, async (req, reply) => {
    // (A string: this app's validator does not coerce types, and a query string is text.)
    const min = Number((req.query as { min_workers?: string }).min_workers ?? 0);
    const healthy = min > 0 ? ctx.backend.workers().filter((w) => w.healthy).length : 0;
    if (ctx.backend.ready() && healthy >= min) return { status: 'ready' };
    return reply.code(503).send({ status: 'not_ready', ...(min > 0 ? { healthy_workers: healthy, min_workers: min } : {}) });
  });

  app.get('/workers', async () => ({ workers: ctx.backend.workers() }));

  app.post('/tokenize', { schema: { body: tokenizeBodySchema } }, async (req) => {
    const body = req.body as TokenizeBody;
    checkModel(ctx, body.model, false);
    let tokens: number[];
    if (body.messages !== undefined) {
      if (body.prompt !== undefined) throw invalidRequest('Give either prompt or messages, not both.', 'prompt');
      tokens = chatPrompt(body.messages, ctx.tokenizer, ctx.chat, body.add_generation_prompt ?? true, ctx.maxModelLen).ids;
    } else if (body.prompt !== undefined) {
      tokens = encodeText(ctx.tokenizer, body.prompt, ctx.maxModelLen, body.add_special_tokens ?? true);
    } else {
      throw invalidRequest("'prompt' or 'messages' is required.", 'prompt');
    }
    return { tokens, count: tokens.length, max_model_len: ctx.maxModelLen };
  });

  app.post('/detokenize', { schema: { body: detokenizeBodySchema } }, async (req) => {
    const body = req.body as DetokenizeBody;
    checkModel(ctx, body.model, false);
    checkTokenIds(body.tokens, ctx.vocabSize, 'tokens');
    return { prompt: ctx.tokenizer.decode(body.tokens) };
  });
}
