// Calls in flight per worker, so that a worker the registry declares lost (its heartbeat key
// expired: process frozen, host gone) fails them at once instead of leaving them to the gRPC
// keepalive or the stream's idle timeout. The failure is `worker_unavailable`, which the
// generation path already retries elsewhere when nothing was sent to the client yet.
export class InFlightByWorker {
  private readonly calls = new Map<string, Set<(id: string) => void>>();

  /** `onLost` runs once, with the worker's id, if any of `ids` is declared lost before the returned release is called. */
  watch(ids: readonly string[], onLost: (id: string) => void): () => void {
    let fired = false;
    const cb = (id: string) => { if (!fired) { fired = true; onLost(id); } };
    for (const id of new Set(ids)) {
      const set = this.calls.get(id) ?? new Set();
      set.add(cb);
      this.calls.set(id, set);
    }
    return () => {
      for (const id of new Set(ids)) {
        const set = this.calls.get(id);
        set?.delete(cb);
        if (set?.size === 0) this.calls.delete(id);
      }
    };
  }

  /** Workers with calls in flight. */
  ids(): string[] {
    return [...this.calls.keys()];
  }

  /** Fails every call watching `id`; returns how many. */
  lost(id: string): number {
    const set = this.calls.get(id);
    if (!set) return 0;
    this.calls.delete(id);
    for (const cb of set) cb(id);
    return set.size;
  }
}
