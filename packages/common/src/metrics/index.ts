// Observability: Prometheus registries for the router and workers, the metrics/health HTTP
// server for worker metrics ports, and dashboard-checking helpers.
export * from './buckets.ts';
export * from './router-metrics.ts';
export * from './worker-metrics.ts';
export * from './planner-metrics.ts';
export * from './http.ts';
export * from './dashboard.ts';
export * from './fault-metrics.ts';
export * from './lease-metrics.ts';
