// The NaN/Inf scan of received fp32 KV blocks, in WebAssembly SIMD over the shared memory the blocks
// arrive in. A decode worker scans every fp32 block it receives (a non-finite value would poison its
// sequence's attention); in JavaScript that cost 0.14 ms per 0.7 MiB block (firstNonFiniteIn, 5 GB/s),
// here 0.015 ms (50 GB/s), on the main thread's path from the wire to the engine thread (BENCHMARKS.md,
// "KV transfer: checksums and the finite scan off the critical path"). It only answers whether a range
// holds one; firstNonFiniteIn then finds which (the rare path).
//
// The module (finite-scan.wat) imports the memory it reads, so it can only scan memory made for it:
// scanMemory() makes one, and a KV buffer pool built on it (kv-buffers.ts) gets a scanner.

/** finite-scan.wat, assembled by `node --import tsx scripts/build-wasm.ts` (finite-scan.test.ts checks it). */
// BEGIN GENERATED
export const FINITE_SCAN_WASM = 'AGFzbQEAAAABBwFgAn9/AX8CEgEDZW52Bm1lbW9yeQIDAYCABAMCAQAHEQENYW55X25vbmZpbml0ZQAACs0BAcoBAwF/A3sBf/0MAACAfwAAgH8AAIB/AACAfyEFIAAgAWohAgJAA0AgAEHAAGogAksNASADIAD9AAQAIAX9TiAF/Tf9UCEDIAQgAP0ABBAgBf1OIAX9N/1QIQQgAyAA/QAEICAF/U4gBf03/VAhAyAEIAD9AAQwIAX9TiAF/Tf9UCEEIABBwABqIQAMAAsLAkADQCAAQQRqIAJLDQEgBiAAKAIAQYCAgPwHcUGAgID8B0ZyIQYgAEEEaiEADAALCyAGIAMgBP1Q/VNyCw==';
// END GENERATED

let compiled: WebAssembly.Module | undefined;

/** A shared, fixed-size memory of at least `bytes` bytes that finiteScanner can read. */
export function scanMemory(bytes: number): WebAssembly.Memory {
  const pages = Math.max(1, Math.ceil(bytes / 65536));
  return new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
}

/**
 * Whether bytes [byteOffset, byteOffset + byteLength) of `memory` hold a float32 NaN or infinity
 * (byteLength a multiple of 4; a range outside the memory throws a RangeError).
 */
export type FiniteScanner = (byteOffset: number, byteLength: number) => boolean;

export function finiteScanner(memory: WebAssembly.Memory): FiniteScanner {
  compiled ??= new WebAssembly.Module(Buffer.from(FINITE_SCAN_WASM, 'base64'));
  const scan = new WebAssembly.Instance(compiled, { env: { memory } }).exports.any_nonfinite as (p: number, len: number) => number;
  return (byteOffset, byteLength) => {
    if (byteLength % 4 !== 0) throw new RangeError(`a float32 range of ${byteLength} bytes`);
    if (byteOffset < 0 || byteOffset + byteLength > memory.buffer.byteLength) throw new RangeError(`bytes [${byteOffset}, +${byteLength}) are outside the memory`);
    return scan(byteOffset, byteLength) !== 0;
  };
}
