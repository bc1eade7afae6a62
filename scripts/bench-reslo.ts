// Re-scores saved `pdserve bench --sweep` results under other SLOs, from their per-request records
// (no new measurement): attainment, goodput and the highest rate at >= 90% attainment per file.
//
//   node --import tsx scripts/bench-reslo.ts --ttft-ms 4000 --tpot-ms 80 FILE.json [FILE.json ...]
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { rateAtAttainment } from '../packages/bench/src/index.ts';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { 'ttft-ms': { type: 'string' }, 'tpot-ms': { type: 'string' } } });
const ttft = values['ttft-ms'] ? Number(values['ttft-ms']) : Infinity;
const tpot = values['tpot-ms'] ? Number(values['tpot-ms']) : Infinity;

console.log(`SLO: TTFT <= ${ttft} ms, TPOT <= ${tpot} ms`);
console.log('| file | rate | attainment | goodput (req/s) |');
console.log('|---|---|---|---|');
for (const file of positionals) {
  const sweep = JSON.parse(readFileSync(file, 'utf8'));
  const points: Array<{ rate: number; attainment: number }> = [];
  for (const r of sweep.results) {
    const done = r.requests.filter((q: any) => q.ok);
    const good = done.filter((q: any) => q.ttft_ms <= ttft && (q.tpot_ms === null || q.tpot_ms === undefined || q.tpot_ms <= tpot)).length;
    const attainment = done.length ? good / done.length : 0;
    points.push({ rate: Number(r.rate), attainment });
    console.log(`| ${file.split('/').pop()} | ${r.rate} | ${(100 * attainment).toFixed(0)}% | ${(good / r.duration_s).toFixed(3)} |`);
  }
  const x = rateAtAttainment(points);
  console.log(`| ${file.split('/').pop()} | rate at 90% | max swept ${x.max ?? 'none'}, interpolated ${x.interpolated?.toFixed(2) ?? 'none'}${x.lowerBound ? ' (lower bound)' : ''} | |`);
}
