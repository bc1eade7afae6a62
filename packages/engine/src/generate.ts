// One request from prompt ids to finished output, on one engine: what `pdserve generate` runs and
// what the tests compare with the reference implementation and with the cluster.
import { randomUUID } from 'node:crypto';
import type { Engine } from './engine.ts';
import { Sampler, type SampledToken, type SamplingParams } from './sampling/sampler.ts';

export interface GenerateOptions extends SamplingParams {
  maxTokens: number;
  /** Ids that end generation (not included in the output); defaults to the model's EOS ids. */
  stopTokenIds?: number[];
}

export interface GenerateResult {
  promptIds: number[];
  ids: number[];
  tokens: SampledToken[];
  finishReason: 'stop' | 'length';
}

export async function generate(engine: Engine, promptIds: number[], opts: GenerateOptions): Promise<GenerateResult> {
  const stop = new Set(opts.stopTokenIds ?? engine.config.generation.eos_token_ids);
  // The context bounds output too: stop at the model's length even if maxTokens asks for more.
  const maxTokens = Math.min(opts.maxTokens, engine.maxModelLen - promptIds.length + 1);
  engine.checkLength(promptIds.length);
  engine.checkTokenIds(promptIds);
  const sampler = new Sampler(opts);
  const seq = engine.newSequence(randomUUID());
  const tokens: SampledToken[] = [];
  try {
    let logits = await engine.prefill(seq, promptIds);
    for (;;) {
      const next = sampler.sample(logits, 0, engine.vocabSize);
      if (stop.has(next.id)) return { promptIds, ids: tokens.map((t) => t.id), tokens, finishReason: 'stop' };
      tokens.push(next);
      if (tokens.length >= maxTokens || seq.length >= engine.maxModelLen) break;
      logits = await engine.decode([{ seq, token: next.id }]);
    }
    return { promptIds, ids: tokens.map((t) => t.id), tokens, finishReason: 'length' };
  } finally {
    engine.release(seq);
  }
}
