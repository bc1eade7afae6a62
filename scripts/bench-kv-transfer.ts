// KV-transfer experiment: bytes moved, seconds, effective bandwidth and share of TTFT at prompt
// lengths 128, 512 and 2048 on a disaggregated cluster (1 prefill + 1 decode, pinned to their own
// cores), side by side with raw loopback TCP and memcpy measured in the same run.
//
//   node --import tsx scripts/bench-kv-transfer.ts [--model DIR] [--reps 3] [--lengths 128,512,2048] [--trace]
//
// --trace: the workers write their KV timeline (PDSERVE_KV_TRACE, packages/common/src/trace) and the
// script prints, per prompt length, the median time of each stage after the last prefill chunk.
//
// Per request it reads the public metrics: the prefill worker's pdserve_kv_transfer_{seconds,bytes}
// (first block handed to gRPC -> decode worker's ack) and the router's TTFT breakdown, whose
// kv_transfer phase is the part of the transfer left after the last prefill chunk (the exposed part).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, connect } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeDummyModel } from '../packages/engine/src/index.ts';
import { freePort } from '../packages/common/src/index.ts';

const { values } = parseArgs({ options: { model: { type: 'string' }, reps: { type: 'string', default: '3' }, lengths: { type: 'string', default: '128,512,2048' }, trace: { type: 'boolean', default: false } } });
const traceFile = values.trace ? join(mkdtempSync(join(tmpdir(), 'pdserve-kv-trace-')), 'trace.jsonl') : undefined;
let traceOffset = 0;

/** Stages of the request just finished, ms after its last prefill chunk ended (first and last occurrence). */
function traceStages(clientFirstTokenAt: number): Record<string, number> {
  const text = readFileSync(traceFile!, 'utf8');
  const lines = text.slice(traceOffset).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { t: number; stage: string });
  traceOffset = text.length;
  const lastChunk = Math.max(...lines.filter((e) => e.stage === 'p.chunk_done').map((e) => e.t));
  const out: Record<string, number> = {};
  for (const e of lines) {
    const first = `${e.stage}:first`, last = `${e.stage}:last`;
    if (e.t < lastChunk && e.stage !== 'p.chunk_done') continue;
    out[first] ??= e.t - lastChunk;
    out[last] = e.t - lastChunk;
  }
  out['client.first_token'] = clientFirstTokenAt - lastChunk;
  return out;
}
const root = new URL('..', import.meta.url).pathname;
const reps = Number(values.reps);
const lengths = values.lengths!.split(',').map(Number);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function memcpyGBs(): number {
  const a = new Float32Array(64 * 1024 * 1024).fill(1); // 256 MiB
  const b = new Float32Array(a.length);
  const times: number[] = [];
  for (let i = 0; i < 5; i++) { const t = performance.now(); b.set(a); times.push(performance.now() - t); }
  return a.byteLength / (median(times) / 1000) / 1e9;
}

