// Sampler cost per token at a 49152-entry vocabulary (SmolLM2's), per sampling configuration, side
// by side in one run, and as a ratio to the greedy argmax scan. Moved here from sampler.test.ts: a
// wall-clock bound in a unit test measures the machine's load, not the code.
//
//   node --import tsx scripts/bench-sampler.ts [--vocab 49152] [--n 200]
import { parseArgs } from 'node:util';
import { Sampler, type SamplingParams } from '../packages/engine/src/sampling/sampler.ts';

const { values } = parseArgs({ options: { vocab: { type: 'string', default: '49152' }, n: { type: 'string', default: '200' } } });
const vocab = Number(values.vocab);
const n = Number(values.n);

const logits = new Float32Array(vocab);
let s = 5;
for (let i = 0; i < vocab; i++) {
  s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
  logits[i] = (s / 2 ** 32 - 0.5) * 16;
}
const configs: Array<[string, SamplingParams]> = [
  ['greedy', { temperature: 0, topK: 0, topP: 1 }],
  ['temperature 1', { temperature: 1, topK: 0, topP: 1, seed: 1 }],
  ['top_k 50', { temperature: 0.8, topK: 50, topP: 1, seed: 1 }],
  ['top_p 0.95', { temperature: 0.8, topK: 0, topP: 0.95, seed: 1 }],
  ['top_k 50 + top_p 0.9 + logprobs 5', { temperature: 0.8, topK: 50, topP: 0.9, seed: 1, logprobs: 5 }],
];
const rows = configs.map(([name, params]) => {
  const sampler = new Sampler(params);
  for (let i = 0; i < 5; i++) sampler.sample(logits); // warm up (JIT)
  const start = performance.now();
  for (let i = 0; i < n; i++) sampler.sample(logits);
  return { config: name, msPerSample: (performance.now() - start) / n };
});
const greedy = rows[0].msPerSample;
console.log(JSON.stringify({ vocab, samples: n, rows: rows.map((r) => ({ ...r, vsGreedy: r.msPerSample / greedy })) }, null, 2));
