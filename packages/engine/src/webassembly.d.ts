// @types/node 20 declares no WebAssembly global (TypeScript's DOM library does, and this project
// compiles without it): the part pdserve uses (kv/finite-scan.ts, the worker's KV buffer pools).
declare global {
  namespace WebAssembly {
    interface MemoryDescriptor { initial: number; maximum?: number; shared?: boolean }
    class Memory {
      constructor(descriptor: MemoryDescriptor);
      /** A SharedArrayBuffer for a shared memory. */
      readonly buffer: ArrayBuffer | SharedArrayBuffer;
    }
    class Module {
      constructor(bytes: Uint8Array);
    }
    class Instance {
      constructor(module: Module, imports?: Record<string, Record<string, unknown>>);
      readonly exports: Record<string, unknown>;
    }
  }
}
export {};
