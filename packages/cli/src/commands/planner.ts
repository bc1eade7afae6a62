// `pdserve planner`: the cluster's planner on its own (`pdserve up` starts one unless --planner off).
// Several may run: one leads (a Redis lease), the others stand by and take over when it goes.
import type { Command } from 'commander';

import { createLogger, exitWhenParentDies } from '@pdserve/common';
import { startPlanner } from '@pdserve/planner';
import { nonNegativeNumber, positiveInt } from './options.ts';

export function register(program: Command): void {
  program
    .command('planner')
    .description('run the planner: sets the prefill:decode split from measured load (one leads per cluster)')
    .requiredOption('--redis-url <url>', 'Redis with the worker registry (default: $PDSERVE_REDIS_URL; a password belongs there, not in `ps`)', process.env.PDSERVE_REDIS_URL)
    .option('--prefix <prefix>', 'cluster key prefix', 'pdserve')
    .option('--id <id>', 'planner id (default: planner-host-pid-random)')
    .option('--host <host>', 'interface for /metrics and /health', '127.0.0.1')
    .option('--metrics-port <n>', 'Prometheus /metrics and /health port (0 = any free one)', positiveInt, 0)
    .option('--interval-ms <ms>', 'how often the leader evaluates the split', positiveInt, 2000)
    .option('--lease-ms <ms>', 'leader lease, renewed every third of it', positiveInt, 6000)
    .option('--min-dwell-ms <ms>', 'no change sooner than this after the last one', positiveInt, 30_000)
    .option('--hysteresis <x>', 'relative gain a new split must promise before the planner moves', nonNegativeNumber, 0.15)
    .option('--min-requests <n>', 'requests finished in the window before the planner decides anything', positiveInt, 8)
    .option('--slo-ttft-ms <ms>', 'TTFT SLO when the routers publish none', positiveInt, 1000)
    .option('--slo-tpot-ms <ms>', 'TPOT SLO when the routers publish none', positiveInt, 100)
    .option('--prefill-chunk <n>', "the workers' prompt tokens per prefill pass", positiveInt, 256)
    .action(async (o) => {
      const log = createLogger('pdserve-planner');
      if (o.leaseMs < 3 * 100 || o.intervalMs <= 0) throw new Error('--lease-ms must be >= 300 and --interval-ms > 0');
      const p = await startPlanner({
        redisUrl: o.redisUrl, prefix: o.prefix, id: o.id, host: o.host, metricsPort: o.metricsPort, logger: log,
        intervalMs: o.intervalMs, leaseMs: o.leaseMs, prefillChunk: o.prefillChunk,
        slo: { ttftMs: o.sloTtftMs, tpotMs: o.sloTpotMs },
        decision: { minDwellMs: o.minDwellMs, hysteresis: o.hysteresis, minRequests: o.minRequests },
      });
      let stopping = false;
      const shutdown = (why: string) => {
        if (stopping) return;
        stopping = true;
        log.info({ why }, 'shutting down');
        p.stop().then(() => process.exit(0), (err: Error) => { log.error({ err: err.message }, 'shutdown failed'); process.exit(1); });
      };
      process.on('SIGINT', () => shutdown('SIGINT'));
      process.on('SIGTERM', () => shutdown('SIGTERM'));
      exitWhenParentDies({ onParentDeath: () => p.stop(), logger: log });
    });
}
