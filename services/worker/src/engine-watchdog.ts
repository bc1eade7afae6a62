// Judges whether the engine thread is alive. It reports its load every 200 ms and posts a message
// for every step, so silence while it owes answers means it is stuck (a forward pass that never
// returns, a busy loop): the worker must then stop calling itself ready, in heartbeats and on
// /health, so the router stops sending it work, and recover on its own when the thread speaks again.

/** Default bound on the engine thread's silence while work is pending. */
export const ENGINE_STALL_MS = 30_000;

export interface EngineActivity {
  /** Work is pending: requests the engine thread has not answered yet. */
  busy: boolean;
  /** performance.now() of the engine thread's last message. */
  lastProgressAt: number;
}

/** Milliseconds the engine has been stalled (busy and silent past `limitMs`), or undefined when it is fine. */
export function engineStall(a: EngineActivity, now: number, limitMs = ENGINE_STALL_MS): number | undefined {
  const silent = now - a.lastProgressAt;
  return a.busy && silent > limitMs ? silent : undefined;
}
