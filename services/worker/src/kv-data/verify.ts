// The decode side's checks of a KV chunk's payload, made while its bytes arrive on the data channel
// (the main thread otherwise waits on the socket): the CRC-32 of each block, extended piece by piece
// (crc32(data, running), the same checksum as checksumBlocks over the whole block), and, for fp32
// payloads, the scan for NaN/Inf: in WebAssembly SIMD where the payload is in a receive-pool slot
// (kv-buffers.ts), firstNonFiniteIn otherwise and to find the index. EngineHost.pushKv compares the
// results with the chunk's checksums once the frame is complete, so the engine thread only scatters.
import { crc32, firstNonFiniteIn } from '@pdserve/engine';
import type { IncomingPayload } from './frames.ts';

export class VerifyingPayload implements IncomingPayload {
  /** CRC-32 of each block completed so far. */
  readonly crcs: number[] = [];
  /** Index of the first NaN/Inf float seen so far, or -1 (only when checkFinite). */
  firstNonFinite = -1;
  private crc = 0;
  private crcAt = 0;
  private floatsAt = 0;
  private readonly floats?: Float32Array;

  /**
   * @param bytes the payload's buffer (4-byte aligned when checkFinite)
   * @param blockBytes bytes of one block on the wire (the payload is a whole number of them)
   * @param checkFinite scan for NaN/Inf as well (fp32 payloads)
   * @param onRelease gives the buffer back if the frame is never completed
   * @param slot the receive-pool slot `bytes` is a view of, if any
   * @param hasNonFinite a fast test of a part of `bytes` for NaN/Inf (the pool's); without one, every
   *   range is scanned in JavaScript
   */
  constructor(
    readonly bytes: Uint8Array, private readonly blockBytes: number, checkFinite: boolean, private onRelease?: () => void, readonly slot?: number,
    private readonly hasNonFinite?: (part: Uint8Array) => boolean,
  ) {
    if (!(blockBytes > 0) || bytes.byteLength % blockBytes !== 0) throw new Error(`a payload of ${bytes.byteLength} bytes is not a whole number of ${blockBytes}-byte blocks`);
    if (checkFinite) this.floats = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  }

  /** The first `filled` bytes are in: extend the checks over what is new. */
  progress(filled: number): void {
    while (this.crcAt < filled) {
      const blockEnd = (this.crcs.length + 1) * this.blockBytes;
      const upTo = Math.min(filled, blockEnd);
      this.crc = crc32(this.bytes.subarray(this.crcAt, upTo), this.crc);
      this.crcAt = upTo;
      if (upTo === blockEnd) {
        this.crcs.push(this.crc);
        this.crc = 0;
      }
    }
    if (this.floats) {
      const upTo = filled >>> 2;
      if (this.firstNonFinite < 0 && upTo > this.floatsAt && (this.hasNonFinite?.(this.bytes.subarray(this.floatsAt * 4, upTo * 4)) ?? true)) {
        this.firstNonFinite = firstNonFiniteIn(this.floats, this.floatsAt, upTo);
      }
      this.floatsAt = upTo;
    }
  }

  /** Whether firstNonFinite means anything (the payload is scanned as fp32). */
  get checkedFinite(): boolean {
    return this.floats !== undefined;
  }

  /** True once every byte was checked. */
  get complete(): boolean {
    return this.crcAt === this.bytes.byteLength && (!this.floats || this.floatsAt === this.floats.length);
  }

  /** Gives the buffer back (once; later calls do nothing). */
  release(): void {
    const r = this.onRelease;
    this.onRelease = undefined;
    r?.();
  }
}
