// KV-transfer experiment: bytes moved, seconds, effective bandwidth and share of TTFT at prompt
// lengths 128, 512 and 2048 on a disaggregated cluster (1 prefill + 1 decode, pinned to their own
// cores), side by side with raw loopback TCP and memcpy measured in the same run.
//
//   node --import tsx scripts/bench-kv-transfer.ts [--model DIR] [--reps 3] [--warmup 8] [--lengths 128,512,2048]
//       [--wire-dtypes fp32,fp16,bf16,int8] [--transports tcp,grpc] [--shm on,off] [--shared-cores] [--unified]
//       [--up-args '--engine-nice 0']
//
// --shm: for the tcp transport, with the same-host shared-memory ring (on, `--kv-shm-mib 32`, the
// default) and/or without it (off, `--kv-shm-mib 0`: payloads over the socket); one cluster each.
// --shared-cores: workers as `pdserve up` starts them by default (one thread per core each, not
// pinned) instead of `--pin --threads 1` (each worker on a core of its own).
//
// One cluster per wire dtype and KV transport (--kv-transport: tcp = the raw-TCP data channel,
// grpc = Decode.PushKv) (and with --unified one unified worker, same thread count, for the
// router-visible TTFT comparison), one after the other in one run. The workers write their KV
// timeline (PDSERVE_KV_TRACE, packages/common/src/trace/kv-trace.ts), from which the script takes the
// end-to-end transfer time (first block handed to the sink -> last block written into the decode
// worker's arena) and prints, per row, the median time of each stage after the last prefill chunk.
//
// Per request it reads the public metrics: the prefill worker's pdserve_kv_transfer_{seconds,bytes}
// (first block handed to gRPC -> decode worker's ack) and the router's TTFT breakdown, whose
// kv_transfer phase is the part of the transfer left after the last prefill chunk (the exposed part).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, connect } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { writeDummyModel } from '../packages/engine/src/index.ts';
import { bindServer, createGrpcServer, decodeClient, decodeService, freePort, type grpc } from '../packages/common/src/index.ts';

const { values } = parseArgs({ options: { model: { type: 'string' }, reps: { type: 'string', default: '3' }, warmup: { type: 'string', default: '8' }, lengths: { type: 'string', default: '128,512,2048' }, 'wire-dtypes': { type: 'string', default: 'fp32' }, transports: { type: 'string', default: 'tcp,grpc' }, 'up-args': { type: 'string', default: '' }, shm: { type: 'string', default: 'on' }, 'shared-cores': { type: 'boolean', default: false }, unified: { type: 'boolean', default: false }, 'grpc-sink': { type: 'string' } } });
const traceFile = join(mkdtempSync(join(tmpdir(), 'pdserve-kv-trace-')), 'trace.jsonl');
writeFileSync(traceFile, '');
const dtypes = values['wire-dtypes']!.split(',');
let traceOffset = 0;

