export { startWorker, type WorkerOptions, type RunningWorker } from './worker.ts';
export { ENGINE_STALL_MS } from './engine-watchdog.ts';
export { ENGINE_NICE } from './engine-protocol.ts';
export { DEFAULT_KV_SHM_MIB } from './kv-data/shm-ring.ts';
