// A bound on connecting to a peer. grpc-js has no connect timeout: a call to an address that
// swallows SYNs (a host gone from the network) or accepts TCP but never speaks HTTP/2 (a frozen
// process) waits in CONNECTING until the call's own deadline, which for a KV push or a decode
// stream is long. This fails such a call fast instead.
import type * as grpc from '@grpc/grpc-js';

export const PEER_CONNECT_TIMEOUT_MS = 5_000;

/**
 * Calls `onTimeout` unless `client`'s channel is READY within `ms`. Returns a function that
 * disarms it (call it when the call ends).
 */
export function boundConnect(client: grpc.Client, onTimeout: () => void, ms = PEER_CONNECT_TIMEOUT_MS): () => void {
  let armed = true;
  client.waitForReady(Date.now() + ms, (err) => {
    if (err && armed) onTimeout();
  });
  return () => { armed = false; };
}
