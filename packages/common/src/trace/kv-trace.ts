// Opt-in timeline of one KV transfer across processes and threads, for diagnosing where its
// latency goes (scripts/bench-kv-transfer.ts --trace). With PDSERVE_KV_TRACE=FILE every stage
// appends one JSON line {t, pid, thread, stage, request_id, ...} to FILE; `t` is epoch milliseconds
// with sub-millisecond precision (performance.timeOrigin + performance.now()), comparable across the
// processes of one machine. Unset (the default), kvTrace costs one property read.
import { appendFileSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';

const file = process.env.PDSERVE_KV_TRACE;

export const kvTraceEnabled = Boolean(file);

export function kvTrace(stage: string, requestId: string, extra?: Record<string, unknown>): void {
  if (!file) return;
  const t = performance.timeOrigin + performance.now();
  appendFileSync(file, `${JSON.stringify({ t, pid: process.pid, thread: isMainThread ? 'main' : 'engine', stage, request_id: requestId, ...extra })}\n`);
}
