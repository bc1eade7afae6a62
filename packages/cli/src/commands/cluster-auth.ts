// The cluster-auth flags of `pdserve worker` and `pdserve router` and the policy behind them:
// internal gRPC needs a cluster token unless the operator opts out with --insecure-cluster
// (an open gRPC port lets anyone on the network read prompts' KV and push blocks). Without a
// token and without the opt-out the process exits 2 at start, before it binds or registers, as a
// production stack would: a silent fallback to an open port is the surprise an operator fears.
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { CLUSTER_TOKEN_ENV, configureClusterSecurity, loadClusterTls, type ClusterSecurity } from '@pdserve/common';

export const CLUSTER_TOKEN_FILE_ENV = 'PDSERVE_CLUSTER_TOKEN_FILE';
export const INSECURE_CLUSTER_ENV = 'PDSERVE_INSECURE_CLUSTER';

export interface ClusterAuthFlags {
  clusterToken?: string;
  clusterTokenFile?: string;
  insecureCluster?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
}

export function addClusterAuthOptions(cmd: Command): Command {
  return cmd
    .option('--cluster-token <token>', `shared token of internal gRPC calls (visible in \`ps\`: prefer $${CLUSTER_TOKEN_ENV} or --cluster-token-file)`)
    .option('--cluster-token-file <path>', `read the cluster token from this file (first line; e.g. a Docker secret; also $${CLUSTER_TOKEN_FILE_ENV})`)
    .option('--insecure-cluster', `run internal gRPC without a cluster token (anyone who reaches the port can call it; also $${INSECURE_CLUSTER_ENV}=1)`)
    .option('--tls-cert <path>', 'PEM certificate for internal gRPC (server and client side)')
    .option('--tls-key <path>', 'PEM private key of --tls-cert')
    .option('--tls-ca <path>', 'PEM CA: verify peers by it, and require client certificates (mTLS)');
}

function firstLine(path: string): string {
  const v = (readFileSync(path, 'utf8').split(/\r?\n/)[0] ?? '').trim();
  if (v === '') throw new Error(`cluster token file ${path} is empty`);
  return v;
}

/** The token: --cluster-token, else --cluster-token-file, else $PDSERVE_CLUSTER_TOKEN, else $PDSERVE_CLUSTER_TOKEN_FILE. */
export function resolveClusterToken(o: ClusterAuthFlags, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (o.clusterToken !== undefined && o.clusterTokenFile !== undefined) throw new Error('give --cluster-token or --cluster-token-file, not both');
  if (o.clusterToken !== undefined) {
    if (o.clusterToken === '') throw new Error('--cluster-token is empty');
    return o.clusterToken;
  }
  if (o.clusterTokenFile !== undefined) return firstLine(o.clusterTokenFile);
  if (env[CLUSTER_TOKEN_ENV]) return env[CLUSTER_TOKEN_ENV];
  if (env[CLUSTER_TOKEN_FILE_ENV]) return firstLine(env[CLUSTER_TOKEN_FILE_ENV]);
  return undefined;
}

export class ClusterAuthError extends Error {}

/** Resolves flags to this process's security (throws ClusterAuthError when policy refuses). */
export function clusterSecurityFrom(o: ClusterAuthFlags, env: NodeJS.ProcessEnv = process.env): ClusterSecurity & { insecure: boolean } {
  const token = resolveClusterToken(o, env);
  const insecure = o.insecureCluster === true || env[INSECURE_CLUSTER_ENV] === '1';
  if (token === undefined && !insecure) {
    throw new ClusterAuthError(`no cluster token: give --cluster-token-file, $${CLUSTER_TOKEN_ENV} or --cluster-token (the same on every router and worker), or --insecure-cluster to run internal gRPC unauthenticated`);
  }
  return { token, tls: loadClusterTls(o), insecure: token === undefined };
}

/** Applies the flags to this process, or exits 2 with the reason on stderr. */
export function applyClusterAuth(o: ClusterAuthFlags, log: { warn(obj: object, msg: string): void }): void {
  try {
    const s = clusterSecurityFrom(o);
    configureClusterSecurity(s);
    if (s.insecure) log.warn({}, 'internal gRPC runs WITHOUT a cluster token (--insecure-cluster)');
  } catch (err) {
    process.stderr.write(`pdserve: ${(err as Error).message}\n`);
    process.exit(2);
  }
}
