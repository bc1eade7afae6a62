// Router overhead: the latency a request gains by going through the router (HTTP, validation,
// tokenizer, worker choice, JSON) over driving the same workers directly with the same gRPC calls
// the router makes. Both paths run the same requests, interleaved, against one cluster.
//
//   node --import tsx scripts/bench-router-overhead.ts [--model DIR] [--requests 200]
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { decodeClient, freePort, prefillClient, requestMetadata, type GenerateEventMsg, type grpc } from '../packages/common/src/index.ts';
import { writeDummyModel } from '../packages/engine/src/index.ts';

const { values } = parseArgs({ options: { model: { type: 'string' }, requests: { type: 'string', default: '200' } } });
const root = new URL('..', import.meta.url).pathname;
const n = Number(values.requests);

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const i = (s.length - 1) * p;
  return s[Math.floor(i)] + (s[Math.ceil(i)] - s[Math.floor(i)]) * (i - Math.floor(i));
}

async function main(): Promise<void> {
  const model = values.model ?? join(root, '.cache/bench-models/tiny');
  if (!existsSync(join(model, 'config.json'))) writeDummyModel('tiny', model);
  const port = await freePort();
  const up = spawn(process.execPath, ['--import', 'tsx', join(root, 'packages/cli/src/main.ts'), 'up', '--model', model, '--port', String(port), '--prefill', '1', '--decode', '1', '--prefill-placement', 'remote', '--threads', '1'], { stdio: ['ignore', 'pipe', 'ignore'] });
  const url = await new Promise<string>((resolve) => up.stdout!.on('data', (d) => { const m = /ready (\S+)/.exec(String(d)); if (m) resolve(m[1]); }));
  try {
    const name = ((await (await fetch(`${url}/v1/models`)).json()) as any).data[0].id;
    const workers = ((await (await fetch(`${url}/workers`)).json()) as any).workers as any[];
    const p = workers.find((w) => w.role === 'prefill');
    const d = workers.find((w) => w.role === 'decode');
    const pc = prefillClient(p.grpc_address) as grpc.Client & Record<string, Function>;
    const dc = decodeClient(d.grpc_address) as grpc.Client & Record<string, Function>;
    const prompt = Array.from({ length: 16 }, (_, i) => 300 + i);
    const maxTokens = 4;
    const sampling = { temperature: 0, top_p: 1, top_k: 0, seed: 1, max_tokens: maxTokens, min_tokens: maxTokens, stop_token_ids: [], ignore_eos: true, logprobs: -1 };

    const viaRouter = async () => {
      const t0 = performance.now();
      const res = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: name, prompt, max_tokens: maxTokens, min_tokens: maxTokens, ignore_eos: true, temperature: 0 }) });
      const body = (await res.json()) as any;
      if (body.usage?.completion_tokens !== maxTokens) throw new Error(JSON.stringify(body));
      return performance.now() - t0;
    };
    let seq = 0;
    // The router's protocol, by hand: reserve on decode, prefill with the KV sent there, read tokens.
    const direct = () => new Promise<number>((resolve, reject) => {
      const t0 = performance.now();
      const id = `direct-${++seq}`;
      const md = requestMetadata(id);
      const stream = dc.Generate({ request_id: id, prompt_len: prompt.length, sampling, kv_timeout_ms: 10_000 }, md) as grpc.ClientReadableStream<GenerateEventMsg>;
      let tokens = 0;
      stream.on('data', (e: GenerateEventMsg) => {
        if (e.event === 'reserved') pc.Prefill({ request_id: id, prompt_ids: prompt, sampling, decode_address: d.grpc_address }, md, (err: Error | null) => err && reject(err));
        else if (e.event === 'tokens') tokens += e.tokens!.tokens.length;
        else if (e.event === 'finished') resolve(performance.now() - t0);
      });
      stream.on('error', reject);
      void tokens;
    });

    // The floor of any HTTP hop from this client: a bodyless GET the router answers at once.
    const health = async () => {
      const t0 = performance.now();
      await (await fetch(`${url}/health`)).text();
      return performance.now() - t0;
    };
    for (let i = 0; i < 20; i++) { await viaRouter(); await direct(); await health(); } // warm-up
    const r: number[] = [];
    const g: number[] = [];
    const h: number[] = [];
    for (let i = 0; i < n; i++) {
      r.push(await viaRouter());
      g.push(await direct());
      h.push(await health());
    }
    const row = (label: string, xs: number[]) => `| ${label} | ${pct(xs, 0.5).toFixed(2)} | ${pct(xs, 0.9).toFixed(2)} | ${pct(xs, 0.99).toFixed(2)} |`;
    console.log(`${n} requests each way, interleaved; prompt 16 tokens, 4 output tokens, non-streaming`);
    console.log('| path | p50 ms | p90 ms | p99 ms |');
    console.log('|---|---|---|---|');
    console.log(row('through the router (HTTP)', r));
    console.log(row('workers directly (gRPC, same calls)', g));
    console.log(row('HTTP floor: GET /health round trip', h));
    console.log(`| router adds | ${(pct(r, 0.5) - pct(g, 0.5)).toFixed(2)} | ${(pct(r, 0.9) - pct(g, 0.9)).toFixed(2)} | ${(pct(r, 0.99) - pct(g, 0.99)).toFixed(2)} |`);
    pc.close();
    dc.close();
  } finally {
    up.kill('SIGTERM');
  }
}

await main();
