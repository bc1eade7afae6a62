export { startWorker, type WorkerOptions, type RunningWorker } from './worker.ts';
