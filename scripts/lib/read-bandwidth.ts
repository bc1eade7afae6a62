// The machine's memory read rate as ONNX Runtime itself achieves it: a [1 x K] x [K x N] float32
// MatMul over >= 1 GiB of weights (far beyond every cache), i.e. a GEMV that reads each weight once
// and does almost no arithmetic per byte. A decode step at batch 1 reads its weights the same way,
// so no engine on this machine reads faster than this reference at that thread count (a
// Float32Array.set copy, the previous reference, measured below what ORT's GEMV reads).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GraphBuilder } from '../../packages/engine/src/onnx/graph-builder.ts';
import { DataType } from '../../packages/engine/src/onnx/onnx-proto.ts';
import { createSession, ort } from '../../packages/engine/src/runtime/session.ts';
import { timeRuns } from './time-session.ts';

export interface ReadBandwidth {
  threads: number;
  bytes: number;
  msSamples: number[];
  /** bytes / median run time */
  gbPerS: number;
  /** bytes / fastest run */
  bestGbPerS: number;
}

export async function gemvReadBandwidth(threads: number, opts: { K?: number; N?: number; reps?: number } = {}): Promise<ReadBandwidth> {
  const K = opts.K ?? 8192;
  const N = opts.N ?? 32768; // 8192 x 32768 x 4 bytes = 1 GiB
  const reps = opts.reps ?? 9;
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-gemv-'));
  try {
    const g = new GraphBuilder(join(dir, 'gemv.onnx.data'));
    const x = g.input('x', DataType.FLOAT, [1, K]);
    const w = new Float32Array(K * N);
    for (let i = 0; i < w.length; i += 1021) w[i] = (i % 7) - 3; // mostly zeros: values do not change the read
    g.node('MatMul', [x, g.weight('w', w, [K, N])], ['y']);
    g.output('y', DataType.FLOAT, [1, N]);
    g.save(join(dir, 'gemv.onnx'), { '': 17 });
    const session = await createSession(join(dir, 'gemv.onnx'), { threads });
    const feeds = { x: new ort.Tensor('float32', new Float32Array(K).fill(0.5), [1, K]) };
    const msSamples = await timeRuns(session, feeds, { warmup: 2, reps });
    await session.release();
    const sorted = [...msSamples].sort((a, b) => a - b);
    const bytes = K * N * 4;
    return { threads, bytes, msSamples, gbPerS: bytes / (sorted[sorted.length >> 1] / 1000) / 1e9, bestGbPerS: bytes / (sorted[0] / 1000) / 1e9 };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
