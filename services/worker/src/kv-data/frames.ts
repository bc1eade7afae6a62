// The KV data channel's wire format: length-prefixed binary frames on a raw TCP connection from a
// prefill worker to a decode worker (gRPC stays the control plane). One frame is
//   [16-byte header][meta: JSON, metaLen bytes][payload: payloadLen bytes]
// header: magic "PDKV" (u32 BE), version u8, type u8, reserved u16, metaLen u32 BE, payloadLen u32 BE.
// A `chunk` frame carries one KvChunk: meta holds the request id, block index and count, token count,
// layout, wire dtype, the CRC-32 of every block and (on the last) the first token; the payload is the
// blocks' wire bytes, exactly as gRPC's KvChunk.data would carry them. `ack` (decode -> prefill) ends
// one request's transfer, with an error or without; `cancel` (prefill -> decode) abandons one.
// Same-host shared memory (shm-ring.ts): a hello may offer a ring file, `welcome` (decode ->
// prefill) answers the offer, a chunk frame whose meta has `s` = [offset, length] has no payload of
// its own (its bytes are in the ring), and `freed` (decode -> prefill) returns the oldest `n` ring
// regions. A decode worker answers only hellos that offer a ring, so an older prefill worker never
// sees the new frame types, and a prefill worker uses the ring only after a welcome, so an older
// decode worker never sees a chunk by reference.
// Sizes are checked before anything is allocated: a frame over the limits is refused, not buffered.
import type { KvChunkMsg } from '@pdserve/common';
import type { ShmOffer } from './shm-ring.ts';

export const FRAME_MAGIC = 0x50444b56; // "PDKV"
export const FRAME_VERSION = 1;
export const HEADER_BYTES = 16;
/** A frame's meta is a request id, a few numbers and one checksum per block: 64 KiB is plenty. */
export const MAX_META_BYTES = 64 * 1024;

// hello: the first frame of a connection, carrying the cluster token when the cluster has one.
export const FrameType = { chunk: 1, ack: 2, cancel: 3, hello: 4, welcome: 5, freed: 6 } as const;
export type FrameTypeName = keyof typeof FrameType;

export interface ChunkMeta {
  r: string; fb: number; bc: number; tc: number; cs: number[]; d: boolean;
  ft: KvChunkMsg['first_token']; bt: number; bb: number; l: string; w: string; c: number;
  /** The payload's [offset, length] in the connection's shared-memory ring, when it is not inline. */
  s?: [number, number];
}
export interface AckMeta { r: string; e?: string }
export interface CancelMeta { r: string }
export interface HelloMeta { t?: string; shm?: ShmOffer }
export interface WelcomeMeta { shm: boolean; e?: string }
export interface FreedMeta { n: number }

export function encodeHeader(type: FrameTypeName, meta: unknown, payloadBytes: number): Buffer {
  const m = Buffer.from(JSON.stringify(meta));
  const h = Buffer.allocUnsafe(HEADER_BYTES + m.byteLength);
  h.writeUInt32BE(FRAME_MAGIC, 0);
  h.writeUInt8(FRAME_VERSION, 4);
  h.writeUInt8(FrameType[type], 5);
  h.writeUInt16BE(0, 6);
  h.writeUInt32BE(m.byteLength, 8);
  h.writeUInt32BE(payloadBytes, 12);
  m.copy(h, HEADER_BYTES);
  return h;
}

export function chunkMeta(c: KvChunkMsg): ChunkMeta {
  return {
    r: c.request_id, fb: c.first_block, bc: c.block_count, tc: c.token_count, cs: c.checksums, d: c.done,
    ft: c.first_token ?? null, bt: c.block_tokens, bb: c.block_bytes, l: c.layout ?? '', w: c.wire_dtype ?? '', c: c.cached_tokens ?? 0,
  };
}

const u32 = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;

/** The KvChunk a chunk frame stands for, or why its meta is malformed (the connection is then closed). */
export function chunkFromFrame(meta: unknown, payload: Uint8Array): KvChunkMsg | string {
  const m = meta as Partial<ChunkMeta> | null;
  if (!m || typeof m !== 'object') return 'chunk meta is not an object';
  if (typeof m.r !== 'string' || m.r.length === 0 || m.r.length > 512) return 'chunk meta has no valid request id';
  for (const k of ['fb', 'bc', 'tc', 'bt', 'bb', 'c'] as const) if (!u32(m[k])) return `chunk meta field ${k} is not a u32`;
  if (!Array.isArray(m.cs) || !m.cs.every(u32)) return 'chunk meta checksums are not u32s';
  if (typeof m.d !== 'boolean' || typeof m.l !== 'string' || typeof m.w !== 'string') return 'chunk meta done/layout/dtype malformed';
  const ft = m.ft;
  if (ft !== null && ft !== undefined && (typeof ft !== 'object' || typeof ft.id !== 'number' || typeof ft.logprob !== 'number' || !Array.isArray(ft.top_logprobs))) {
    return 'chunk meta first token malformed';
  }
  return {
    request_id: m.r, first_block: m.fb!, block_count: m.bc!, token_count: m.tc!, data: payload, checksums: m.cs,
    done: m.d, first_token: ft ?? null, block_tokens: m.bt!, block_bytes: m.bb!, layout: m.l, wire_dtype: m.w, cached_tokens: m.c!,
  } as KvChunkMsg;
}

