// The checks a decode worker makes on every received KV chunk, whichever transport brought it
// (gRPC Decode.PushKv or the TCP data channel, kv-data/server.ts), all on the main thread before a
// single byte reaches the engine thread: the layout, wire dtype and block geometry here; then
// EngineHost.pushKv checks order and range against the request's transfer so far, each block's
// size and CRC-32 (a corrupted block is refused by number) and, for fp32, NaN/Inf (firstNonFinite;
// other dtypes are checked for NaN/Inf by the engine thread once expanded). The TCP data channel
// computes the CRCs and the NaN scan while the bytes arrive (kv-data/server.ts), so the engine
// thread only scatters. A refused chunk fails its request only.
import type { KvChunkMsg } from '@pdserve/common';
import { isKvWireDtype, KV_LAYOUT, KV_WIRE_DTYPES } from '@pdserve/engine';
import type { EngineHost, KvPushOutcome, ReceivedPayload } from './engine-host.ts';

/** Why this worker cannot take a chunk's layout or wire dtype; undefined when it can. */
export function unsupportedKvEncoding(chunk: KvChunkMsg): string | undefined {
  if (chunk.layout && chunk.layout !== KV_LAYOUT) return `KV layout ${JSON.stringify(chunk.layout)} is not supported here (this worker reads ${KV_LAYOUT})`;
  if (chunk.wire_dtype && !isKvWireDtype(chunk.wire_dtype)) return `KV wire dtype ${JSON.stringify(chunk.wire_dtype)} is not supported here (this worker reads ${KV_WIRE_DTYPES.join(', ')})`;
  return undefined;
}

export type ReceiveOutcome =
  | KvPushOutcome
  | { ok: false; kind: 'unsupported' | 'layout'; message: string };

/**
 * Checks one chunk and hands it to the engine. On refusal the request is failed (its Generate
 * stream ends with the reason) and the caller ends that request's transfer with the message.
 */
export function receiveKvChunk(host: EngineHost, chunk: KvChunkMsg, onFailure?: (r: 'rejected') => void, received: ReceivedPayload = {}): ReceiveOutcome {
  const unsupported = unsupportedKvEncoding(chunk);
  const { blockBytes, blockTokens } = host.info;
  if ((unsupported || chunk.block_bytes !== blockBytes || chunk.block_tokens !== blockTokens) && received.slot !== undefined) host.receivePool.give(received.slot);
  if (unsupported) {
    onFailure?.('rejected');
    host.cancelDecode(chunk.request_id);
    return { ok: false, kind: 'unsupported', message: unsupported };
  }
  if (chunk.block_bytes !== blockBytes || chunk.block_tokens !== blockTokens) {
    onFailure?.('rejected');
    host.cancelDecode(chunk.request_id);
    return { ok: false, kind: 'layout', message: `KV layout mismatch: sender blocks are ${chunk.block_tokens} tokens/${chunk.block_bytes} bytes, here ${blockTokens}/${blockBytes}` };
  }
  const outcome = host.pushKv(chunk.request_id, chunk, received);
  // A checksum failure is counted as such (the Generate stream's failure handler), not twice.
  if (!outcome.ok && outcome.kind !== 'not_found' && outcome.kind !== 'checksum') onFailure?.('rejected');
  return outcome;
}
