// Starts a real local cluster for end-to-end tests: `pdserve up` as a child process (which starts
// redis-server, the router and the workers), waiting for its `ready URL` line.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { convertLlama2c } from '../../packages/engine/src/index.ts';
import { freePort } from '../../packages/common/src/index.ts';
import { repoRoot, sharedPath } from './shared.ts';

export interface TestCluster {
  url: string;
  modelDir: string;
  modelName: string;
  proc: ChildProcess;
  output: () => string;
  stop(): Promise<void>;
}

/** Converts stories260K from ../shared into a fresh model directory. */
export function stories260K(): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-e2e-'));
  const src = sharedPath('models', 'stories260K');
  const out = join(dir, 'stories260K');
  convertLlama2c({ checkpoint: join(src, 'stories260K.bin'), tokenizer: join(src, 'tok512.bin'), out });
  return { dir: out, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export interface ClusterOptions {
  /** Extra environment for `pdserve up`. */
  env?: Record<string, string>;
  /** The name the model is served under (default stories260K). */
  modelName?: string;
  /** Start `up` as the leader of a process group of its own, as a shell runs a foreground command (so a test can signal the group as a terminal's Ctrl-C does). */
  ownProcessGroup?: boolean;
}

/** Starts `pdserve up --model modelDir` (without --model when modelDir is null: up's own choice). */
export async function startCluster(modelDir: string | null, args: string[] = [], timeoutMs = 60_000, opts: ClusterOptions = {}): Promise<TestCluster> {
  const port = await freePort();
  const model = modelDir === null ? [] : ['--model', modelDir];
  const proc = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, 'packages/cli/src/main.ts'), 'up', ...model, '--port', String(port), ...args], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
    detached: opts.ownProcessGroup === true,
  });
  let out = '';
  proc.stdout!.on('data', (d) => { out += d; });
  proc.stderr!.on('data', (d) => { out += d; });
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`cluster not ready in ${timeoutMs} ms:\n${out.slice(-4000)}`)), timeoutMs);
    const check = () => {
      const m = /^ready (http:\S+)$/m.exec(out);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    };
    proc.stdout!.on('data', check);
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`pdserve up exited with ${code}:\n${out.slice(-4000)}`)); });
  });
  return {
    url, modelDir: modelDir ?? '', modelName: opts.modelName ?? (modelDir === null ? 'stories260K' : basename(modelDir)), proc, output: () => out,
    stop: async () => {
      if (proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

export async function postJson(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any; headers: Headers }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await res.text();
  let json: unknown;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: res.status, json, headers: res.headers };
}

/** Reads an SSE response to the end: the parsed `data:` payloads, and whether [DONE] came. */
export async function readSse(res: Response): Promise<{ events: any[]; done: boolean }> {
  const text = await res.text();
  const events: any[] = [];
  let done = false;
  for (const block of text.split('\n\n')) {
    const line = block.trim();
    if (!line.startsWith('data: ')) continue;
    const payload = line.slice(6);
    if (payload === '[DONE]') done = true;
    else events.push(JSON.parse(payload));
  }
  return { events, done };
}

export async function waitFor<T>(fn: () => Promise<T | undefined>, timeoutMs: number, what: string, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
