// Reusable KV message buffers shared by a worker's main thread and its engine thread, so a KV block
// is neither allocated afresh (a new 0.7 MiB buffer cost more than the gather into it: page faults
// and zeroing, measured in BENCHMARKS.md, "KV transfer at wire speed") nor copied between the threads.
// One shared WebAssembly memory holds `count` slots of `slotBytes` (so the wasm NaN/Inf scan reads a
// slot in place); a shared Int32Array holds each slot's state (0 free, 1 taken). Exactly one side
// takes a slot and exactly one side gives it back:
//  - prefill: the engine thread takes a slot, gathers and checksums blocks into it and posts a view;
//    the main thread gives it back once the socket has the bytes (or the push is dropped).
//  - decode: the main thread takes a slot for an arriving frame's payload, verifies it as it
//    arrives, posts a view; the engine thread gives it back after scattering it (or dropping it).
// A slot never given back only shrinks the pool: with no free slot the taker allocates a plain
// buffer, as before. Giving one back early would let it be overwritten while still read, so only
// its current owner may.

import { finiteScanner, scanMemory, type FiniteScanner } from '@pdserve/engine';

export interface SharedSlotsHandle {
  /** The slots' bytes: a shared WebAssembly memory, so the wasm NaN/Inf scan reads them in place. */
  memory: WebAssembly.Memory;
  state: SharedArrayBuffer;
  slotBytes: number;
}

export class SharedSlots {
  readonly count: number;
  readonly slotBytes: number;
  private readonly data: SharedArrayBuffer;
  private readonly state: Int32Array;
  private scanner?: FiniteScanner;

  constructor(readonly handle: SharedSlotsHandle) {
    this.slotBytes = handle.slotBytes;
    this.data = handle.memory.buffer as unknown as SharedArrayBuffer;
    this.state = new Int32Array(handle.state);
    // One state per slot; the memory is whole 64 KiB pages, so it may hold more bytes than slots.
    this.count = Math.min(this.state.length, Math.floor(this.data.byteLength / handle.slotBytes));
  }

  static create(slotBytes: number, count: number): SharedSlots {
    // 4 KiB-aligned slots: float views need 4-byte alignment, and pages are not shared by two slots.
    const bytes = Math.ceil(slotBytes / 4096) * 4096;
    return new SharedSlots({ memory: scanMemory(bytes * count), state: new SharedArrayBuffer(4 * count), slotBytes: bytes });
  }

  /**
   * Whether a view of a slot holds a float32 NaN or infinity (WebAssembly SIMD, in place). Only for
   * views this pool's take() handed out.
   */
  hasNonFinite(view: Uint8Array): boolean {
    if (view.buffer !== this.data) throw new Error('hasNonFinite: the view is not of this pool');
    this.scanner ??= finiteScanner(this.handle.memory);
    return this.scanner(view.byteOffset, view.byteLength);
  }

  /**
   * The lowest free slot's index and a view of its first `bytes` bytes, or undefined (none free, or
   * too small). Lowest first, not round robin: the few slots a transfer needs at a time stay in the
   * cache and their pages stay mapped, while the rest of the pool is never touched (first touches of
   * fresh pages cost more than the gather into them: BENCHMARKS.md, issue 9).
   */
  take(bytes: number): { slot: number; view: Uint8Array } | undefined {
    if (bytes > this.slotBytes || bytes === 0) return undefined;
    for (let i = 0; i < this.count; i++) {
      if (Atomics.compareExchange(this.state, i, 0, 1) === 0) return { slot: i, view: new Uint8Array(this.data, i * this.slotBytes, bytes) };
    }
    return undefined;
  }

  /** Gives slot `i` back; a second give-back of the same slot is a bug and throws. */
  give(i: number): void {
    if (!Number.isInteger(i) || i < 0 || i >= this.count) throw new Error(`no KV buffer slot ${i}`);
    if (Atomics.compareExchange(this.state, i, 1, 0) !== 1) throw new Error(`KV buffer slot ${i} given back twice`);
  }

  /** Slots free now (tests, and a leak shows here). */
  free(): number {
    let n = 0;
    for (let i = 0; i < this.count; i++) if (Atomics.load(this.state, i) === 0) n++;
    return n;
  }
}

/** Slots of each pool: 24 messages of up to 1 MiB (a 512-token prompt of SmolLM2-135M is 32 blocks). */
export const KV_POOL_SLOTS = 24;
