// Property-based fuzzing of a live cluster (real `pdserve up`: redis-server, router, workers, gRPC,
// ONNX Runtime), disaggregated and unified: generated HTTP bodies to the OpenAI endpoints and raw
// gRPC messages (GenerateRequest, KvChunk, PrefillRequest, Cancel, garbage) straight to the
// workers. Each property must hold for every input (a valid OpenAI success or error; every gRPC
// call ends with a status), and afterwards no process has exited, the golden request still gives
// the golden text and every worker has all its KV blocks free.
//
// Bounded: each property stops after PDSERVE_FUZZ_MS (default 2500 ms) or PDSERVE_FUZZ_RUNS runs.
// Seeded: PDSERVE_FUZZ_SEED (default 12) fixes the inputs; PDSERVE_FUZZ_ONLY=<text> runs only the
// properties whose name contains it; PDSERVE_FUZZ_PATH replays a reported failure. Longer runs:
// scripts/fuzz.ts.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { stories260K } from './support/cluster.ts';
import { sharedPath } from './support/shared.ts';
import { existsSync } from 'node:fs';
import { FuzzCluster, readGolden } from './support/fuzz/target.ts';
import { formatResult, properties, runProperty, settingsFromEnv } from './support/fuzz/properties.ts';

const settings = settingsFromEnv({ seed: 12, numRuns: 200, timeLimitMs: 2_500, shrinkMs: 2_000 });
const only = process.env.PDSERVE_FUZZ_ONLY;
const selected = properties.map((p, i) => ({ p, i })).filter(({ p }) => !only || p.name.includes(only));

const modes = [
  { name: 'disaggregated 1 prefill + 1 decode', args: ['--prefill', '1', '--decode', '1'], workers: 2 },
  { name: 'unified 1', args: ['--unified', '1'], workers: 1 },
];

for (const mode of modes) {
  describe(`fuzz: ${mode.name}`, () => {
    let cluster: FuzzCluster | undefined;
    let model: { dir: string; cleanup(): void } | undefined;

    before(async () => {
      const golden = sharedPath('golden', 'stories260K.once-upon-a-time.json');
      if (process.env.CI !== 'true' && !existsSync(golden)) return;
      model = stories260K();
      cluster = new FuzzCluster({ modelDir: model.dir, args: [...mode.args, '--max-sequences', '8'], workers: mode.workers, golden: readGolden(golden) });
      await cluster.start();
    });

    after(async () => {
      await cluster?.stop();
      model?.cleanup();
    });

    for (const { p, i } of selected) {
      test(p.name, async (t) => {
        if (!cluster) return t.skip('no ../shared models');
        // A property that killed the cluster fails; the next one starts on a fresh cluster.
        const target = await cluster.whole();
        const mark = cluster.mark();
        const r = await runProperty(target, p, { ...settings, seed: settings.seed + i });
        t.diagnostic(formatResult(r).split('\n')[0]);
        if (r.failures.length > 0) r.logs = cluster.errorsSince(mark);
        assert.deepEqual(r.failures, [], formatResult(r));
      });
    }
  });
}
