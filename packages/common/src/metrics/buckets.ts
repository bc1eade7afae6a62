// Histogram bucket layouts shared by the router and worker registries. Latencies on a CPU backend
// range from sub-millisecond decode steps to multi-minute long-prompt requests, so latency buckets
// are roughly log spaced (1-2.5-5 per decade) from 1 ms to 120 s.

/** Seconds, 1 ms .. 120 s. */
export const LATENCY_BUCKETS_SECONDS: readonly number[] = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120,
];

/** Token counts per request, 1-2-5 per decade like vLLM's request_{prompt,generation}_tokens. */
export const TOKEN_COUNT_BUCKETS: readonly number[] = [
  1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000,
];

/** Sequences per decode step: 1, 2, 4, ..., 256. */
export const BATCH_SIZE_BUCKETS: readonly number[] = Array.from({ length: 9 }, (_, i) => 2 ** i);

/** Bytes per KV transfer: 64 KiB, 128 KiB, ..., 1 GiB. */
export const KV_TRANSFER_BYTES_BUCKETS: readonly number[] = Array.from(
  { length: 15 },
  (_, i) => 64 * 1024 * 2 ** i,
);
