// What prefix-aware routing adds to a request in the router: hashing the prompt's full blocks
// (once per distinct chain root), looking each candidate worker's run of held blocks up in the
// index, and the placement/decode scoring, over an index of realistic size (every worker's arena
// full of distinct cached blocks). Compared side by side with the load-only decision it replaces.
//
//   node --import tsx scripts/bench-prefix-routing.ts [--workers 8] [--blocks 2048] [--prompt 1056] [--iterations 2000]
import { parseArgs } from 'node:util';
import { blockHashChain, prefixRootHash } from '../packages/engine/src/index.ts';
import { PrefixIndex } from '../services/router/src/prefix-index.ts';
import { decidePlacement, decodeScore, type WorkerView } from '../services/router/src/placement.ts';

const { values } = parseArgs({ options: {
  workers: { type: 'string', default: '8' }, blocks: { type: 'string', default: '2048' },
  prompt: { type: 'string', default: '1056' }, iterations: { type: 'string', default: '2000' },
} });
const W = Number(values.workers);
const blocksPerWorker = Number(values.blocks);
const promptTokens = Number(values.prompt);
const iterations = Number(values.iterations);
const B = 16;
const root = prefixRootHash({ model: 'bench', blockTokens: B });

// Each worker holds blocksPerWorker blocks: chains of 64-block prompts, distinct per worker, one of
// which (on worker 0) is the system prompt the requests share.
const ix = new PrefixIndex();
const system = Array.from({ length: 1024 }, (_, i) => (i * 31) % 32000);
for (let w = 0; w < W; w++) {
  const hashes: string[] = [];
  if (w === 0) hashes.push(...blockHashChain(root, system, B));
  for (let c = 0; hashes.length < blocksPerWorker; c++) {
    const tokens = Array.from({ length: 64 * B }, (_, i) => (w * 1_000_003 + c * 7919 + i * 13) % 32000);
    hashes.push(...blockHashChain(root, tokens, B).slice(0, blocksPerWorker - hashes.length));
  }
  ix.replace(`w${w}`, { root, blockTokens: B, seq: 1, hashes });
}
const ids = Array.from({ length: W }, (_, w) => `w${w}`);
const load = { queue_len: 1, running: 3, waiting: 0, free_kv_blocks: 800, total_kv_blocks: 2048, prefix_cache_blocks: 1000 };
const view = (id: string, cachedTokens: number): WorkerView => ({
  id, role: 'unified', queuedPrefillTokens: 200, prefillTokensPerS: 4000, batch: 3, decodeStepMsByBatch: new Map([[1, 20], [4, 30]]),
  prefillChunkTokens: 256, localPrefillShare: 0.1, cachedTokens,
});

function decide(prompt: number[], prefixAware: boolean): string {
  const cached = prefixAware ? ix.cachedTokens(prompt, ids) : new Map<string, number>();
  let best = ids[0];
  let bestScore = Infinity;
  for (const id of ids) {
    const s = decodeScore({ role: 'unified', load, inflight: 0, cachedTokens: cached.get(id) ?? 0 }, prompt.length);
    if (s < bestScore) { bestScore = s; best = id; }
  }
  const prefillers = ids.filter((id) => id !== best).map((id) => ({ ...view(id, cached.get(id) ?? 0), role: 'prefill' as const }));
  return decidePlacement({ promptTokens: prompt.length, decode: view(best, cached.get(best) ?? 0), prefillers, transfer: { fixedMs: 1, msPerToken: 0.01 } }, { mode: 'auto' }).prefillWorker;
}

function measure(prefixAware: boolean): { meanUs: number; p99Us: number; chose: string } {
  const times: number[] = [];
  let chose = '';
  for (let i = 0; i < iterations; i++) {
    // A fresh user turn each time (the hash chain cannot be cached across requests).
    const prompt = [...system, ...Array.from({ length: promptTokens - system.length }, (_, j) => (i * 17 + j) % 32000)];
    const t0 = performance.now();
    chose = decide(prompt, prefixAware);
    times.push((performance.now() - t0) * 1000);
  }
  times.sort((a, b) => a - b);
  const warm = times.slice(0, Math.floor(times.length));
  return { meanUs: warm.reduce((a, b) => a + b, 0) / warm.length, p99Us: times[Math.floor(times.length * 0.99)], chose };
}

measure(true); // warm up the JIT
const loadOnly = measure(false);
const aware = measure(true);
const r = (x: number) => Math.round(x * 10) / 10;
console.log(JSON.stringify({
  workers: W, blocks_per_worker: blocksPerWorker, index_hashes: ix.size.hashes, prompt_tokens: promptTokens, iterations,
  load_only_us: { mean: r(loadOnly.meanUs), p99: r(loadOnly.p99Us) },
  prefix_aware_us: { mean: r(aware.meanUs), p99: r(aware.p99Us) },
  added_us: { mean: r(aware.meanUs - loadOnly.meanUs), p99: r(aware.p99Us - loadOnly.p99Us) },
  chose: { load_only: loadOnly.chose, prefix_aware: aware.chose },
}));
