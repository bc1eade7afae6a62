// ONNX Runtime's WebGPU execution provider gives the same greedy ids as the CPU one (and as llama2.c
// run.c, ../shared/golden) on stories260K, over the golden's full 256 positions, and its profile
// shows the heavy nodes (MatMul, Gemm) actually placed on WebGPU rather than ORT's CPU fallback.
//
// WebGPU needs an adapter. On a machine without a GPU, Mesa's lavapipe Vulkan driver provides one
// on the CPU (`bash scripts/install-webgpu.sh`: Debian bookworm-backports, Mesa 25). It is slow
// (20-70 ms a token for this model, 5-20 s in all on 2 busy cores), which is fine for a correctness check. Without
// an adapter the test skips and says why, even under CI, because the adapter is optional hardware;
// PDSERVE_REQUIRE_WEBGPU=1 turns the skip into a failure.
//
// The WebGPU half runs in a child process (this file, started with PDSERVE_WEBGPU_CHILD=1) that
// reports JSON lines, so a driver that crashes or hangs while looking for an adapter can't take
// the test process down or stall it. Dawn's warnings go to the child's stderr, which the parent
// collects and quotes only when something goes wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { convertLlama2c, Engine, generate, readModelConfig } from '../src/index.ts';
import { SlotKvCache } from '../src/kv/slot-cache.ts';
import { LlamaRunner } from '../src/runner/llama-runner.ts';
import { createSession } from '../src/runtime/session.ts';
import { repoRoot, requireShared } from '../../../test/support/shared.ts';

const CHILD_ENV = 'PDSERVE_WEBGPU_CHILD';
const MARK = 'PDSERVE_WEBGPU ';
/** Session creation (adapter discovery, shader set-up): past this the adapter counts as unusable. */
const LOAD_TIMEOUT_MS = 60_000;
/** Generation once the session exists (5-20 s on lavapipe with 2 busy cores): past this it's a hang. */
const GENERATE_TIMEOUT_MS = 240_000;
/** The provider ONNX Runtime names in its profile for nodes placed on WebGPU. */
const WEBGPU_PROVIDER = 'WebGpuExecutionProvider';
const ENABLE_HINT = 'run `bash scripts/install-webgpu.sh` (Mesa lavapipe from Debian bookworm-backports) to get a software adapter; set PDSERVE_REQUIRE_WEBGPU=1 to make a missing adapter fail';

interface Job { modelDir: string; promptIds: number[]; maxTokens: number; profilePrefix: string }
/** Node runs in ONNX Runtime's profile: op type -> execution provider -> count. */
type Placement = Record<string, Record<string, number>>;
type ChildMessage =
  | { phase: 'loaded'; ms: number }
  | { phase: 'load-failed'; error: string }
  | { phase: 'done'; ids: number[]; finishReason: string; ms: number }
  | { phase: 'profiled'; placement: Placement };

/**
 * Where the graph's nodes ran: a second WebGPU session of the engine's own making (createSession,
 * LlamaRunner), with ORT's profiler on, runs one prefill and one decode step; its profile's node
 * events name each node's op type and execution provider. A separate short session keeps the
 * profile small (the generation above runs hundreds of steps).
 */
async function profilePlacement(job: Job): Promise<Placement> {
  const config = readModelConfig(job.modelDir);
  const session = await createSession(join(job.modelDir, config.onnx.file), { device: 'webgpu', threads: 1, profileFilePrefix: job.profilePrefix });
  const cache = new SlotKvCache({
    layers: config.n_layers, kvHeads: config.n_kv_heads, headDim: config.head_dim, blockTokens: 16,
    maxSlots: 1, maxTokensPerSlot: job.promptIds.length + 1,
  });
  const runner = new LlamaRunner(session, cache, config.vocab_size);
  const seq = runner.allocate('profile')!;
  await runner.forward([{ seq, tokens: job.promptIds }]);
  await runner.forward([{ seq, tokens: [job.promptIds[0]] }]);
  session.endProfiling();
  await session.release();
  const dir = join(job.profilePrefix, '..');
  const base = job.profilePrefix.slice(dir.length + 1);
  const files = readdirSync(dir).filter((f) => f.startsWith(base) && f.endsWith('.json'));
  if (files.length !== 1) throw new Error(`expected one profile ${job.profilePrefix}_*.json, found ${JSON.stringify(files)}`);
  const events = JSON.parse(readFileSync(join(dir, files[0]), 'utf8')) as Array<{ cat?: string; args?: { op_name?: string; provider?: string } }>;
  const placement: Placement = {};
  for (const e of events) {
    if (e.cat !== 'Node' || !e.args?.op_name || !e.args.provider) continue;
    const byProvider = (placement[e.args.op_name] ??= {});
    byProvider[e.args.provider] = (byProvider[e.args.provider] ?? 0) + 1;
  }
  return placement;
}

