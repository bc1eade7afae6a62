// Counters of the fault handling (issue 10): requests migrated by the router after a worker failure,
// and workers restarted by `pdserve up`'s supervision. Each is created on the registry its process
// already serves on /metrics.
import { Counter, Registry } from 'prom-client';

/** pdserve_request_migrations_total{reason}, on the router's registry; `reasons` start at 0. */
export function createMigrationCounter(registry: Registry, reasons: readonly string[]): Counter<'reason'> {
  const c = new Counter({ name: 'pdserve_request_migrations_total', help: 'Requests re-placed on other workers after a worker failure, by what failed.', labelNames: ['reason'], registers: [registry] });
  for (const reason of reasons) c.inc({ reason }, 0);
  return c;
}

/** `pdserve up`'s own registry (served on its --metrics-port) with pdserve_worker_restarts_total{role,reason}. */
export function createSupervisionMetrics(): { registry: Registry; restarts: Counter<'role' | 'reason'> } {
  const registry = new Registry();
  return { registry, restarts: createRestartCounter(registry) };
}

/** pdserve_worker_restarts_total{role,reason}. */
export function createRestartCounter(registry: Registry): Counter<'role' | 'reason'> {
  return new Counter({ name: 'pdserve_worker_restarts_total', help: 'Workers restarted by pdserve up after they died, by role and exit reason (exit_N or the signal).', labelNames: ['role', 'reason'], registers: [registry] });
}
