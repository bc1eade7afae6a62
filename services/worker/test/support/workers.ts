// Real worker processes for end-to-end tests of the worker's gRPC surface: a private redis-server,
// `pdserve worker` children (real engine threads, real ONNX Runtime) on stories260K, and helpers that
// send raw gRPC messages to them, as a router or a prefill worker would (or a hostile client).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import type { TestContext } from 'node:test';
import { join } from 'node:path';
import {
  checksumBlocks, kvBytesPerToken,
} from '../../../../packages/engine/src/index.ts';
import {
  decodeClient, grpc, prefillClient, requestMetadata, startRedisServer,
  type GenerateEventMsg, type GenerateRequestMsg, type KvChunkMsg, type PrefillRequestMsg, type PrefillResponseMsg, type RedisServerHandle, type SamplingParamsMsg,
} from '../../../../packages/common/src/index.ts';
import { repoRoot, sharedPath } from '../../../../test/support/shared.ts';
import { waitFor } from '../../../../test/support/cluster.ts';

export const BLOCK_TOKENS = 16;

export interface WorkerProc {
  role: string;
  address: string;
  metricsUrl: string;
  proc: ChildProcess;
  output(): string;
  prefill: grpc.Client;
  decode: grpc.Client;
  /** The worker's /health JSON and status. */
  health(): Promise<{ status: number; json: any }>;
  stop(): Promise<void>;
}

export async function startRedis(): Promise<RedisServerHandle> {
  return startRedisServer();
}

export async function startWorkerProc(modelDir: string, redisUrl: string, role: 'prefill' | 'decode' | 'unified', extra: string[] = [], env: Record<string, string> = {}): Promise<WorkerProc> {
  const proc = spawn(process.execPath, [
    '--import', 'tsx', join(repoRoot, 'packages/cli/src/main.ts'), 'worker', '--role', role, '--model', modelDir, '--redis-url', redisUrl,
    '--threads', '1', '--block-tokens', String(BLOCK_TOKENS), ...extra,
  ], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  proc.stdout!.on('data', (d) => { out += d; });
  proc.stderr!.on('data', (d) => { out += d; });
  const ready = await new Promise<{ grpc: string; metrics: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`worker not ready in 60 s:\n${out.slice(-3000)}`)), 60_000);
    const check = () => {
      for (const line of out.split('\n')) {
        if (!line.includes('"worker ready"')) continue;
        const j = JSON.parse(line);
        clearTimeout(timer);
        resolve({ grpc: j.grpc, metrics: j.metrics });
        return;
      }
    };
    proc.stdout!.on('data', check);
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`worker exited with ${code}:\n${out.slice(-3000)}`)); });
  });
  const prefill = prefillClient(ready.grpc);
  const decode = decodeClient(ready.grpc);
  return {
    role, address: ready.grpc, metricsUrl: ready.metrics, proc, output: () => out, prefill, decode,
    health: async () => {
      const res = await fetch(ready.metrics.replace(/\/metrics$/, '/health'));
      return { status: res.status, json: await res.json() };
    },
    stop: async () => {
      prefill.close();
      decode.close();
      if (proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await exited;
    },
  };
}

/** Block bytes of a model directory's KV layout at BLOCK_TOKENS. */
export function blockBytesOf(modelDir: string): number {
  const cfg = JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8'));
  return kvBytesPerToken(cfg) * BLOCK_TOKENS;
}

export function sampling(p: Partial<SamplingParamsMsg> = {}): SamplingParamsMsg {
  return { temperature: 0, top_p: 1, top_k: -1, seed: 1, max_tokens: 8, min_tokens: 0, stop_token_ids: [], ignore_eos: true, logprobs: -1, ...p };
}

export interface GenerateCall {
  call: grpc.ClientReadableStream<GenerateEventMsg>;
  events: GenerateEventMsg[];
  /** Resolves when the worker answered `reserved` (rejects if the call ended first). */
  reserved: Promise<void>;
  /** Resolves with the final status (OK after `finished`). */
  ended: Promise<{ code: grpc.status; details: string; events: GenerateEventMsg[] }>;
}

