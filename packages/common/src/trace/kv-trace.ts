// Opt-in timeline of one KV transfer across processes and threads, for diagnosing where its
// latency goes (scripts/bench-kv-transfer.ts --trace). With PDSERVE_KV_TRACE=FILE every stage
// appends one JSON line {t, pid, thread, stage, request_id, ...} to FILE; `t` is epoch milliseconds
// with sub-millisecond precision (performance.timeOrigin + performance.now()), comparable across the
// processes of one machine. Unset (the default), kvTrace costs one property read.
import { appendFileSync } from 'node:fs';
import { isMainThread } from 'node:worker_threads';

const file = process.env.PDSERVE_KV_TRACE;

export const kvTraceEnabled = Boolean(file);

// Lines are buffered and appended every FLUSH_MS (and at exit), not one write per stage: a
// transfer has ~10 stages per block, and a synchronous open/append/close for each added its own
// milliseconds to the very timeline it measured.
const FLUSH_MS = 20;
let pending: string[] = [];
let timer: ReturnType<typeof setTimeout> | undefined;

function flush(): void {
  timer = undefined;
  if (pending.length === 0) return;
  const lines = pending.join('');
  pending = [];
  appendFileSync(file!, lines);
}

if (file) process.on('exit', flush);

export function kvTrace(stage: string, requestId: string, extra?: Record<string, unknown>): void {
  if (!file) return;
  const t = performance.timeOrigin + performance.now();
  pending.push(`${JSON.stringify({ t, pid: process.pid, thread: isMainThread ? 'main' : 'engine', stage, request_id: requestId, ...extra })}\n`);
  if (!timer) {
    timer = setTimeout(flush, FLUSH_MS);
    timer.unref();
  }
}
