// The fuzz suite of test/fuzz.test.ts for longer: rounds of every property against a live cluster
// (real `pdserve up` on stories260K from ../shared), each round with its own seed, until the time
// is up. A finding that kills the cluster is recorded and the cluster starts again. Prints one
// line per property run and, at the end, every distinct finding with its input, seed and path.
//
//   node --import tsx scripts/fuzz.ts [--minutes 10] [--seed 1] [--mode both|disaggregated|unified]
//        [--property TEXT] [--round-s 20] [--out findings.json]
//
// Replay one finding in the test suite: PDSERVE_FUZZ_SEED=<seed> PDSERVE_FUZZ_PATH=<path>
// PDSERVE_FUZZ_ONLY=<property> pnpm test -- test/fuzz (a finding's seed is that property's own).
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { stories260K } from '../test/support/cluster.ts';
import { sharedPath } from '../test/support/shared.ts';
import { formatResult, properties, runProperty, type PropertyResult } from '../test/support/fuzz/properties.ts';
import { FuzzCluster, readGolden } from '../test/support/fuzz/target.ts';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    seed: { type: 'string', default: String(Date.now() % 1_000_000) },
    mode: { type: 'string', default: 'both' },
    property: { type: 'string' },
    'round-s': { type: 'string', default: '20' },
    out: { type: 'string' },
  },
});

const minutes = Number(values.minutes);
const baseSeed = Number(values.seed);
const roundMs = Number(values['round-s']) * 1000;
if (!(minutes > 0) || !Number.isInteger(baseSeed) || !(roundMs > 0)) throw new Error('--minutes and --round-s must be positive, --seed an integer');

const modes = [
  { name: 'disaggregated', args: ['--prefill', '1', '--decode', '1'], workers: 2 },
  { name: 'unified', args: ['--unified', '1'], workers: 1 },
].filter((m) => values.mode === 'both' || m.name === values.mode);
if (modes.length === 0) throw new Error(`--mode must be both, disaggregated or unified, got ${values.mode}`);
const selected = properties.map((p, i) => ({ p, i })).filter(({ p }) => !values.property || p.name.includes(values.property));

interface Finding {
  mode: string;
  property: string;
  signature: string;
  count: number;
  first: PropertyResult;
}

/**
 * What makes two failures the same finding: the property and the message without numbers, ids,
 * paths and which process was noticed dead first (a dead worker takes `pdserve up` down with it).
 */
function signature(property: string, r: PropertyResult): string {
  const msg = (r.failures[0] ?? '')
    .replace(/^(pdserve up exited \([^)]*\)|process exited: .*?)(; the probe saw: |$)/, 'a process exited$2')
    .replace(/KV still held .*$/, 'KV still held')
    .replace(/\{.*$/s, '')
    .replace(/(decode|prefill) worker \S+:/g, '$1 worker W:')
    .replace(/[0-9a-f]{8,}|\d+(\.\d+)?/gi, 'N')
    .slice(0, 160);
  return `${property} :: ${msg}`;
}

const model = stories260K();
const golden = readGolden(sharedPath('golden', 'stories260K.once-upon-a-time.json'));
const findings = new Map<string, Finding>();
const totals = { propertyRuns: 0, inputs: 0, restarts: 0 };
const t0 = Date.now();
const endAt = t0 + minutes * 60_000;
const log = (s: string) => process.stdout.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(5)} s] ${s}\n`);

try {
  for (const [m, mode] of modes.entries()) {
    const modeEnd = t0 + ((m + 1) * (endAt - t0)) / modes.length;
    const cluster = new FuzzCluster({ modelDir: model.dir, args: [...mode.args, '--max-sequences', '8'], workers: mode.workers, golden });
    log(`mode ${mode.name}: starting the cluster`);
    await cluster.start();
    try {
      for (let round = 0; Date.now() < modeEnd; round++) {
        for (const { p, i } of selected) {
          if (Date.now() >= modeEnd) break;
          const seed = baseSeed + round * 1000 + i;
          const target = await cluster.whole();
          const mark = cluster.mark();
          const r = await runProperty(target, p, { seed, numRuns: 100_000, timeLimitMs: Math.min(roundMs, modeEnd - Date.now()), shrinkMs: 30_000 });
          totals.propertyRuns++;
          totals.inputs += r.runs;
          if (r.failures.length > 0) {
            r.logs = cluster.errorsSince(mark);
            const sig = signature(p.name, r);
            const f = findings.get(`${mode.name} ${sig}`);
            if (f) f.count++;
            else findings.set(`${mode.name} ${sig}`, { mode: mode.name, property: p.name, signature: sig, count: 1, first: r });
            log(`${mode.name} ${f ? 'again' : 'NEW'}: ${formatResult(r).split('\n').slice(0, 2).join(' ').slice(0, 300)}`);
          } else {
            log(`${mode.name} ${formatResult(r)}`);
          }
        }
      }
    } finally {
      totals.restarts += cluster.restarts;
      await cluster.stop();
    }
  }
} finally {
  model.cleanup();
}

const summary = {
  seed: baseSeed, minutes, modes: modes.map((m) => m.name), ...totals,
  findings: [...findings.values()].map((f) => ({ mode: f.mode, times: f.count, signature: f.signature, ...f.first })),
};
process.stdout.write(`\n${totals.inputs} inputs in ${totals.propertyRuns} property runs over ${((Date.now() - t0) / 60_000).toFixed(1)} min (seed ${baseSeed}), ${totals.restarts} cluster restarts, ${findings.size} distinct findings\n`);
for (const f of findings.values()) process.stdout.write(`\n[${f.mode}] x${f.count} ${formatResult(f.first)}\n`);
if (values.out) writeFileSync(values.out, JSON.stringify(summary, null, 2));
process.exit(0);
