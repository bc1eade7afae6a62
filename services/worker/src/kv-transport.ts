// Which transport carries a sequence's KV blocks to a decode peer (policy; the mechanisms are
// GrpcKvPush in kv-sinks.ts and TcpKvPush in kv-data/push.ts).
//  - 'grpc': always Decode.PushKv.
//  - 'tcp' (default): the peer's TCP data channel when its Health answer advertises one
//    (kv_data_address), else Decode.PushKv (an older worker, or one started with --kv-transport grpc).
// The answer is cached per peer; a data connection that breaks forgets it, so a restarted peer on
// the same gRPC address is asked again.
import { grpc, type KvChunkMsg } from '@pdserve/common';
import { decodeClients, GrpcKvPush, type KvPush } from './kv-sinks.ts';
import { TcpKvPush } from './kv-data/push.ts';

export const KV_TRANSPORTS = ['tcp', 'grpc'] as const;
export type KvTransport = (typeof KV_TRANSPORTS)[number];

const HEALTH_TIMEOUT_MS = 2_000;
const dataAddresses = new Map<string, Promise<string | undefined>>();

/** The peer's advertised data-channel address, or undefined (then gRPC). */
export function peerDataAddress(grpcAddress: string): Promise<string | undefined> {
  let p = dataAddresses.get(grpcAddress);
  if (!p) {
    p = new Promise<string | undefined>((resolve) => {
      const client = decodeClients.acquire(grpcAddress) as grpc.Client & { Health: Function };
      client.Health({}, { deadline: Date.now() + HEALTH_TIMEOUT_MS }, (err: grpc.ServiceError | null, res?: { kv_data_address?: string }) => {
        decodeClients.release(grpcAddress);
        // No answer: do not cache, and let gRPC's own push report what is wrong with the peer.
        if (err) dataAddresses.delete(grpcAddress);
        resolve(err ? undefined : res?.kv_data_address || undefined);
      });
    });
    dataAddresses.set(grpcAddress, p);
  }
  return p;
}

export function forgetPeer(grpcAddress: string): void {
  dataAddresses.delete(grpcAddress);
}

/**
 * A push to `grpcAddress` by the transport `mode` picks. Writes made before the peer's answer is in
 * (normally only the first transfer to a peer waits: the answer is cached) are held and replayed.
 */
export function createKvPush(mode: KvTransport, requestId: string, grpcAddress: string, onEnd: (error?: string) => void): KvPush {
  if (mode === 'grpc') return new GrpcKvPush(requestId, grpcAddress, onEnd);
  return new ChosenKvPush(requestId, grpcAddress, onEnd);
}

class ChosenKvPush implements KvPush {
  private inner?: KvPush;
  private held: Array<[KvChunkMsg[], boolean, (() => void) | undefined]> = [];
  private cancelled = false;
  private heldAt?: number;

  constructor(requestId: string, grpcAddress: string, onEnd: (error?: string) => void) {
    void peerDataAddress(grpcAddress).then((data) => {
      if (this.cancelled) { for (const [, , sent] of this.held.splice(0)) sent?.(); return onEnd('cancelled'); }
      this.inner = data
        ? new TcpKvPush(requestId, data, (error) => { if (error && !/cancelled/.test(error)) forgetPeer(grpcAddress); onEnd(error); })
        : new GrpcKvPush(requestId, grpcAddress, onEnd);
      for (const [chunks, final, sent] of this.held.splice(0)) this.inner.write(chunks, final, sent);
    });
  }

  get bytes(): number { return this.inner?.bytes ?? 0; }
  get rawBytes(): number { return this.inner?.rawBytes ?? 0; }
  get startedAt(): number | undefined { return this.heldAt ?? this.inner?.startedAt; }
  get finishedAt(): number | undefined { return this.inner?.finishedAt; }

  write(chunks: KvChunkMsg[], final: boolean, sent?: () => void): void {
    if (this.inner) return this.inner.write(chunks, final, sent);
    if (this.cancelled) return sent?.();
    this.heldAt ??= performance.now();
    this.held.push([chunks, final, sent]);
  }

  cancel(): void {
    this.cancelled = true;
    for (const [, , sent] of this.held.splice(0)) sent?.();
    this.inner?.cancel();
  }
}
