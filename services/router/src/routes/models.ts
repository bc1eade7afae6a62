// GET /v1/models: the one served model, with vLLM's max_model_len and the vocabulary size.
import type { FastifyInstance } from 'fastify';
import { checkModel, type RouterContext } from '../context.ts';

export async function modelsRoutes(app: FastifyInstance, opts: { ctx: RouterContext }): Promise<void> {
  const { ctx } = opts;
  const card = () => ({
    id: ctx.modelName,
    object: 'model',
    created: ctx.createdAt,
    owned_by: 'pdserve',
    max_model_len: ctx.maxModelLen,
    vocab_size: ctx.vocabSize,
  });
  app.get('/v1/models', async () => ({ object: 'list', data: [card()] }));
  app.get<{ Params: { model: string } }>('/v1/models/:model', async (req) => {
    checkModel(ctx, req.params.model);
    return card();
  });
}
