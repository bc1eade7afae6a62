// gRPC clients per peer address, shared by the calls to that peer and closed once none uses it
// for a while: prefill workers talk to a changing set of decode workers (scaled, restarted on new
// ports), and a cache that only grows would keep a channel (and its reconnect attempts) to every
// address ever seen.

export interface Closable {
  close(): void;
}

export class ClientPool<C extends Closable> {
  private readonly entries = new Map<string, { client: C; users: number; idle?: NodeJS.Timeout }>();

  constructor(private readonly create: (address: string) => C, private readonly idleMs = 30_000) {}

  /** The client for `address`; every acquire needs one release. */
  acquire(address: string): C {
    let e = this.entries.get(address);
    if (!e) {
      e = { client: this.create(address), users: 0 };
      this.entries.set(address, e);
    }
    clearTimeout(e.idle);
    e.idle = undefined;
    e.users++;
    return e.client;
  }

  release(address: string): void {
    const e = this.entries.get(address);
    if (!e || --e.users > 0) return;
    e.idle = setTimeout(() => {
      if (e.users > 0) return;
      this.entries.delete(address);
      e.client.close();
    }, this.idleMs);
    e.idle.unref();
  }

  /** Addresses with an open client. */
  get size(): number {
    return this.entries.size;
  }
}
