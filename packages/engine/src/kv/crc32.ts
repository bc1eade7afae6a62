// CRC-32 (IEEE 802.3, zlib's checksum): the per-block checksum of `pdserve-kv/1`. Computed with
// @node-rs/crc32, which uses the CPU's carry-less multiply (PCLMULQDQ / VPCLMULQDQ): 13.7 GB/s on a
// 0.7 MiB KV block on this machine against 5.2 GB/s for node:zlib's crc32 (BENCHMARKS.md, "KV
// transfer: checksums and the finite scan off the critical path"). Both give the same value, so a
// platform without the prebuilt binary falls back to zlib and still talks to every other worker.
import { createRequire } from 'node:module';
import { crc32 as zlibCrc32 } from 'node:zlib';

type Crc32 = (data: Uint8Array, running?: number) => number;

function loadNative(): Crc32 | undefined {
  try {
    const mod = createRequire(import.meta.url)('@node-rs/crc32') as { crc32(data: Uint8Array, initial?: number | null): number };
    // A loaded binary that disagrees with zlib (a broken build) is not used.
    const probe = new Uint8Array([0x70, 0x64, 0x6b, 0x76]);
    return mod.crc32(probe) === zlibCrc32(probe) ? (data, running) => mod.crc32(data, running ?? 0) : undefined;
  } catch {
    return undefined;
  }
}

const native = loadNative();

/** CRC-32 of `data`; `running` continues a checksum over data that came before (as zlib's). */
export const crc32: Crc32 = native ?? ((data, running) => zlibCrc32(data, running ?? 0));

/** Which implementation computes crc32 here (tests and scripts/bench-kv-checks.ts report it). */
export const crc32Implementation: '@node-rs/crc32' | 'node:zlib' = native ? '@node-rs/crc32' : 'node:zlib';
