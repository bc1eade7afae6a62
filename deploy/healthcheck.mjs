#!/usr/bin/env node
// Container health probe: GET the URL given as the first argument, else $PDSERVE_HEALTH_URL, else
// http://127.0.0.1:8000/health; exit 0 on a 2xx answer within the timeout, 1 otherwise.
const url = process.argv[2] ?? process.env.PDSERVE_HEALTH_URL ?? 'http://127.0.0.1:8000/health';
const timeoutMs = Number(process.env.PDSERVE_HEALTH_TIMEOUT_MS ?? 4000);
try {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  await res.arrayBuffer();
  if (!res.ok) {
    console.error(`${url}: HTTP ${res.status}`);
    process.exit(1);
  }
  process.exit(0);
} catch (err) {
  console.error(`${url}: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}
