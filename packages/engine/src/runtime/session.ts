// ONNX Runtime session creation: the execution provider (cpu by default, webgpu or cuda on request)
// and the intra-op thread count, so a worker can be pinned to one core.
import { dirname } from 'node:path';
import * as ort from 'onnxruntime-node';
import { releaseMappedPages } from './mapped-pages.ts';

export type Device = 'cpu' | 'webgpu' | 'cuda';
export const DEVICES: readonly Device[] = ['cpu', 'webgpu', 'cuda'];

export interface SessionOptions {
  device?: Device;
  /** Intra-op threads; 0 lets ONNX Runtime choose (one per core). */
  threads?: number;
  /**
   * Whether idle intra-op threads spin waiting for the next piece of work (ONNX Runtime's default)
   * or sleep. Spinning wins when each thread has a core to itself; where workers share cores (two
   * unpinned 2-thread workers on 2 cores), a spinning pool burns the core the other worker's pass
   * needs: measured here, both passes ran 1.4x slower than without spinning (BENCHMARKS.md).
   */
  spinning?: boolean;
  /**
   * Turns on ONNX Runtime's profiler, which writes a chrome-trace JSON (every node run with its
   * op type and execution provider) to `<prefix>_<timestamp>.json` at session.endProfiling().
   * For tests and diagnosis: it records every node of every run.
   */
  profileFilePrefix?: string;
  /**
   * Once the session is built, drop this process's resident pages of the model directory's files
   * that ONNX Runtime memory-mapped (runtime/mapped-pages.ts; default true). They are clean pages a
   * later read faults back in; on x86-64 they are mostly MatMulNBits scales no kernel reads again.
   */
  releaseMappedWeights?: boolean;
}

/** ONNX Runtime's session options for `opts` (device checked by createSession). */
export function ortSessionOptions(opts: SessionOptions = {}): ort.InferenceSession.SessionOptions {
  const device = opts.device ?? 'cpu';
  const providers: ort.InferenceSession.ExecutionProviderConfig[] = device === 'cpu' ? ['cpu'] : [device, 'cpu'];
  return {
    executionProviders: providers,
    intraOpNumThreads: opts.threads ?? 0,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    logSeverityLevel: 3,
    ...(opts.spinning === false ? { extra: { session: { intra_op: { allow_spinning: '0' } } } } : {}),
    ...(opts.profileFilePrefix !== undefined ? { enableProfiling: true, profileFilePrefix: opts.profileFilePrefix } : {}),
  };
}

export async function createSession(modelPath: string, opts: SessionOptions = {}): Promise<ort.InferenceSession> {
  const device = opts.device ?? 'cpu';
  if (!DEVICES.includes(device)) throw new Error(`unknown device ${JSON.stringify(device)} (expected one of ${DEVICES.join(', ')})`);
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(modelPath, ortSessionOptions(opts));
  } catch (err) {
    throw new Error(`cannot load ${modelPath} on ${device}: ${(err as Error).message}`);
  }
  if (opts.releaseMappedWeights !== false) releaseMappedPages(dirname(modelPath));
  return session;
}

export { ort };
