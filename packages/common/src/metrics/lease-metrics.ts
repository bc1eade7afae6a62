// `pdserve_kv_leases_expired_total{reason}`: KV room a worker held for a request and freed because
// its deadline passed (services/worker/src/services.ts arms them). Reasons:
//   kv_never_arrived   a reservation whose prefill never sent a block (prefill worker gone or stuck)
//   kv_push_stalled    a push that started and then went silent half-way
// (A prefill worker whose decode worker vanished fails its push within PEER_CONNECT_TIMEOUT_MS or
// the gRPC keepalive, ~15 s, and frees its room through the ordinary error path: peer-connect.ts.)
import { Counter, type Registry } from 'prom-client';

export const KV_LEASE_EXPIRY_REASONS = ['kv_never_arrived', 'kv_push_stalled'] as const;
export type KvLeaseExpiryReason = (typeof KV_LEASE_EXPIRY_REASONS)[number];

export function kvLeasesExpiredCounter(registry: Registry): Counter<'reason'> {
  const c = new Counter({ name: 'pdserve_kv_leases_expired_total', help: 'KV reservations and transfers freed because their deadline passed, by reason.', labelNames: ['reason'], registers: [registry] });
  for (const reason of KV_LEASE_EXPIRY_REASONS) c.inc({ reason }, 0);
  return c;
}
