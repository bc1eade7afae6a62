// Checksummed serialization of a range of KV blocks. Each block carries its own CRC-32 so a
// receiver can reject exactly the corrupted block and never feed it to the model.
import { crc32 } from './crc32.ts';

export class KvChecksumError extends Error {
  constructor(readonly block: number, expected: number, actual: number) {
    super(`KV block ${block} failed its checksum (expected ${expected.toString(16)}, got ${actual.toString(16)})`);
  }
}

export interface KvBlockRange {
  firstBlock: number;
  blockCount: number;
  /** Valid tokens of the sequence once this range is in place (<= (firstBlock+blockCount)*blockTokens). */
  tokenCount: number;
  data: Uint8Array;
  checksums: number[];
}

export function checksumBlocks(data: Uint8Array, blockBytes: number): number[] {
  const sums: number[] = [];
  for (let off = 0; off < data.byteLength; off += blockBytes) sums.push(crc32(data.subarray(off, off + blockBytes)));
  return sums;
}

/** Throws KvChecksumError naming the first bad block; also rejects a payload of the wrong size. */
export function verifyBlocks(range: KvBlockRange, blockBytes: number): void {
  if (range.data.byteLength !== range.blockCount * blockBytes || range.checksums.length !== range.blockCount) {
    throw new Error(`KV range of ${range.blockCount} blocks has ${range.data.byteLength} bytes and ${range.checksums.length} checksums (block is ${blockBytes} bytes)`);
  }
  for (let i = 0; i < range.blockCount; i++) {
    const actual = crc32(range.data.subarray(i * blockBytes, (i + 1) * blockBytes));
    if (actual !== range.checksums[i]) throw new KvChecksumError(range.firstBlock + i, range.checksums[i], actual);
  }
}