/**
 * Where a frame's payload goes, chosen by the reader's owner once the meta is in: `bytes` (exactly
 * the payload's length, 4-byte aligned) is filled as data arrives, `progress(filled)` is told each
 * time, and `release()` is called if the frame is never completed (the reader is disposed).
 */
export interface IncomingPayload {
  bytes: Uint8Array;
  progress?(filled: number): void;
  release?(): void;
}

export interface Frame { type: FrameTypeName; meta: unknown; payload: Uint8Array; incoming?: IncomingPayload }

export interface FrameReaderOptions {
  /** The buffer for a payload of `payloadLen` bytes; undefined: a new buffer of its own. */
  payload?(type: FrameTypeName, meta: unknown, payloadLen: number): IncomingPayload | undefined;
}

/**
 * Incremental frame parser. Bytes are copied once: a payload goes straight into a buffer of its own
 * (its own ArrayBuffer, aligned, so it can be transferred to the engine thread without another copy),
 * or into the one `options.payload` hands out.
 * `push` throws on a malformed header; the caller closes the connection.
 */
export class FrameReader {
  private readonly parts: Buffer[] = [];
  private partsBytes = 0;
  private header?: { type: FrameTypeName; metaLen: number; payloadLen: number; meta?: unknown };
  private payload?: Uint8Array;
  private incoming?: IncomingPayload;
  private filled = 0;

  constructor(private readonly maxPayload: number, private readonly options: FrameReaderOptions = {}) {}

  /** Gives back the buffer of a frame still being read (the connection closed). */
  dispose(): void {
    const inc = this.incoming;
    this.incoming = undefined;
    this.payload = undefined;
    this.header = undefined;
    inc?.release?.();
  }

  /** Feeds bytes; returns the frames now complete. */
  push(data: Buffer): Frame[] {
    const out: Frame[] = [];
    let buf: Buffer | undefined = data;
    while (buf && buf.byteLength > 0) {
      if (this.payload) {
        const n = Math.min(buf.byteLength, this.payload.byteLength - this.filled);
        this.payload.set(buf.subarray(0, n), this.filled);
        this.filled += n;
        buf = buf.subarray(n);
        this.incoming?.progress?.(this.filled);
        if (this.filled === this.payload.byteLength) {
          out.push({ type: this.header!.type, meta: this.header!.meta, payload: this.payload, incoming: this.incoming });
          this.payload = undefined;
          this.incoming = undefined;
          this.header = undefined;
        }
        continue;
      }
      this.parts.push(buf);
      this.partsBytes += buf.byteLength;
      buf = undefined;
      if (!this.header) {
        if (this.partsBytes < HEADER_BYTES) break;
        const h = this.take(HEADER_BYTES);
        if (h.readUInt32BE(0) !== FRAME_MAGIC) throw new Error('not a pdserve KV data frame (bad magic)');
        if (h.readUInt8(4) !== FRAME_VERSION) throw new Error(`KV data frame version ${h.readUInt8(4)} is not supported (this worker reads ${FRAME_VERSION})`);
        const t = h.readUInt8(5);
        const type = (Object.keys(FrameType) as FrameTypeName[]).find((k) => FrameType[k] === t);
        if (!type) throw new Error(`unknown KV data frame type ${t}`);
        const metaLen = h.readUInt32BE(8);
        const payloadLen = h.readUInt32BE(12);
        if (metaLen > MAX_META_BYTES) throw new Error(`KV data frame meta of ${metaLen} bytes exceeds ${MAX_META_BYTES}`);
        if (payloadLen > this.maxPayload) throw new Error(`KV data frame payload of ${payloadLen} bytes exceeds ${this.maxPayload}`);
        if (type !== 'chunk' && payloadLen !== 0) throw new Error(`KV data ${type} frame carries a payload`);
        this.header = { type, metaLen, payloadLen };
      }
      if (this.partsBytes < this.header.metaLen) break;
      const metaText = this.take(this.header.metaLen).toString('utf8');
      try { this.header.meta = JSON.parse(metaText); } catch { throw new Error('KV data frame meta is not JSON'); }
      const rest = this.take(this.partsBytes);
      if (this.header.payloadLen === 0) {
        out.push({ type: this.header.type, meta: this.header.meta, payload: new Uint8Array(0) });
        this.header = undefined;
      } else {
        this.incoming = this.options.payload?.(this.header.type, this.header.meta, this.header.payloadLen);
        if (this.incoming && this.incoming.bytes.byteLength !== this.header.payloadLen) {
          this.incoming.release?.();
          this.incoming = undefined;
          throw new Error('KV data frame payload buffer of the wrong size');
        }
        // Else own ArrayBuffer of exactly this size: transferable, 4-byte aligned for the float views.
        this.payload = this.incoming?.bytes ?? new Uint8Array(new ArrayBuffer(this.header.payloadLen));
        this.filled = 0;
      }
      buf = rest;
    }
    return out;
  }

  private take(n: number): Buffer {
    const all = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.partsBytes);
    this.parts.length = 0;
    const head = all.subarray(0, n);
    const rest = all.subarray(n);
    if (rest.byteLength > 0) this.parts.push(rest);
    this.partsBytes = rest.byteLength;
    return head;
  }
}
