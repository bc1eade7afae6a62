// Measures how far a model's predictions move when its weights are stored differently: teacher-forced
// next-token predictions over a fixed text (top-1 agreement between two models, perplexity) and
// greedy agreement from a prompt. Used by scripts/quality.ts (BENCHMARKS.md) and the dtype tests.
import type { Engine } from './engine.ts';
import { generate } from './generate.ts';

export interface TeacherForced {
  /** argmax of the logits after each prefix ids[0..i], for i = 0 .. n-2 */
  top1: number[];
  /** -log p(ids[i+1] | ids[0..i]) */
  nll: number[];
}

/** Feeds `ids` one token at a time (the decode path) and records each step's prediction. */
export async function teacherForced(engine: Engine, ids: number[]): Promise<TeacherForced> {
  const seq = engine.newSequence('teacher-forced');
  const top1: number[] = [];
  const nll: number[] = [];
  try {
    let logits = await engine.prefill(seq, [ids[0]]);
    for (let i = 1; i < ids.length; i++) {
      let best = 0;
      let max = -Infinity;
      for (let v = 0; v < logits.length; v++) if (logits[v] > max) { max = logits[v]; best = v; }
      let sum = 0;
      for (let v = 0; v < logits.length; v++) sum += Math.exp(logits[v] - max);
      top1.push(best);
      nll.push(Math.log(sum) + max - logits[ids[i]]);
      if (i < ids.length - 1) logits = await engine.decode([{ seq, token: ids[i] }]);
    }
  } finally {
    engine.release(seq);
  }
  return { top1, nll };
}

export function perplexity(t: TeacherForced): number {
  return Math.exp(t.nll.reduce((a, b) => a + b, 0) / t.nll.length);
}

/** Share of positions where two sequences hold the same token (over the shorter length). */
export function agreement(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  if (n === 0) return 1;
  let same = 0;
  for (let i = 0; i < n; i++) if (a[i] === b[i]) same++;
  return same / n;
}

/** Index of the first position where two sequences differ (their common length when none). */
export function firstDivergence(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/** Greedy continuation of `promptIds` up to `positions` tokens in all (prompt included). */
export async function greedyIds(engine: Engine, promptIds: number[], positions: number): Promise<number[]> {
  const result = await generate(engine, promptIds, { temperature: 0, topK: 0, topP: 1, maxTokens: positions + 1 - promptIds.length });
  return result.ids;
}
