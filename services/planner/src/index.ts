// @pdserve/planner: one per cluster (elected through Redis), sets the prefill:decode split.
export * from './decision.ts';
export { PerfEstimator } from './perf.ts';
export { LeaderLease } from './election.ts';
export { Planner, aggregateStats, readDecisions, type PlannerOptions, type DecisionRecord } from './planner.ts';
export { startPlanner, type RunningPlanner, type PlannerServiceOptions } from './service.ts';
