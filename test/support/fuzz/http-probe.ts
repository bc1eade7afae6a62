// Sends one generated HTTP request and checks the answer: a valid success (JSON or SSE) or a valid
// OpenAI error. A 5xx other than a capacity/SLO refusal counts as a failure: a request the router
// let through must not make a worker fail, and one it should refuse is a 4xx.
import type { FuzzTarget } from './target.ts';
import { toJsonText, type HttpInput } from './http-inputs.ts';

/** 503s that are the server working as designed (no room, SLO admission, an operator's switch). */
const REFUSALS = new Set(['no_capacity', 'slo_ttft', 'slo_tpot', 'admission_closed', 'admission_throttled']);
const HTTP_DEADLINE_MS = 30_000;

export class Violation extends Error {
  override name = 'Violation';
}

function errorBodyProblem(json: any, where: string): string | undefined {
  const e = json?.error;
  if (!e || typeof e !== 'object') return `${where}: no {error: {...}} object: ${JSON.stringify(json)?.slice(0, 300)}`;
  if (typeof e.message !== 'string' || e.message.length === 0) return `${where}: error.message is not a non-empty string`;
  if (typeof e.type !== 'string') return `${where}: error.type is not a string`;
  if (e.code !== undefined && e.code !== null && typeof e.code !== 'string') return `${where}: error.code is ${typeof e.code}`;
  if (e.param !== undefined && e.param !== null && typeof e.param !== 'string') return `${where}: error.param is ${typeof e.param}`;
  if (/\n\s+at /.test(e.message)) return `${where}: error.message carries a stack trace`;
  return undefined;
}

function statusProblem(status: number, json: any): string | undefined {
  if (status >= 400 && status < 500) return undefined;
  if (status === 503 && REFUSALS.has(json?.error?.code)) return undefined;
  return `status ${status} (${json?.error?.code ?? 'no code'}): ${String(json?.error?.message ?? JSON.stringify(json)).slice(0, 300)}`;
}

function usageProblem(u: any): string | undefined {
  const ok = (n: unknown) => Number.isInteger(n) && (n as number) >= 0;
  if (!u || !ok(u.prompt_tokens) || !ok(u.completion_tokens) || u.total_tokens !== u.prompt_tokens + u.completion_tokens) return `bad usage ${JSON.stringify(u)}`;
  return undefined;
}

function successProblem(endpoint: HttpInput['endpoint'], json: any): string | undefined {
  const c = json?.choices?.[0];
  if (!Array.isArray(json?.choices) || json.choices.length !== 1 || typeof json.id !== 'string') return `200 without one choice: ${JSON.stringify(json)?.slice(0, 300)}`;
  if (!['stop', 'length'].includes(c.finish_reason)) return `finish_reason ${JSON.stringify(c.finish_reason)}`;
  if (endpoint === 'completions') {
    if (json.object !== 'text_completion' || typeof c.text !== 'string') return `not a text_completion: ${JSON.stringify(json).slice(0, 300)}`;
  } else if (json.object !== 'chat.completion' || c.message?.role !== 'assistant' || typeof c.message?.content !== 'string') {
    return `not a chat.completion: ${JSON.stringify(json).slice(0, 300)}`;
  }
  return usageProblem(json.usage);
}

function streamProblem(endpoint: HttpInput['endpoint'], text: string): string | undefined {
  const blocks = text.split('\n\n').filter((b) => b.trim() !== '');
  if (blocks.length === 0 || blocks.at(-1)!.trim() !== 'data: [DONE]') return `stream does not end with [DONE]: …${JSON.stringify(text.slice(-200))}`;
  let finished = false;
  for (const block of blocks.slice(0, -1)) {
    if (!block.startsWith('data: ')) return `not an SSE data line: ${JSON.stringify(block.slice(0, 200))}`;
    let ev: any;
    try { ev = JSON.parse(block.slice(6)); } catch { return `SSE payload is not JSON: ${JSON.stringify(block.slice(0, 200))}`; }
    if (ev.error !== undefined) {
      const p = errorBodyProblem(ev, 'error event');
      if (p) return p;
      // Mid-stream errors have no status; the code says whether it was a refusal or a failure.
      if (!REFUSALS.has(ev.error.code) && ev.error.type !== 'invalid_request_error') return `error event mid-stream: ${ev.error.code}: ${String(ev.error.message).slice(0, 300)}`;
      finished = true;
      continue;
    }
    const object = endpoint === 'completions' ? 'text_completion' : 'chat.completion.chunk';
    if (ev.object !== object || !Array.isArray(ev.choices)) return `bad chunk ${JSON.stringify(ev).slice(0, 300)}`;
    if (ev.choices.length === 0) {
      const p = usageProblem(ev.usage);
      if (p) return `usage chunk: ${p}`;
    }
    if (ev.choices[0]?.finish_reason != null) finished = true;
  }
  if (!finished) return 'stream ended without a finish_reason or an error event';
  return undefined;
}

/** Sends the request; throws a Violation describing what was wrong with the answer. */
export async function httpProbe(t: FuzzTarget, input: HttpInput): Promise<void> {
  const headers: Record<string, string> = {};
  if (input.contentType !== null) headers['content-type'] = input.contentType;
  if (input.requestId !== null) headers['x-request-id'] = input.requestId;
  const controller = new AbortController();
  let gone = false;
  const hang = setTimeout(() => controller.abort(new Error(`no complete answer within ${HTTP_DEADLINE_MS} ms`)), HTTP_DEADLINE_MS);
  const leave = input.abortAfterMs === null ? undefined : setTimeout(() => { gone = true; controller.abort(new Error('client gone')); }, input.abortAfterMs);
  const url = `${t.url}/v1/${input.endpoint === 'completions' ? 'completions' : 'chat/completions'}`;
  try {
    let res: Response;
    let text: string;
    try {
      res = await fetch(url, { method: 'POST', headers, body: toJsonText(input.body), signal: controller.signal });
      text = await res.text();
    } catch (err) {
      if (gone) return; // the client left on purpose: only the cluster invariants matter
      throw new Violation(`HTTP request failed: ${(err as Error).message}${(err as Error).cause ? ` (${String((err as Error).cause)})` : ''}`);
    }
    const type = res.headers.get('content-type')?.split(';')[0];
    if (res.status === 200 && type === 'text/event-stream') {
      const p = streamProblem(input.endpoint, text);
      if (p) throw new Violation(p);
      return;
    }
    let json: unknown;
    try { json = JSON.parse(text); } catch { throw new Violation(`status ${res.status}, body is not JSON: ${JSON.stringify(text.slice(0, 200))}`); }
    const p = res.status === 200 ? successProblem(input.endpoint, json) : (statusProblem(res.status, json) ?? errorBodyProblem(json, `status ${res.status}`));
    if (p) throw new Violation(p);
  } finally {
    clearTimeout(hang);
    clearTimeout(leave);
  }
}
