// What it costs the KV arena to put a batch's sequence into place when every slot is held: the
// holder in the way (a retained prefix, or a sequence not in this step) trades slots with it
// (SlotKvCache.gather -> swap). Two sequences of each length in a two-slot arena of the
// smollm2-135m KV shape (30 layers, 3 KV heads, head_dim 64); one trade per timed call.
//
//   node --import tsx scripts/bench-slot-swap.ts [--lengths 64,300,1000] [--reps 30]
import { parseArgs } from 'node:util';
import { SlotKvCache } from '../packages/engine/src/kv/slot-cache.ts';

const { values } = parseArgs({ options: { lengths: { type: 'string', default: '64,300,1000' }, reps: { type: 'string', default: '30' } } });
const shape = { layers: 30, kvHeads: 3, headDim: 64, blockTokens: 16 };
const reps = Number(values.reps);
console.log('| positions per sequence | KV MiB per sequence | ms per trade, median (fastest) |');
console.log('|---|---|---|');
for (const len of values.lengths!.split(',').map(Number)) {
  const cache = new SlotKvCache({ ...shape, maxSlots: 2, maxTokensPerSlot: Math.max(64, len) });
  const a = cache.allocate('a')!, b = cache.allocate('b')!;
  cache.reserve(len);
  a.length = len;
  b.length = len;
  const ms: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const moved = cache.gather([a.slot === 1 ? a : b]); // whichever is in slot 1 must go to slot 0
    ms.push(performance.now() - t0);
    if (moved !== 1) throw new Error(`expected one move, got ${moved}`);
  }
  ms.sort((x, y) => x - y);
  const mib = (len * shape.layers * 2 * shape.kvHeads * shape.headDim * 4) / 2 ** 20;
  console.log(`| ${len} | ${mib.toFixed(1)} | ${ms[ms.length >> 1].toFixed(2)} (${ms[0].toFixed(2)}) |`);
}
