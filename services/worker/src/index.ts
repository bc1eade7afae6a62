export { startWorker, type WorkerOptions, type RunningWorker } from './worker.ts';
export { ENGINE_STALL_MS } from './engine-watchdog.ts';
