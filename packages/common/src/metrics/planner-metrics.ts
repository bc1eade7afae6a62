// The planner's Prometheus metrics (services/planner). A planner that does not lead exports its
// leader gauge as 0 and keeps the last target it computed as leader. docs/metrics.md lists them.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { WORKER_ROLE_NAMES } from './worker-metrics.ts';

export const PLANNER_ACTIONS = ['keep', 'change'] as const;

export interface PlannerMetrics {
  registry: Registry;
  desiredWorkers: Gauge<'role'>;
  leader: Gauge<string>;
  decisions: Counter<'action'>;
  roleCommands: Counter<'from' | 'to'>;
  errors: Counter<string>;
}

export function createPlannerMetrics(opts: { registry?: Registry; collectDefault?: boolean; plannerId?: string } = {}): PlannerMetrics {
  const registry = opts.registry ?? new Registry();
  if (opts.plannerId) registry.setDefaultLabels({ planner_id: opts.plannerId });
  if (opts.collectDefault ?? true) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  const desiredWorkers = new Gauge({
    name: 'pdserve_planner_desired_workers',
    help: "Workers per role in the planner's target split.",
    labelNames: ['role'] as const,
    registers,
  });
  const leader = new Gauge({ name: 'pdserve_planner_leader', help: '1 while this planner holds the leader lease, else 0.', registers });
  const decisions = new Counter({
    name: 'pdserve_planner_decisions_total',
    help: 'Planner evaluations by outcome (keep|change).',
    labelNames: ['action'] as const,
    registers,
  });
  const roleCommands = new Counter({
    name: 'pdserve_planner_role_commands_total',
    help: 'Role-change commands the planner wrote (from, to); pdserve_role_changes_total counts what the workers carried out.',
    labelNames: ['from', 'to'] as const,
    registers,
  });
  const errors = new Counter({ name: 'pdserve_planner_redis_errors_total', help: 'Planner ticks that failed on Redis (the roles stay as they are).', registers });
  for (const role of WORKER_ROLE_NAMES) desiredWorkers.set({ role }, 0);
  for (const action of PLANNER_ACTIONS) decisions.inc({ action }, 0);
  for (const from of WORKER_ROLE_NAMES) for (const to of WORKER_ROLE_NAMES) if (from !== to) roleCommands.inc({ from, to }, 0);
  leader.set(0);
  return { registry, desiredWorkers, leader, decisions, roleCommands, errors };
}