/** One TCP stream over loopback to a child process that discards what it reads. */
async function loopbackGBs(): Promise<number> {
  const port = await freePort();
  const sink = spawn(process.execPath, ['-e', `require('net').createServer(s=>{let n=0;s.on('data',d=>{n+=d.length});s.on('end',()=>s.end(String(n)))}).listen(${port},'127.0.0.1',()=>console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((r) => sink.stdout!.once('data', r));
  const chunk = Buffer.alloc(4 * 1024 * 1024, 7);
  const total = 512 * 1024 * 1024;
  const t0 = performance.now();
  await new Promise<void>((resolve, reject) => {
    const s = connect(port, '127.0.0.1');
    let sent = 0;
    const pump = () => { while (sent < total) { sent += chunk.length; if (!s.write(chunk)) return void s.once('drain', pump); } s.end(); };
    s.on('connect', pump);
    s.on('data', () => resolve());
    s.on('error', reject);
  });
  const secs = (performance.now() - t0) / 1000;
  sink.kill();
  void createServer;
  return total / secs / 1e9;
}

async function scrape(url: string): Promise<string> {
  return (await fetch(url)).text();
}
function sum(text: string, name: string, label?: string): number {
  return text.split('\n').filter((l) => (l.startsWith(name + ' ') || l.startsWith(name + '{')) && (!label || l.includes(label)))
    .reduce((s, l) => s + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}

let lastFirstTokenAt = 0;

async function ttftStream(url: string, model: string, prompt: number[]): Promise<number> {
  const t0 = performance.now();
  lastFirstTokenAt = 0;
  const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt, max_tokens: 2, ignore_eos: true, temperature: 0, stream: true }) });
  const reader = res.body!.getReader();
  let ttft = 0;
  const dec = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    if (!ttft && /"text":"[^"]/.test(dec.decode(value))) { ttft = performance.now() - t0; lastFirstTokenAt = performance.timeOrigin + performance.now(); }
  }
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return ttft;
}

async function main(): Promise<void> {
  const model = values.model ?? join(root, '.cache/bench-models/smollm2-135m-4k');
  if (!existsSync(join(model, 'config.json'))) writeDummyModel('smollm2-135m', model, { maxSeqLen: 4096 });
  const memcpy = memcpyGBs();
  const tcp = await loopbackGBs();
  const port = await freePort();
  const up = spawn(process.execPath, ['--import', 'tsx', join(root, 'packages/cli/src/main.ts'), 'up', '--model', model, '--port', String(port), '--prefill', '1', '--decode', '1', '--pin', '--threads', '1', '--max-sequences', '2'], { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, ...(traceFile ? { PDSERVE_KV_TRACE: traceFile } : {}) } });
  const url = await new Promise<string>((resolve) => up.stdout!.on('data', (d) => { const m = /ready (\S+)/.exec(String(d)); if (m) resolve(m[1]); }));
  try {
    const name = ((await (await fetch(`${url}/v1/models`)).json()) as any).data[0].id;
    const workers = ((await (await fetch(`${url}/workers`)).json()) as any).workers as any[];
    const prefill = workers.find((w) => w.role === 'prefill');
    const rows = [];
    await ttftStream(url, name, Array.from({ length: 32 }, (_, i) => 100 + i)); // warm-up
    if (traceFile) { await new Promise((res) => setTimeout(res, 300)); traceStages(0); }
    const traces: Record<number, Array<Record<string, number>>> = {};
    for (const L of lengths) {
      const r = { ttft: [] as number[], bytes: [] as number[], secs: [] as number[], tail: [] as number[], prefill: [] as number[] };
      for (let i = 0; i < reps; i++) {
        const prompt = Array.from({ length: L }, (_, j) => 300 + ((j * 7919 + i * 104729) % 40000));
        const [wb, rb] = [await scrape(prefill.metrics_url), await scrape(`${url}/metrics`)];
        r.ttft.push(await ttftStream(url, name, prompt));
        await new Promise((res) => setTimeout(res, 300));
        if (traceFile) (traces[L] ??= []).push(traceStages(lastFirstTokenAt));
        const [wa, ra] = [await scrape(prefill.metrics_url), await scrape(`${url}/metrics`)];
        r.bytes.push(sum(wa, 'pdserve_kv_transfer_bytes_total') - sum(wb, 'pdserve_kv_transfer_bytes_total'));
        r.secs.push(sum(wa, 'pdserve_kv_transfer_seconds_sum') - sum(wb, 'pdserve_kv_transfer_seconds_sum'));
        r.tail.push(1000 * (sum(ra, 'pdserve_ttft_breakdown_seconds_sum', 'phase="kv_transfer"') - sum(rb, 'pdserve_ttft_breakdown_seconds_sum', 'phase="kv_transfer"')));
        r.prefill.push(1000 * (sum(ra, 'pdserve_ttft_breakdown_seconds_sum', 'phase="prefill"') - sum(rb, 'pdserve_ttft_breakdown_seconds_sum', 'phase="prefill"')));
      }
      const bytes = median(r.bytes), secs = median(r.secs), ttft = median(r.ttft), tail = median(r.tail);
      rows.push({ prompt_tokens: L, kv_mib: bytes / 2 ** 20, transfer_ms: secs * 1000, gib_per_s: bytes / secs / 2 ** 30, prefill_ms: median(r.prefill), exposed_transfer_ms: tail, ttft_ms: ttft, exposed_share_of_ttft: tail / ttft, transfer_share_of_ttft: (secs * 1000) / ttft });
    }
    console.log(`memcpy ${(memcpy / 1.073741824).toFixed(2)} GiB/s, loopback TCP ${(tcp / 1.073741824).toFixed(2)} GiB/s (one stream, 4 MiB writes)`);
    console.log('| prompt tokens | KV MiB | transfer ms | GiB/s | prefill ms | exposed transfer ms | TTFT ms | exposed / TTFT | whole transfer / TTFT |');
    console.log('|---|---|---|---|---|---|---|---|---|');
    for (const x of rows) console.log(`| ${x.prompt_tokens} | ${x.kv_mib.toFixed(1)} | ${x.transfer_ms.toFixed(1)} | ${x.gib_per_s.toFixed(3)} | ${x.prefill_ms.toFixed(0)} | ${x.exposed_transfer_ms.toFixed(1)} | ${x.ttft_ms.toFixed(0)} | ${(100 * x.exposed_share_of_ttft).toFixed(1)}% | ${(100 * x.transfer_share_of_ttft).toFixed(1)}% |`);
    if (traceFile) {
      console.log('\nKV timeline, ms after the last prefill chunk ended (median over reps; :first/:last = first/last occurrence)');
      for (const L of lengths) {
        const keys = [...new Set(traces[L].flatMap((x) => Object.keys(x)))];
        const med = keys.map((k) => [k, median(traces[L].map((x) => x[k]).filter((v) => v !== undefined))] as const).sort((a, b) => a[1] - b[1]);
        console.log(`${L} tokens: ${med.map(([k, v]) => `${k}=${v.toFixed(2)}`).join('  ')}`);
      }
    }
    console.log(JSON.stringify({ memcpy_gbs: memcpy, loopback_tcp_gbs: tcp, rows }));
  } finally {
    up.kill('SIGTERM');
  }
}

await main();
