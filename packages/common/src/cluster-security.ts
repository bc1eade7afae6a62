// Authentication of the cluster's internal gRPC traffic (router -> worker, worker -> worker):
// a shared cluster token in every call's metadata, checked in constant time by a server
// interceptor on every worker gRPC handler, and optional TLS (mutual when a CA is given).
//
// One process-wide setting, configured once at start (the CLI does it from --cluster-token,
// --cluster-token-file, $PDSERVE_CLUSTER_TOKEN and --tls-*); grpc.ts's client and server
// constructors read it, so no caller has to thread credentials through. Without configure(), the
// token comes from $PDSERVE_CLUSTER_TOKEN (so a test process and the children it spawns agree)
// and there is no TLS.
//
// Policy (whether a process may run without a token) lives in the CLI (cluster-auth options),
// not here: a library user that configures no token gets an open server, as before.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { Counter, type Registry } from 'prom-client';

export const CLUSTER_TOKEN_HEADER = 'x-pdserve-cluster-token';
export const CLUSTER_TOKEN_ENV = 'PDSERVE_CLUSTER_TOKEN';

export interface ClusterTls {
  cert: Buffer;
  key: Buffer;
  /** When set: servers require client certificates signed by it (mTLS), clients verify servers by it. */
  ca?: Buffer;
}

export interface ClusterSecurity {
  /** Shared cluster token; undefined = calls are not authenticated. */
  token?: string;
  tls?: ClusterTls;
}

let configured: ClusterSecurity | undefined;

/** Sets this process's cluster security (call before creating gRPC clients or servers). */
export function configureClusterSecurity(s: ClusterSecurity): void {
  if (s.token !== undefined && s.token === '') throw new Error('the cluster token must not be empty');
  configured = s;
}

export function clusterSecurity(): ClusterSecurity {
  if (configured) return configured;
  const token = process.env[CLUSTER_TOKEN_ENV];
  return { token: token === undefined || token === '' ? undefined : token };
}

/** Reads TLS files; cert and key go together. */
export function loadClusterTls(o: { tlsCert?: string; tlsKey?: string; tlsCa?: string }): ClusterTls | undefined {
  if (o.tlsCert === undefined && o.tlsKey === undefined && o.tlsCa === undefined) return undefined;
  if (o.tlsCert === undefined || o.tlsKey === undefined) throw new Error('--tls-cert and --tls-key go together');
  return { cert: readFileSync(o.tlsCert), key: readFileSync(o.tlsKey), ca: o.tlsCa !== undefined ? readFileSync(o.tlsCa) : undefined };
}

export function channelCredentials(s: ClusterSecurity = clusterSecurity()): grpc.ChannelCredentials {
  if (!s.tls) return grpc.credentials.createInsecure();
  // With a CA: verify the server by it (and present our cert for mTLS). Without: the system roots.
  return grpc.credentials.createSsl(s.tls.ca ?? null, s.tls.key, s.tls.cert);
}

export function serverCredentials(s: ClusterSecurity = clusterSecurity()): grpc.ServerCredentials {
  if (!s.tls) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(s.tls.ca ?? null, [{ private_key: s.tls.key, cert_chain: s.tls.cert }], s.tls.ca !== undefined);
}

/** Client interceptor: every call carries the token. */
export function tokenClientInterceptor(token: string): grpc.Interceptor {
  return (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set(CLUSTER_TOKEN_HEADER, token);
      next(metadata, listener);
    },
  });
}

/** Channel options that add the token interceptor (merged into a client's options). */
export function clientSecurityOptions(s: ClusterSecurity = clusterSecurity()): { interceptors?: grpc.Interceptor[] } {
  return s.token === undefined ? {} : { interceptors: [tokenClientInterceptor(s.token)] };
}

const digest = (v: string | Buffer) => createHash('sha256').update(v).digest();

/** Constant-time comparison of `presented` with the token (equal-length digests, so no length leak). */
export function tokenMatches(expectedDigest: Buffer, presented: grpc.MetadataValue[]): boolean {
  if (presented.length !== 1) return false;
  return timingSafeEqual(digest(presented[0] as string | Buffer), expectedDigest);
}

/** "/pdserve.v1.Decode/PushKv" -> "decode". */
export function serviceOfPath(path: string): string {
  const m = /^\/[^/]*\.([A-Za-z]+)\//.exec(path);
  return m ? (m[1] as string).toLowerCase() : 'unknown';
}

export interface AuthFailure { service: string; method: string; peer: string; reason: 'missing' | 'wrong' }

/**
 * Server interceptor refusing (UNAUTHENTICATED) every call whose metadata lacks the token; the
 * handler never runs. `onFailure` counts and logs.
 */
export function tokenServerInterceptor(token: string, onFailure: (f: AuthFailure) => void = () => {}): grpc.ServerInterceptor {
  const expected = digest(token);
  return (method, call) => new grpc.ServerInterceptingCall(call, {
    start(next) {
      next({
        onReceiveMetadata(metadata, mdNext) {
          const presented = metadata.get(CLUSTER_TOKEN_HEADER);
          if (tokenMatches(expected, presented)) return mdNext(metadata);
          const reason = presented.length === 0 ? 'missing' : 'wrong';
          onFailure({ service: serviceOfPath(method.path), method: method.path, peer: call.getPeer(), reason });
          call.sendStatus({ code: grpc.status.UNAUTHENTICATED, details: reason === 'missing' ? 'missing cluster token' : 'wrong cluster token', metadata: new grpc.Metadata() });
        },
      });
    },
  });
}

/** Server options that install the interceptor when a token is set. */
export function serverSecurityOptions(onFailure?: (f: AuthFailure) => void, s: ClusterSecurity = clusterSecurity()): { interceptors?: grpc.ServerInterceptor[] } {
  return s.token === undefined ? {} : { interceptors: [tokenServerInterceptor(s.token, onFailure)] };
}

/** `pdserve_auth_failures_total{service}` on a registry (worker: prefill/decode; router: api). */
export function authFailuresCounter(registry: Registry): Counter<'service'> {
  return new Counter({ name: 'pdserve_auth_failures_total', help: 'Calls refused for a missing or wrong credential (cluster token on gRPC, API key on HTTP).', labelNames: ['service'], registers: [registry] });
}