/** Stages of the request just finished, ms after its last prefill chunk ended (first and last occurrence). */
function traceStages(clientFirstTokenAt: number): Record<string, number> {
  const text = readFileSync(traceFile, 'utf8');
  const lines = text.slice(traceOffset).split('\n').filter(Boolean).map((l) => JSON.parse(l) as { t: number; stage: string });
  traceOffset = text.length;
  const lastChunk = Math.max(...lines.filter((e) => e.stage === 'p.chunk_done').map((e) => e.t));
  if (!Number.isFinite(lastChunk)) return {};
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
const warmup = Number(values.warmup);
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

/**
 * gRPC alone: a Decode.PushKv of `total` bytes in messages of `messageBytes` to a child process
 * (this script with --grpc-sink, on its own core) that acknowledges at the end of the stream, as the
 * decode worker does. Median ms from the first write to the acknowledgement.
 */
async function grpcPushMs(total: number, messageBytesList: number[], n = 11): Promise<Map<number, number>> {
  const port = await freePort();
  const sink = spawn('taskset', ['-c', '1', process.execPath, '--import', 'tsx', new URL(import.meta.url).pathname, '--grpc-sink', String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((r) => sink.stdout!.once('data', r));
  const client = decodeClient(`127.0.0.1:${port}`) as grpc.Client & { PushKv: Function };
  const out = new Map<number, number>();
  try {
    for (const messageBytes of messageBytesList) {
      const times: number[] = [];
      for (let rep = 0; rep < n; rep++) {
        const msgs: object[] = [];
        for (let off = 0; off < total; off += messageBytes) {
          msgs.push({ request_id: 'bench', first_block: 0, block_count: 1, token_count: 1, data: new Uint8Array(Math.min(messageBytes, total - off)).fill(rep), checksums: [0], done: false, block_tokens: 16, block_bytes: 1 });
        }
        const t0 = performance.now();
        await new Promise<void>((resolve, reject) => {
          const call = client.PushKv((err: Error | null) => (err ? reject(err) : resolve()));
          for (const m of msgs) call.write(m);
          call.end();
        });
        times.push(performance.now() - t0);
      }
      out.set(messageBytes, median(times.slice(1)));
    }
  } finally {
    client.close();
    sink.kill();
  }
  return out;
}

async function grpcSink(port: number): Promise<void> {
  const server = createGrpcServer();
  server.addService(decodeService(), {
    PushKv(call: grpc.ServerReadableStream<unknown, unknown>, cb: grpc.sendUnaryData<{ bytes: number; chunks: number }>) {
      let chunks = 0;
      call.on('data', () => { chunks++; });
      call.on('end', () => cb(null, { bytes: 0, chunks }));
    },
  });
  await bindServer(server, `127.0.0.1:${port}`);
  console.log('up');
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

interface Row {
  config: string; prompt_tokens: number; kv_mib: number; transfer_ms: number; gib_per_s: number; e2e_ms?: number; e2e_gib_per_s?: number;
  prefill_ms: number; exposed_transfer_ms: number; ttft_ms: number; exposed_share_of_ttft: number; transfer_share_of_ttft: number;
  /** Each request's end to end and exposed ms, in order (with --warmup 0: how a fresh cluster's first transfers go). */
  e2e_ms_each?: number[]; exposed_ms_each: number[];
  timeline?: Record<string, number>;
}

/** One cluster (`pdserve up` with `args`), requests one at a time, `reps` per prompt length. */
async function measure(config: string, model: string, args: string[]): Promise<Row[]> {
  const port = await freePort();
  const up = spawn(process.execPath, ['--import', 'tsx', join(root, 'packages/cli/src/main.ts'), 'up', '--model', model, '--port', String(port), ...(values['shared-cores'] ? [] : ['--pin', '--threads', '1']), '--max-sequences', '2', ...args, ...values['up-args']!.split(' ').filter(Boolean)],
    { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, PDSERVE_KV_TRACE: traceFile } });
  const url = await new Promise<string>((resolve) => up.stdout!.on('data', (d) => { const m = /ready (\S+)/.exec(String(d)); if (m) resolve(m[1]); }));
  try {
    const name = ((await (await fetch(`${url}/v1/models`)).json()) as any).data[0].id;
    // Token ids 300 .. 40299 on smollm2-135m (as always); within the vocabulary of a smaller model.
    const vocab = JSON.parse(readFileSync(join(model, 'config.json'), 'utf8')).vocab_size as number;
    const idBase = vocab > 600 ? 300 : 3, idSpan = Math.min(40000, vocab - idBase);
    const workers = ((await (await fetch(`${url}/workers`)).json()) as any).workers as any[];
    const prefill = workers.find((w) => w.role !== 'decode');
    const rows: Row[] = [];
    await ttftStream(url, name, Array.from({ length: 32 }, (_, i) => 100 + i)); // warm-up
    // Steady state, as a server that has run a while: every length a few times (prompts unlike the
    // measured ones), so the shared-memory ring has wrapped once and the buffer pools and the decode
    // slots' arena pages have been written. On this VM a page written for the first time costs up to
    // ~0.1 ms (the host backs it then): cold transfers measured 20-70 ms where warm ones took 7-10.
    for (let w = 0; w < warmup; w++) {
      for (const L of lengths) await ttftStream(url, name, Array.from({ length: L }, (_, j) => idBase + ((j * 104723 + (w + 1) * 15485863) % idSpan)));
    }
    await new Promise((res) => setTimeout(res, 300));
    traceStages(0);
    for (const L of lengths) {
      const r = { ttft: [] as number[], bytes: [] as number[], secs: [] as number[], tail: [] as number[], prefill: [] as number[], traces: [] as Array<Record<string, number>> };
      for (let i = 0; i < reps; i++) {
        const prompt = Array.from({ length: L }, (_, j) => idBase + ((j * 7919 + i * 104729) % idSpan));
        const [wb, rb] = [await scrape(prefill.metrics_url), await scrape(`${url}/metrics`)];
        r.ttft.push(await ttftStream(url, name, prompt));
        await new Promise((res) => setTimeout(res, 300));
        r.traces.push(traceStages(lastFirstTokenAt));
        const [wa, ra] = [await scrape(prefill.metrics_url), await scrape(`${url}/metrics`)];
        r.bytes.push(sum(wa, 'pdserve_kv_transfer_bytes_total') - sum(wb, 'pdserve_kv_transfer_bytes_total'));
        r.secs.push(sum(wa, 'pdserve_kv_transfer_seconds_sum') - sum(wb, 'pdserve_kv_transfer_seconds_sum'));
        r.tail.push(1000 * (sum(ra, 'pdserve_ttft_breakdown_seconds_sum', 'phase="kv_transfer"') - sum(rb, 'pdserve_ttft_breakdown_seconds_sum', 'phase="kv_transfer"')));
        r.prefill.push(1000 * (sum(ra, 'pdserve_ttft_breakdown_seconds_sum', 'phase="prefill"') - sum(rb, 'pdserve_ttft_breakdown_seconds_sum', 'phase="prefill"')));
      }
      const bytes = median(r.bytes), secs = median(r.secs), ttft = median(r.ttft), tail = median(r.tail);
      // End to end as the issue defines it: first block handed over (the engine thread's sink) ->
      // last block in the decode worker's arena.
      // Only for prompts of one prefill chunk: a longer prompt's earlier chunks were handed over
      // while it computed, so its bytes and this interval would not match.
      const e2e = r.traces.filter((t) => t['p.chunk_done:first'] === 0).map((t) => t['d.applied:last'] - t['p.sink:first']).filter((x) => Number.isFinite(x));
      const keys = [...new Set(r.traces.flatMap((x) => Object.keys(x)))];
      const timeline = Object.fromEntries(keys.map((k) => [k, median(r.traces.map((x) => x[k]).filter((v) => v !== undefined))] as const).sort((a, b) => a[1] - b[1]));
      rows.push({
        config, prompt_tokens: L, kv_mib: bytes / 2 ** 20, transfer_ms: secs * 1000, gib_per_s: secs > 0 ? bytes / secs / 2 ** 30 : 0,
        e2e_ms: e2e.length ? median(e2e) : undefined, e2e_gib_per_s: e2e.length ? bytes / (median(e2e) / 1000) / 2 ** 30 : undefined,
        prefill_ms: median(r.prefill), exposed_transfer_ms: tail, ttft_ms: ttft, exposed_share_of_ttft: tail / ttft, transfer_share_of_ttft: (secs * 1000) / ttft, timeline,
        e2e_ms_each: e2e.length ? e2e : undefined, exposed_ms_each: r.tail,
      });
    }
    return rows;
  } finally {
    up.kill('SIGTERM');
    await new Promise((res) => up.once('exit', res));
  }
}

async function main(): Promise<void> {
  const model = values.model ?? join(root, '.cache/bench-models/smollm2-135m-4k');
  if (!existsSync(join(model, 'config.json'))) writeDummyModel('smollm2-135m', model, { maxSeqLen: 4096 });
  const memcpy = memcpyGBs();
  const tcp = await loopbackGBs();
  const kv128 = 128 * 30 * 2 * 3 * 64 * 4; // a 128-token prompt of smollm2-135m, fp32
  const grpcAlone = await grpcPushMs(kv128, [4 * 2 ** 20, 2 ** 20, 256 * 1024]);
  const rows: Row[] = [];
  for (const dtype of dtypes) {
    for (const transport of values.transports!.split(',')) {
      // --planner off: the planner would turn the pair into unified workers once it sees load (the
      // warm-up is enough), and the prompts would then be prefilled where they decode.
      const base = ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote', '--planner', 'off', '--kv-wire-dtype', dtype, '--kv-transport', transport];
      if (transport !== 'tcp') { rows.push(...await measure(`disaggregated ${dtype} ${transport}`, model, base)); continue; }
      for (const shm of values.shm!.split(',')) {
        rows.push(...await measure(`disaggregated ${dtype} tcp${shm === 'on' ? '+shm' : ''}`, model, [...base, '--kv-shm-mib', shm === 'on' ? '32' : '0']));
      }
    }
  }
  if (values.unified) rows.push(...await measure('unified', model, ['--unified', '1', '--planner', 'off']));
  const memcpyAgain = memcpyGBs();
  console.log(`memcpy ${(memcpy / 1.073741824).toFixed(2)} GiB/s (${(memcpyAgain / 1.073741824).toFixed(2)} after the clusters), loopback TCP ${(tcp / 1.073741824).toFixed(2)} GiB/s (one stream, 4 MiB writes)`);
  console.log(`gRPC alone (Decode.PushKv of ${(kv128 / 2 ** 20).toFixed(2)} MiB to a process acknowledging at the end of the stream, median of 10): ${[...grpcAlone].map(([m, ms]) => `${m / 1024} KiB messages ${ms.toFixed(1)} ms = ${(kv128 / (ms / 1000) / 2 ** 30).toFixed(2)} GiB/s`).join(', ')}`);
  console.log('| config | prompt tokens | KV MiB on the wire | transfer ms | GiB/s | end to end ms | end-to-end GiB/s | prefill ms | exposed transfer ms | TTFT ms | exposed / TTFT |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|');
  const f = (x: number | undefined, d: number) => (x === undefined ? '-' : x.toFixed(d));
  for (const x of rows) {
    console.log(`| ${x.config} | ${x.prompt_tokens} | ${x.kv_mib.toFixed(2)} | ${x.transfer_ms.toFixed(1)} | ${x.gib_per_s.toFixed(3)} | ${f(x.e2e_ms, 1)} | ${f(x.e2e_gib_per_s, 3)} | ${x.prefill_ms.toFixed(0)} | ${x.exposed_transfer_ms.toFixed(1)} | ${x.ttft_ms.toFixed(0)} | ${(100 * x.exposed_share_of_ttft).toFixed(1)}% |`);
  }
  const unified = rows.filter((x) => x.config === 'unified');
  for (const u of unified) {
    for (const d of rows.filter((x) => x.config.startsWith('disaggregated fp32') && x.prompt_tokens === u.prompt_tokens)) {
      console.log(`router-visible TTFT at ${u.prompt_tokens} tokens: ${d.config} ${d.ttft_ms.toFixed(0)} ms vs unified ${u.ttft_ms.toFixed(0)} ms (${(100 * (d.ttft_ms / u.ttft_ms - 1)).toFixed(1)}%)`);
    }
  }
  console.log('\nKV timeline, ms after the last prefill chunk ended (median over reps; :first/:last = first/last occurrence)');
  for (const x of rows) if (x.config !== 'unified') console.log(`${x.config}, ${x.prompt_tokens} tokens: ${Object.entries(x.timeline ?? {}).map(([k, v]) => `${k}=${v.toFixed(1)}`).join('  ')}`);
  console.log(JSON.stringify({ memcpy_gbs: memcpy, loopback_tcp_gbs: tcp, grpc_alone_ms: Object.fromEntries(grpcAlone), rows: rows.map(({ timeline, ...rest }) => rest) }));
}

if (values['grpc-sink']) await grpcSink(Number(values['grpc-sink']));
else await main();