export function generate(w: WorkerProc, req: Partial<GenerateRequestMsg> & { request_id: string }): GenerateCall {
  const msg = { prompt_len: 5, sampling: sampling(), kv_timeout_ms: 30_000, ...req };
  const call = (w.decode as any).Generate(msg, requestMetadata(req.request_id), { deadline: Date.now() + 60_000 }) as grpc.ClientReadableStream<GenerateEventMsg>;
  const events: GenerateEventMsg[] = [];
  let onReserved!: () => void;
  let onNotReserved!: (e: Error) => void;
  const reserved = new Promise<void>((res, rej) => { onReserved = res; onNotReserved = rej; });
  reserved.catch(() => {});
  call.on('data', (e: GenerateEventMsg) => {
    events.push(e);
    if (e.event === 'reserved') onReserved();
  });
  const ended = new Promise<{ code: grpc.status; details: string; events: GenerateEventMsg[] }>((resolve) => {
    call.on('status', (s: grpc.StatusObject) => {
      onNotReserved(new Error(`Generate ended before reserved: ${s.code} ${s.details}`));
      resolve({ code: s.code, details: s.details, events });
    });
    call.on('error', () => {});
  });
  return { call, events, reserved, ended };
}

export function prefill(w: WorkerProc, req: Partial<PrefillRequestMsg> & { request_id: string }, deadlineMs = 30_000): Promise<{ code: grpc.status; details: string; response?: PrefillResponseMsg }> {
  const msg = { prompt_ids: [1, 2, 3, 4, 5], sampling: sampling(), decode_address: '', ...req };
  return new Promise((resolve) => {
    (w.prefill as any).Prefill(msg, requestMetadata(req.request_id), { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, response: PrefillResponseMsg) => {
      resolve(err ? { code: err.code, details: err.details } : { code: grpc.status.OK, details: '', response });
    });
  });
}

/** One PushKv call carrying `chunks` (sent `gapMs` apart); resolves with its status. */
export function pushKv(w: WorkerProc, requestId: string, chunks: KvChunkMsg[], gapMs = 0): Promise<{ code: grpc.status; details: string }> {
  return new Promise((resolve) => {
    const call = (w.decode as any).PushKv(requestMetadata(requestId), { deadline: Date.now() + 30_000 }, (err: grpc.ServiceError | null) => {
      resolve(err ? { code: err.code, details: err.details } : { code: grpc.status.OK, details: '' });
    }) as grpc.ClientWritableStream<KvChunkMsg>;
    void (async () => {
      for (const c of chunks) {
        if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
        call.write(c);
      }
      call.end();
    })();
  });
}

/** A well-formed KV chunk of zero-valued blocks [first, first + count) for a prompt of promptLen positions. */
export function zeroChunk(requestId: string, blockBytes: number, promptLen: number, first: number, count: number, done: boolean, firstTokenId: number | null = 7): KvChunkMsg {
  const data = new Uint8Array(count * blockBytes);
  return {
    request_id: requestId, first_block: first, block_count: count, token_count: Math.min(promptLen, (first + count) * BLOCK_TOKENS),
    data, checksums: checksumBlocks(data, blockBytes), done,
    first_token: done && firstTokenId !== null ? { id: firstTokenId, logprob: 0, top_logprobs: [] } : null,
    block_tokens: BLOCK_TOKENS, block_bytes: blockBytes,
  };
}

/** waitFor, polling every 50 ms. */
export const pollUntil = <T>(fn: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> => waitFor(fn, timeoutMs, what, 50);

/** True when ../shared/models/stories260K is there; otherwise skips the test (fails it under CI). */
export function needStories260K(t: TestContext): boolean {
  if (existsSync(sharedPath('models', 'stories260K'))) return true;
  if (process.env.CI === 'true') throw new Error('../shared/models/stories260K is missing');
  t.skip('../shared/models/stories260K is missing: put the shared model folder beside the repository');
  return false;
}

/** Waits until the worker reports every KV block free (nothing leaked), and returns its load. */
export async function allBlocksFree(w: WorkerProc, timeoutMs = 10_000): Promise<any> {
  return pollUntil(async () => {
    const { json } = await w.health();
    const l = json.load;
    return l.total_kv_blocks > 0 && l.free_kv_blocks === l.total_kv_blocks && l.running === 0 && l.waiting === 0 && l.queue_len === 0 ? l : undefined;
  }, timeoutMs, `${w.role} worker to free every KV block`);
}

/** The worker process is alive and answers Health over gRPC. */
export async function assertAlive(w: WorkerProc): Promise<void> {
  if (w.proc.exitCode !== null) throw new Error(`${w.role} worker exited with ${w.proc.exitCode}:\n${w.output().slice(-3000)}`);
  await new Promise<void>((resolve, reject) => {
    (w.decode as any).Health({}, { deadline: Date.now() + 5_000 }, (err: Error | null) => (err ? reject(err) : resolve()));
  });
}
