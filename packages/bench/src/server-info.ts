// What the benchmark needs to know about the served model, from GET /v1/models: its id, and, when
// the server reports them (vLLM reports max_model_len; pdserve adds vocab_size), the vocabulary size
// and the context length.
import { describeHttpError, normalizeBaseUrl } from './client.ts';

export interface ServerInfo {
  model?: string;
  vocabSize?: number;
  maxModelLen?: number;
  /** Why /v1/models gave nothing, when it did not. */
  error?: string;
}

export async function fetchServerInfo(baseUrl: string, opts: { timeoutMs?: number; model?: string; signal?: AbortSignal } = {}): Promise<ServerInfo> {
  const timeout = AbortSignal.timeout(opts.timeoutMs ?? 10_000);
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
  try {
    const res = await fetch(`${normalizeBaseUrl(baseUrl)}/v1/models`, { signal });
    const text = await res.text();
    if (!res.ok) return { error: describeHttpError(res.status, res.statusText, text) };
    const body = JSON.parse(text) as { data?: Array<Record<string, unknown>> };
    const list = Array.isArray(body.data) ? body.data : [];
    const entry = (opts.model !== undefined ? list.find((m) => m.id === opts.model) : undefined) ?? list[0];
    if (!entry) return { error: '/v1/models lists no model' };
    const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) && v > 0 ? v : undefined);
    return {
      model: typeof entry.id === 'string' ? entry.id : undefined,
      vocabSize: num(entry.vocab_size),
      maxModelLen: num(entry.max_model_len),
    };
  } catch (err) {
    const e = err as Error & { cause?: Error & { code?: string } };
    return { error: `GET /v1/models failed: ${e.message}${e.cause ? ` (${e.cause.code ?? e.cause.message})` : ''}` };
  }
}
