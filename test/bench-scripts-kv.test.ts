// Smoke runs of the KV benchmark scripts behind BENCHMARKS.md (prefix caching, KV transfer, role change) with
// tiny parameters, as test/bench-scripts.test.ts does for the others (issue 14 item 4): a tiny dummy
// model, one round, so a refactor that breaks a script or the numbers it reports fails here. No
// timing is asserted: only that each script runs to the end and reports finite, positive
// measurements (and the KV bytes a tiny model's prompt must put on the wire).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeDummyModel } from '../packages/engine/src/index.ts';
import { assertPositive, runScript } from './support/bench-script.ts';

const dir = mkdtempSync(join(tmpdir(), 'pdserve-bench-scripts-kv-'));
const model = join(dir, 'tiny');
before(() => { writeDummyModel('tiny', model); });
after(() => rmSync(dir, { recursive: true, force: true }));

const script = runScript;

const positive = assertPositive;

test('bench-prefix-cache --part ttft: cold and warm TTFT on 1P+1D and on a unified worker, the warm request hits the whole prefix', () => {
  const out = script('bench-prefix-cache.ts', ['--part', 'ttft', '--model', model, '--rounds', '1', '--prefix-len', '256']);
  const rows = out.split('\n').filter((l) => l.startsWith('{"system"')).map((l) => JSON.parse(l));
  assert.equal(rows.length, 2, out);
  assert.match(rows[0].system, /^1 prefill \+ 1 decode/);
  assert.match(rows[1].system, /^1 unified worker/);
  for (const r of rows) {
    assert.equal(r.cold_ms.length, 1);
    positive(r.median_cold_ms, `${r.system} cold`);
    positive(r.median_warm_ms, `${r.system} warm`);
    positive(r.warm_over_cold, `${r.system} warm / cold`);
    // 256 tokens are 16 full blocks of 16: all of them cached.
    assert.deepEqual(r.warm_cached_tokens, [256], r.system);
  }
});

test('bench-kv-transfer: memcpy, loopback TCP, gRPC alone, and one row per KV transport with the bytes a prompt must move', () => {
  const out = script('bench-kv-transfer.ts', ['--model', model, '--reps', '1', '--warmup', '1', '--lengths', '64', '--transports', 'tcp,grpc', '--shm', 'on,off']);
  assert.match(out, /^\| config \| prompt tokens \| KV MiB on the wire \|/m);
  const res = JSON.parse(out.trim().split('\n').at(-1)!);
  positive(res.memcpy_gbs, 'memcpy');
  positive(res.loopback_tcp_gbs, 'loopback TCP');
  assert.equal(Object.keys(res.grpc_alone_ms).length, 3);
  for (const [bytes, ms] of Object.entries(res.grpc_alone_ms)) positive(ms, `gRPC alone, ${bytes}-byte messages`);
  assert.deepEqual(res.rows.map((r: { config: string }) => r.config), ['disaggregated fp32 tcp+shm', 'disaggregated fp32 tcp', 'disaggregated fp32 grpc']);
  // The tiny preset: 2 layers x (K, V) x 2 KV heads x head_dim 16 x 4 bytes per token, at fp32.
  const kvBytes = 64 * 2 * 2 * 2 * 16 * 4;
  for (const r of res.rows) {
    assert.equal(r.prompt_tokens, 64);
    assert.equal(r.kv_mib * 2 ** 20, kvBytes, r.config);
    for (const k of ['transfer_ms', 'gib_per_s', 'e2e_ms', 'e2e_gib_per_s', 'prefill_ms', 'exposed_transfer_ms', 'ttft_ms']) positive(r[k], `${r.config} ${k}`);
    assert.ok(r.exposed_share_of_ttft > 0 && r.exposed_share_of_ttft < 1, `${r.config} exposed share ${r.exposed_share_of_ttft}`);
  }
});

test('bench-kv-checks: each per-block check (both CRC-32s agree, both scans read the block as finite) with a positive time', () => {
  const out = script('bench-kv-checks.ts', []);
  const rows = out.split('\n').filter((l) => /^\| (CRC|NaN|memcpy)/.test(l)).map((l) => l.split('|').map((c) => c.trim()));
  assert.deepEqual(rows.map((r) => r[1]), [
    'CRC-32, node:zlib', 'CRC-32, @node-rs/crc32', 'NaN/Inf scan, JavaScript (firstNonFiniteIn)',
    'NaN/Inf scan, WebAssembly SIMD (finiteScanner)', 'memcpy (Uint8Array.set), for scale',
  ], out);
  for (const r of rows) { positive(Number(r[2]), `${r[1]} ms`); positive(Number(r[3]), `${r[1]} GB/s`); }
});

test('bench-attention: the engine\'s grouped attention and GroupQueryAttention agree (the script checks) and both are timed', () => {
  const out = script('bench-attention.ts', ['--shapes', '2x64,1x96']);
  const rows = out.split('\n').filter((l) => /^\| \d/.test(l)).map((l) => l.split('|').map((c) => c.trim()));
  assert.deepEqual(rows.map((r) => [r[1], r[2]]), [['2', '64'], ['1', '96']], out);
  for (const r of rows) for (const c of [4, 5, 6]) positive(Number(r[c]), `column ${c} of ${r.join(' | ')}`);
});

test('bench-attention-forms: three ways of writing the decode attention agree with the engine\'s (the script checks) and are timed', () => {
  const out = script('bench-attention-forms.ts', ['--shapes', '2x64,1x96']);
  const rows = out.split('\n').filter((l) => /^\| \d/.test(l)).map((l) => l.split('|').map((c) => c.trim()));
  assert.deepEqual(rows.map((r) => r[1]), ['2 x 64', '1 x 96'], out);
  for (const r of rows) for (const c of [2, 3, 4]) positive(Number(r[c].split(' ')[0]), `column ${c} of ${r.join(' | ')}`);
});

test('bench-role-change: one planner change 1P+1D -> 2U and the operator revert under load, no request failed', () => {
  // 40 requests at 4/s: about 10 s of load, longer than one trial takes on the tiny model (the
  // first-new-work wait needs requests still arriving after the change).
  const out = script('bench-role-change.ts', ['--model', model, '--trials', '1', '--rate', '4', '--requests', '40', '--out', join(dir, 'role-change')]);
  const planner = /^\| 1 \| planner: 1P\+1D -> 2U \| (\d+) \| (\d+) \| (\d+) \/ (\d+) \| \|$/m.exec(out);
  assert.ok(planner, `the planner's row:\n${out}`);
  for (const x of planner.slice(1)) assert.ok(Number.isFinite(Number(x)) && Number(x) >= 0, planner[0]);
  const revert = /^\| 1 \| operator: 2U -> 1P\+1D \| (\d+) \| \| \| (\d+) \|$/m.exec(out);
  assert.ok(revert, `the operator's row:\n${out}`);
  // Settled = old work done + the 2000 ms role grace.
  assert.ok(Number(revert[2]) >= 2000, revert[0]);
  assert.match(out, /^load: 40 completed, 0 failed, attainment [\d.]+%/m);
});
