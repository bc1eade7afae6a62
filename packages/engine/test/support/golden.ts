// The check shared by the golden tests: greedy generation from a golden file's prompt must give its
// prompt ids, generated ids, finish reason and completion text exactly (goldens live in ../shared).
import assert from 'node:assert/strict';
import { generate, type Engine } from '../../src/index.ts';

export interface Golden {
  prompt: string;
  prompt_ids: number[];
  generated_ids: number[];
  positions: number;
  stop: string;
  completion_text: string;
}

export async function assertGreedyGolden(engine: Engine, golden: Golden): Promise<void> {
  const promptIds = engine.tokenizer.encode(golden.prompt);
  assert.deepEqual(promptIds, golden.prompt_ids);
  const maxTokens = golden.positions + 1 - promptIds.length;
  const result = await generate(engine, promptIds, { temperature: 0, topK: 0, topP: 1, maxTokens });
  // A golden that ends at BOS lists it; generation stops before emitting it.
  const expected: number[] = golden.stop === 'bos' ? golden.generated_ids.slice(0, -1) : golden.generated_ids;
  assert.deepEqual(result.ids, expected);
  assert.equal(result.finishReason, golden.stop === 'bos' ? 'stop' : 'length');
  assert.equal(engine.tokenizer.decode(result.ids, promptIds), golden.completion_text);
}
