// The planner as a process (`pdserve planner`, or a child of `pdserve up`): the Planner plus its
// Prometheus /metrics and /health (which says whether this one leads).
import { createPlannerMetrics, startMetricsServer } from '@pdserve/common';
import type { Logger } from 'pino';
import { Planner, type PlannerOptions } from './planner.ts';

export interface PlannerServiceOptions extends Omit<PlannerOptions, 'metrics' | 'logger'> {
  host: string;
  metricsPort: number;
  logger: Logger;
}

export interface RunningPlanner {
  planner: Planner;
  metricsUrl: string;
  stop(): Promise<void>;
}

export async function startPlanner(o: PlannerServiceOptions): Promise<RunningPlanner> {
  const metrics = createPlannerMetrics();
  const planner = new Planner({ ...o, metrics, logger: o.logger });
  const server = await startMetricsServer({
    host: o.host, port: o.metricsPort, registry: metrics.registry,
    health: () => ({ ok: true, planner_id: planner.id, leader: planner.isLeader, last_reason: planner.lastDecision?.reason }),
  });
  await planner.start();
  const metricsUrl = `http://${o.host === '0.0.0.0' ? '127.0.0.1' : o.host}:${server.port}/metrics`;
  o.logger.info({ planner: planner.id, metrics: metricsUrl }, 'planner started');
  return {
    planner, metricsUrl,
    stop: async () => {
      await planner.stop();
      await server.close();
    },
  };
}
