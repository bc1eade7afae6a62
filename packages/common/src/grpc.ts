// gRPC plumbing for proto/pdserve/v1/pdserve.proto: the package definition, channel and server
// options (message limits set on purpose), and the TypeScript shapes of the messages.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { channelCredentials, clientSecurityOptions, serverCredentials, serverSecurityOptions, type AuthFailure } from './cluster-security.ts';

export { grpc };

const PROTO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'proto');
export const PROTO_FILE = join(PROTO_ROOT, 'pdserve', 'v1', 'pdserve.proto');

/**
 * KV chunks are cut to at most KV_MESSAGE_BYTES of (wire) blocks each, at least one block; the
 * limits leave room above that. grpc-js's 4 MiB default would reject a large chunk, and an unlimited
 * one would let a peer make a worker buffer arbitrary amounts. 1 MiB rather than 4: a receiver gets
 * nothing of a message until all of it is in, so smaller messages let the decode worker verify and
 * scatter one while the next is on the wire (BENCHMARKS.md, KV transfer).
 */
export const KV_MESSAGE_BYTES = 1024 * 1024;
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** HTTP/2 receive window (per stream and per connection) for both ends of every pdserve channel. */
export const FLOW_CONTROL_WINDOW = 32 * 1024 * 1024;

export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  // Large KV pushes need big HTTP/2 windows to keep the pipe full on loopback.
  'grpc-node.flow_control_window': FLOW_CONTROL_WINDOW,
};

let cached: grpc.GrpcObject | undefined;
function pdserveV1(): grpc.GrpcObject {
  if (!cached) {
    const def = protoLoader.loadSync(PROTO_FILE, { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
    cached = (grpc.loadPackageDefinition(def).pdserve as grpc.GrpcObject).v1 as grpc.GrpcObject;
  }
  return cached;
}

type ServiceCtor = grpc.ServiceClientConstructor;

export function prefillService(): grpc.ServiceDefinition {
  return (pdserveV1().Prefill as ServiceCtor).service;
}

export function decodeService(): grpc.ServiceDefinition {
  return (pdserveV1().Decode as ServiceCtor).service;
}

// Clients and servers take this process's cluster security (cluster-security.ts): the token
// interceptor and, when configured, TLS credentials.
export function prefillClient(address: string): grpc.Client {
  return new (pdserveV1().Prefill as ServiceCtor)(address, channelCredentials(), { ...CHANNEL_OPTIONS, ...clientSecurityOptions() });
}

/** `options` override CHANNEL_OPTIONS (tests use a small 'grpc-node.flow_control_window'). */
export function decodeClient(address: string, options: grpc.ChannelOptions = {}): grpc.Client {
  return new (pdserveV1().Decode as ServiceCtor)(address, channelCredentials(), { ...CHANNEL_OPTIONS, ...clientSecurityOptions(), ...options });
}

// grpc-js applies 'grpc-node.flow_control_window' to the client end only; its server keeps
// HTTP/2's 64 KiB receive window, which held KV pushes (client -> server) to ~40 MiB/s on loopback:
// every 64 KiB waited for a WINDOW_UPDATE from a receiver busy with its own work. grpc-js exposes no
// server option for it, so these two touch its internals, and fall back to the default if they move.
interface GrpcServerInternals {
  commonServerOptions?: { settings?: Record<string, number> };
  http2Servers?: Map<{ on(event: 'session', cb: (s: { setLocalWindowSize?(n: number): void }) => void): void }, unknown>;
}

/** `onAuthFailure`: called for each call refused for a missing or wrong cluster token. */
export function createGrpcServer(security: { onAuthFailure?: (f: AuthFailure) => void } = {}): grpc.Server {
  const server = new grpc.Server({ ...CHANNEL_OPTIONS, ...serverSecurityOptions(security.onAuthFailure) });
  const internals = server as unknown as GrpcServerInternals;
  if (internals.commonServerOptions) {
    internals.commonServerOptions.settings = { ...internals.commonServerOptions.settings, initialWindowSize: FLOW_CONTROL_WINDOW };
  }
  return server;
}

export function bindServer(server: grpc.Server, address: string): Promise<number> {
  return new Promise((resolveBind, reject) =>
    server.bindAsync(address, serverCredentials(), (err, port) => {
      if (err) return reject(err);
      for (const http2Server of (server as unknown as GrpcServerInternals).http2Servers?.keys() ?? []) {
        http2Server.on('session', (session) => session.setLocalWindowSize?.(FLOW_CONTROL_WINDOW));
      }
      resolveBind(port);
    }),
  );
}

/** Metadata carrying the router's request id, so every worker log line about a request names it. */
export function requestMetadata(requestId: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set('x-request-id', requestId);
  return md;
}

// ---- message shapes (proto3 with defaults: every field present) ----

export interface SamplingParamsMsg {
  temperature: number;
  top_p: number;
  top_k: number;
  seed: number;
  max_tokens: number;
  min_tokens: number;
  stop_token_ids: number[];
  ignore_eos: boolean;
  logprobs: number;
  /** Random draws to skip before the first sample (a migrated request; 0 or absent otherwise). */
  sample_offset?: number;
}

export interface TokenMsg {
  id: number;
  logprob: number;
  top_logprobs: Array<{ id: number; logprob: number }>;
}

export interface PrefillRequestMsg {
  request_id: string;
  prompt_ids: number[];
  sampling: SamplingParamsMsg;
  decode_address: string;
}

export interface PrefillResponseMsg {
  first_token: TokenMsg;
  queue_ms: number;
  prefill_ms: number;
  transfer_tail_ms: number;
  kv_bytes: number;
  /** Prompt tokens the prefill worker's prefix cache held (not computed); 0 from older workers. */
  cached_tokens: number;
}

export interface GenerateRequestMsg {
  request_id: string;
  prompt_len: number;
  sampling: SamplingParamsMsg;
  kv_timeout_ms: number;
  /** The prompt's ids (prompt_len of them) so the decode worker can cache the transferred KV; empty: not sent. */
  prompt_ids?: number[];
}

export interface GenerateEventMsg {
  event?: 'reserved' | 'tokens' | 'finished';
  reserved?: boolean;
  /** cached_tokens: on the first token's message only (0 from older workers). */
  tokens?: { tokens: TokenMsg[]; admit_ms: number; cached_tokens?: number };
  finished?: { reason: string; stop_token_id: number; has_stop_token: boolean };
}

export interface KvChunkMsg {
  request_id: string;
  first_block: number;
  block_count: number;
  token_count: number;
  data: Uint8Array;
  checksums: number[];
  done: boolean;
  first_token?: TokenMsg | null;
  block_tokens: number;
  block_bytes: number;
  /** "pdserve-kv/1"; "" (or unset, when sending) from older senders. */
  layout?: string;
  /** "fp32" | "fp16" | "bf16" | "int8"; "" (or unset) means fp32. */
  wire_dtype?: string;
  /** On the done chunk: prompt tokens the sender's prefix cache held. */
  cached_tokens?: number;
}
