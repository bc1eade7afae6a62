// The benchmarks' way of timing an ONNX Runtime session: a few untimed runs first (kernels' first
// calls, the arena's first allocations), then the wall time of each timed run, in order.
import type { ort } from '../../packages/engine/src/runtime/session.ts';

export async function timeRuns(session: ort.InferenceSession, feeds: ort.InferenceSession.FeedsType, o: { warmup: number; reps: number }): Promise<number[]> {
  for (let r = 0; r < o.warmup; r++) await session.run(feeds);
  const ms: number[] = [];
  for (let r = 0; r < o.reps; r++) {
    const t0 = performance.now();
    await session.run(feeds);
    ms.push(performance.now() - t0);
  }
  return ms;
}
