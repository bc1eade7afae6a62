// What the route plugins share: the served model, the backend, the tokenizer, the observer; and the
// per-request state fastify carries (arrival time, the generation once it started).
import type { FastifyRequest } from 'fastify';
import type { Tokenizer } from '../../../packages/engine/src/tokenizer/types.ts';
import type { Backend, LatencySlo } from './backend.ts';
import { modelNotFound } from './errors.ts';
import type { Generation } from './generation.ts';
import type { SafeObserver } from './observer.ts';
import type { ChatTemplateConfig } from './prompt.ts';

export interface RouterContext {
  backend: Backend;
  tokenizer: Tokenizer;
  modelName: string;
  maxModelLen: number;
  vocabSize: number;
  chat: ChatTemplateConfig;
  defaultSlo?: LatencySlo;
  observer: SafeObserver;
  /** Unix seconds the app was built (the model's `created`). */
  createdAt: number;
}

export interface RequestState {
  /** performance.now() at arrival. */
  arrivedAt: number;
  generation?: Generation;
}

declare module 'fastify' {
  interface FastifyRequest {
    pd: RequestState;
  }
}

/**
 * For the error handler: marks the request's generation (if any) as failed, so that it is reported
 * once, as an error; returns whether it had started (onRequestStart was called).
 */
export function failGeneration(req: FastifyRequest): boolean {
  const gen = req.pd?.generation;
  if (gen === undefined) return false;
  gen.fail();
  return gen.started;
}

/** 404 model_not_found unless `model` is the served model's name (absent is fine where optional). */
export function checkModel(ctx: RouterContext, model: string | null | undefined, required = true): void {
  if (model == null && !required) return;
  if (model !== ctx.modelName) throw modelNotFound(String(model));
}
