// Greedy generation of the converted llama2.c models equals the reference implementation's output
// (llama2.c run.c, ../shared/golden) token for token, prompt ids included.
import { test } from 'node:test';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertLlama2c, Engine } from '../src/index.ts';
import { assertGreedyGolden } from './support/golden.ts';
import { requireShared } from '../../../test/support/shared.ts';

const cases = [
  { name: 'stories260K', checkpoint: 'stories260K.bin', tokenizer: 'tok512.bin' },
  { name: 'babyllama105', checkpoint: 'model.bin', tokenizer: 'tok105.bin' },
];

for (const c of cases) {
  test(`${c.name}: greedy output equals llama2.c run.c`, async (t) => {
    const dir = requireShared(t, 'models', c.name);
    const goldenPath = requireShared(t, 'golden', `${c.name}.once-upon-a-time.json`);
    if (!dir || !goldenPath) return;
    const golden = JSON.parse(readFileSync(goldenPath, 'utf8'));
    const out = mkdtempSync(join(tmpdir(), 'pdserve-golden-'));
    t.after(() => rmSync(out, { recursive: true, force: true }));
    convertLlama2c({ checkpoint: join(dir, c.checkpoint), tokenizer: join(dir, c.tokenizer), out });
    const engine = await Engine.load(out, { threads: 1, maxSequences: 2 });
    await assertGreedyGolden(engine, golden);
  });
}