async function child(): Promise<void> {
  const job: Job = JSON.parse(process.env[CHILD_ENV + '_JOB']!);
  const send = (m: ChildMessage) => process.stdout.write(MARK + JSON.stringify(m) + '\n');
  let engine: Engine;
  const t0 = Date.now();
  try {
    engine = await Engine.load(job.modelDir, { device: 'webgpu', threads: 1, maxSequences: 2 });
  } catch (err) {
    send({ phase: 'load-failed', error: (err as Error).message });
    return;
  }
  send({ phase: 'loaded', ms: Date.now() - t0 });
  const t1 = Date.now();
  const result = await generate(engine, job.promptIds, { temperature: 0, topK: 0, topP: 1, maxTokens: job.maxTokens });
  send({ phase: 'done', ids: result.ids, finishReason: result.finishReason, ms: Date.now() - t1 });
  send({ phase: 'profiled', placement: await profilePlacement(job) });
}

interface ChildOutcome { messages: ChildMessage[]; code: number | null; signal: string | null; timedOut?: 'load' | 'generate'; stderr: string }

function runChild(job: Job): Promise<ChildOutcome> {
  return new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, [CHILD_ENV]: '1', [CHILD_ENV + '_JOB']: JSON.stringify(job) };
    delete env.NODE_TEST_CONTEXT; // the child is a plain script, not a test-runner subprocess
    const proc = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const messages: ChildMessage[] = [];
    let stdout = '';
    let stderr = '';
    let timedOut: ChildOutcome['timedOut'];
    let timer = setTimeout(() => { timedOut = 'load'; proc.kill('SIGKILL'); }, LOAD_TIMEOUT_MS);
    proc.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      let nl: number;
      while ((nl = stdout.indexOf('\n')) >= 0) {
        const line = stdout.slice(0, nl);
        stdout = stdout.slice(nl + 1);
        if (!line.startsWith(MARK)) continue;
        const m = JSON.parse(line.slice(MARK.length)) as ChildMessage;
        messages.push(m);
        if (m.phase === 'loaded') {
          clearTimeout(timer);
          timer = setTimeout(() => { timedOut = 'generate'; proc.kill('SIGKILL'); }, GENERATE_TIMEOUT_MS);
        }
      }
    });
    proc.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk; });
    proc.on('error', (err) => { clearTimeout(timer); reject(err); });
    proc.on('close', (code, signal) => { clearTimeout(timer); resolve({ messages, code, signal, timedOut, stderr }); });
  });
}

/** ORT's error without its source location: from "Failed to get a WebGPU adapter" on when present. */
function shortError(error: string): string {
  const flat = error.replace(/\s+/g, ' ').trim();
  const at = flat.indexOf('Failed to get a WebGPU adapter');
  return at >= 0 ? flat.slice(at) : flat;
}

/** The lines of the child's stderr worth quoting (Dawn's and ORT's complaints), shortened. */
function stderrSummary(stderr: string): string {
  const lines = stderr.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('at '));
  const text = lines.slice(-6).join(' | ');
  return text.length > 600 ? text.slice(0, 600) + '…' : text;
}

