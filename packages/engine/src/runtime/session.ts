// ONNX Runtime session creation: the execution provider (cpu by default, webgpu or cuda on request)
// and the intra-op thread count, so a worker can be pinned to one core.
import * as ort from 'onnxruntime-node';

export type Device = 'cpu' | 'webgpu' | 'cuda';
export const DEVICES: readonly Device[] = ['cpu', 'webgpu', 'cuda'];

export interface SessionOptions {
  device?: Device;
  /** Intra-op threads; 0 lets ONNX Runtime choose (one per core). */
  threads?: number;
  /**
   * Turns on ONNX Runtime's profiler, which writes a chrome-trace JSON (every node run with its
   * op type and execution provider) to `<prefix>_<timestamp>.json` at session.endProfiling().
   * For tests and diagnosis: it records every node of every run.
   */
  profileFilePrefix?: string;
}

export async function createSession(modelPath: string, opts: SessionOptions = {}): Promise<ort.InferenceSession> {
  const device = opts.device ?? 'cpu';
  if (!DEVICES.includes(device)) throw new Error(`unknown device ${JSON.stringify(device)} (expected one of ${DEVICES.join(', ')})`);
  const providers: ort.InferenceSession.ExecutionProviderConfig[] = device === 'cpu' ? ['cpu'] : [device, 'cpu'];
  try {
    return await ort.InferenceSession.create(modelPath, {
      executionProviders: providers,
      intraOpNumThreads: opts.threads ?? 0,
      interOpNumThreads: 1,
      executionMode: 'sequential',
      graphOptimizationLevel: 'all',
      logSeverityLevel: 3,
      ...(opts.profileFilePrefix !== undefined ? { enableProfiling: true, profileFilePrefix: opts.profileFilePrefix } : {}),
    });
  } catch (err) {
    throw new Error(`cannot load ${modelPath} on ${device}: ${(err as Error).message}`);
  }
}

export { ort };
