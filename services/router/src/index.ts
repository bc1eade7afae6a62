// @pdserve/router: the OpenAI-compatible HTTP layer and the Backend contract behind it.
export { buildRouterApp, DEFAULT_BODY_LIMIT, PUBLIC_PATHS, type RouterAppOptions } from './app.ts';
export * from './backend.ts';
export type { Endpoint, ErrorInfo, RequestEndInfo, RequestStartInfo, RouterObserver } from './observer.ts';
export { ApiError } from './errors.ts';
export { startRouter, type RouterOptions, type RunningRouter } from './server.ts';
export { ClusterBackend } from './cluster-backend.ts';
export { decidePlacement, PLACEMENT_MODES, PLACEMENT_REASONS, type Placement, type PlacementMode, type PlacementReason } from './placement.ts';
export { judgeAdmission, type Refusal, type RefusalCode } from './admission.ts';
