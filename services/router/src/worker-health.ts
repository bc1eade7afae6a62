// What this router has itself seen of each worker, on top of the registry: a worker whose calls
// just failed with UNAVAILABLE is set aside locally, because during a Redis outage the registry's
// snapshot keeps calling it healthy and a fast failure leaves its load looking the lowest of all.
//
// Policy, in one place:
//   - a call failing with UNAVAILABLE (refused connection, worker draining) marks the worker suspect;
//   - a suspect worker gets no new requests until it recovers, which it does when either
//       * the registry shows a heartbeat newer than the one seen when it failed (Redis is back and
//         the worker is alive), or
//       * a probe (the worker's gRPC Health call, answering ready) succeeds; probes run at most once
//         per backoff interval, which doubles per failed probe from 1 s up to 30 s;
//   - workers that leave the registry are forgotten.
import type { WorkerInfo } from '@pdserve/common';

export const PROBE_BACKOFF_MIN_MS = 1000;
export const PROBE_BACKOFF_MAX_MS = 30_000;

interface Suspicion {
  /** The worker's last_heartbeat_ms when it failed: a newer one means it came back. */
  heartbeatAtFailure: number;
  /** performance.now() after which the next probe may run. */
  probeAt: number;
  backoffMs: number;
  probing: boolean;
}

export class WorkerHealth {
  private readonly suspects = new Map<string, Suspicion>();

  constructor(
    /** Resolves true when the worker answers its Health call as ready (with a deadline). */
    private readonly probe: (w: WorkerInfo) => Promise<boolean>,
    private readonly log: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void },
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** A call to `w` failed with UNAVAILABLE. */
  markFailed(w: WorkerInfo, why: string): void {
    const prev = this.suspects.get(w.id);
    if (prev) return;
    this.suspects.set(w.id, { heartbeatAtFailure: w.last_heartbeat_ms, probeAt: this.now() + PROBE_BACKOFF_MIN_MS, backoffMs: PROBE_BACKOFF_MIN_MS, probing: false });
    this.log.warn({ worker: w.id, address: w.grpc_address, err: why }, 'worker unavailable; not routing to it until it recovers');
  }

  /**
   * True when `w` may get new requests. `registryFresh`: the registry's snapshot is current (Redis
   * answers), so a newer heartbeat in it is real news.
   */
  usable(w: WorkerInfo, registryFresh: boolean): boolean {
    const s = this.suspects.get(w.id);
    if (!s) return true;
    if (registryFresh && w.last_heartbeat_ms > s.heartbeatAtFailure) {
      this.recovered(w, 'heartbeat');
      return true;
    }
    if (!s.probing && this.now() >= s.probeAt) {
      s.probing = true;
      void this.probe(w).catch(() => false).then((ok) => {
        if (this.suspects.get(w.id) !== s) return;
        s.probing = false;
        if (ok) this.recovered(w, 'probe');
        else {
          s.backoffMs = Math.min(PROBE_BACKOFF_MAX_MS, s.backoffMs * 2);
          s.probeAt = this.now() + s.backoffMs;
        }
      });
    }
    return false;
  }

  suspected(id: string): boolean {
    return this.suspects.has(id);
  }

  /** Drops what is known about workers no longer listed. */
  retain(ids: ReadonlySet<string>): void {
    for (const id of this.suspects.keys()) if (!ids.has(id)) this.suspects.delete(id);
  }

  get size(): number {
    return this.suspects.size;
  }

  private recovered(w: WorkerInfo, how: string): void {
    this.suspects.delete(w.id);
    this.log.info({ worker: w.id, how }, 'worker recovered; routing to it again');
  }
}