if (process.env[CHILD_ENV] === '1') {
  await child();
} else {
  test('stories260K: greedy ids on WebGPU equal CPU and llama2.c run.c, with MatMul and Gemm on the WebGPU provider', { timeout: LOAD_TIMEOUT_MS + GENERATE_TIMEOUT_MS + 60_000 }, async (t) => {
    const dir = requireShared(t, 'models', 'stories260K');
    const goldenPath = requireShared(t, 'golden', 'stories260K.once-upon-a-time.json');
    if (!dir || !goldenPath) return;
    const golden = JSON.parse(readFileSync(goldenPath, 'utf8'));
    const out = mkdtempSync(join(tmpdir(), 'pdserve-webgpu-'));
    t.after(() => rmSync(out, { recursive: true, force: true }));
    convertLlama2c({ checkpoint: join(dir, 'stories260K.bin'), tokenizer: join(dir, 'tok512.bin'), out });

    const cpu = await Engine.load(out, { device: 'cpu', threads: 1, maxSequences: 2 });
    const promptIds = cpu.tokenizer.encode(golden.prompt);
    assert.deepEqual(promptIds, golden.prompt_ids);
    const maxTokens = golden.positions + 1 - promptIds.length;
    const cpuResult = await generate(cpu, promptIds, { temperature: 0, topK: 0, topP: 1, maxTokens });
    const expected: number[] = golden.stop === 'bos' ? golden.generated_ids.slice(0, -1) : golden.generated_ids;
    assert.deepEqual(cpuResult.ids, expected, 'CPU ids differ from the golden file (see golden.test.ts)');

    const outcome = await runChild({ modelDir: out, promptIds, maxTokens, profilePrefix: join(out, 'ort-profile') });
    const loaded = outcome.messages.find((m) => m.phase === 'loaded');
    const done = outcome.messages.find((m) => m.phase === 'done');
    const loadFailed = outcome.messages.find((m) => m.phase === 'load-failed');
    const stderr = stderrSummary(outcome.stderr);

    if (!loaded) {
      // No usable adapter: session creation failed, hung, or took the process down.
      const why = loadFailed ? shortError(loadFailed.error)
        : outcome.timedOut ? `creating the WebGPU session took over ${LOAD_TIMEOUT_MS / 1000}s`
        : `the child process died while creating the WebGPU session (exit ${outcome.code}, signal ${outcome.signal})`;
      const message = `no usable WebGPU adapter: ${why}${stderr ? ` [stderr: ${stderr}]` : ''}. To enable: ${ENABLE_HINT}`;
      if (process.env.PDSERVE_REQUIRE_WEBGPU === '1') throw new Error(message);
      t.skip(message);
      return;
    }
    // From here on the adapter exists, so anything but matching ids is a failure.
    if (!done) {
      const why = outcome.timedOut ? `generation took over ${GENERATE_TIMEOUT_MS / 1000}s`
        : `the child process exited (code ${outcome.code}, signal ${outcome.signal}) before finishing`;
      throw new Error(`WebGPU session loaded but ${why}${stderr ? ` [stderr: ${stderr}]` : ''}`);
    }
    t.diagnostic(`webgpu: session ${loaded.ms} ms, ${done.ids.length} tokens in ${done.ms} ms`);
    assert.deepEqual(done.ids, cpuResult.ids, 'WebGPU greedy ids differ from CPU');
    assert.equal(done.finishReason, cpuResult.finishReason);

    // Equal ids alone would also hold if ORT had quietly placed the whole graph on its CPU fallback.
    const profiled = outcome.messages.find((m) => m.phase === 'profiled');
    if (!profiled) throw new Error(`the WebGPU child exited (code ${outcome.code}, signal ${outcome.signal}) before reporting node placement${stderr ? ` [stderr: ${stderr}]` : ''}`);
    const { placement } = profiled;
    t.diagnostic(`webgpu node placement (node runs in one prefill + one decode step): ${JSON.stringify(placement)}`);
    const fallbacks = Object.entries(placement).filter(([, byProvider]) => Object.keys(byProvider).some((p) => p !== WEBGPU_PROVIDER)).map(([op]) => op);
    t.diagnostic(`op types with nodes off WebGPU: ${fallbacks.join(', ') || 'none'}`);
    // The heavy nodes: MatMul (every weight product, and attention's probabilities x V) and Gemm
    // (the logits head). FusedMatMul (attention scores, com.microsoft) is placed on CPU by ORT
    // 1.30, as are one Concat and one Shape node a step (shape-sized); those are reported above.
    for (const op of ['MatMul', 'Gemm']) {
      const byProvider = placement[op] ?? {};
      assert.ok((byProvider[WEBGPU_PROVIDER] ?? 0) > 0, `no ${op} node ran on ${WEBGPU_PROVIDER}: ${JSON.stringify(placement)}`);
      assert.deepEqual(Object.keys(byProvider), [WEBGPU_PROVIDER], `${op} nodes ran off ${WEBGPU_PROVIDER}: ${JSON.stringify(byProvider)}`);
    }
  });
}
