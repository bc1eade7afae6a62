// Where a decode step's time goes inside ONNX Runtime: runs batched decode steps of the engine's
// graph with ORT's profiler on and sums kernel time by operator type.
//
//   node --import tsx scripts/profile-decode.ts [--model DIR] [--batch 16] [--context 256]
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ort } from '../packages/engine/src/runtime/session.ts';

type Tensor = InstanceType<typeof ort.Tensor>;

const { values } = parseArgs({ options: { model: { type: 'string' }, batch: { type: 'string', default: '16' }, context: { type: 'string', default: '256' } } });
const root = new URL('..', import.meta.url).pathname;
const dir = values.model ?? join(root, '.cache/bench-models/smollm2-135m');
const B = Number(values.batch);
const ctx = Number(values.context);
const P = Math.ceil((ctx * 1.25) / 16) * 16; // the stride the slot cache would have grown to
const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
const prefix = join(tmpdir(), `pdserve-prof-${process.pid}`);
const sess = await ort.InferenceSession.create(join(dir, cfg.onnx.file), { intraOpNumThreads: 1, graphOptimizationLevel: 'all', enableProfiling: true, profileFilePrefix: prefix });
const { n_kv_heads: kvh, head_dim: hd, n_layers: L } = cfg;
const kv = Array.from({ length: 2 * L }, () => new Float32Array(B * kvh * P * hd));
const bias = new Float32Array(B * P);
for (let b = 0; b < B; b++) bias.fill(-1e30, b * P + ctx, (b + 1) * P);
const steps = 8;
for (let s = 0; s < steps; s++) {
  const feeds: Record<string, Tensor> = {
    input_ids: new ort.Tensor('int64', new BigInt64Array(B).fill(5n), [B, 1]),
    position_ids: new ort.Tensor('int64', new BigInt64Array(B).fill(BigInt(ctx)), [B, 1]),
    attn_bias_past: new ort.Tensor('float32', bias, [B, P]),
    attn_bias_new: new ort.Tensor('float32', new Float32Array(1), [1, 1]),
    logit_rows: new ort.Tensor('int64', BigInt64Array.from({ length: B }, (_, i) => BigInt(i)), [B]),
  };
  for (let l = 0; l < L; l++) {
    feeds[`past_key.${l}`] = new ort.Tensor('float32', kv[2 * l], [B, kvh, P, hd]);
    feeds[`past_value.${l}`] = new ort.Tensor('float32', kv[2 * l + 1], [B, kvh, P, hd]);
  }
  await sess.run(feeds);
}
sess.endProfiling();
const file = readdirSync(tmpdir()).map((f) => join(tmpdir(), f)).filter((f) => f.startsWith(prefix)).sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0];
const events = JSON.parse(readFileSync(file, 'utf8')) as Array<{ cat?: string; name: string; dur: number; args?: { op_name?: string } }>;
const byOp = new Map<string, { us: number; n: number }>();
for (const e of events) {
  if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
  const op = e.args?.op_name ?? '?';
  const x = byOp.get(op) ?? { us: 0, n: 0 };
  x.us += e.dur;
  x.n++;
  byOp.set(op, x);
}
const total = [...byOp.values()].reduce((s, x) => s + x.us, 0);
console.log(`batch ${B}, context ${ctx} (stride ${P}), ${steps} steps; kernel time ${(total / steps / 1000).toFixed(1)} ms/step`);
console.log('| operator | ms/step | share | kernels/step |');
console.log('|---|---|---|---|');
for (const [op, x] of [...byOp.entries()].sort((a, b) => b[1].us - a[1].us).slice(0, 10)) {
  console.log(`| ${op} | ${(x.us / steps / 1000).toFixed(2)} | ${((100 * x.us) / total).toFixed(1)}% | ${x.n / steps} |`);
}
