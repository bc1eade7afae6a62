// Gives back the resident pages of a model's files that ONNX Runtime memory-mapped, once its session
// is built. ORT maps every external-data initializer of model.onnx.data. Those a kernel repacks lose
// their mapping, but on x86-64 MatMulNBits also copies its scales into the packed buffer and keeps
// the scales' mapping, with every page the packing read still resident: 147-150 MiB per llama-1b q4
// worker that no kernel reads again (BENCHMARKS.md, "The llama-1b shape at q4: memory").
//
// madvise(MADV_DONTNEED) takes those pages out of this process. Only private mappings that nothing
// wrote are advised, so the pages are clean copies of the file: this is what the kernel itself does
// to them under memory pressure, and a later read (the embedding table's rows, the norms) faults the
// same bytes back in from the page cache or the file.
// Node has no madvise; koffi (a prebuilt FFI) calls libc's. Linux only; elsewhere, or where koffi
// cannot load, nothing is released and the session works as before.
import { readFileSync, realpathSync } from 'node:fs';
import { createRequire } from 'node:module';

const MADV_DONTNEED = 4;

type Madvise = (addr: bigint, len: bigint, advice: number) => number;
let madvise: Madvise | null | undefined;

function loadMadvise(): Madvise | null {
  if (process.platform !== 'linux') return null;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as { load(lib: string): { func(decl: string): Madvise } };
    return koffi.load('libc.so.6').func('int madvise(uintptr_t addr, size_t len, int advice)');
  } catch {
    return null;
  }
}

/**
 * Drops this process's resident pages of unwritten private mappings of files under `dir` (the model
 * directory). Does nothing where it cannot (not Linux, no koffi).
 */
export function releaseMappedPages(dir: string): void {
  madvise ??= loadMadvise();
  if (!madvise) return;
  const prefix = `${realpathSync(dir)}/`;
  let current: { start: bigint; len: bigint; copied: number } | null = null;
  const flush = () => {
    // A page of a private mapping that something wrote is an anonymous copy (smaps' Anonymous); the
    // advice would throw the change away, so such a mapping is left alone.
    if (current && current.copied === 0) madvise!(current.start, current.len, MADV_DONTNEED);
    current = null;
  };
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) [0-9a-f]+ \S+ \d+\s+(.*)$/.exec(line);
    if (head) {
      flush();
      // Private mappings only (ORT maps with MAP_PRIVATE, read-write): a shared one's pages are the file's.
      if (head[4].startsWith(prefix) && head[3][3] === 'p') {
        const start = BigInt(`0x${head[1]}`);
        current = { start, len: BigInt(`0x${head[2]}`) - start, copied: -1 };
      }
    } else if (current && line.startsWith('Anonymous:')) {
      current.copied = Number(line.split(/\s+/)[1]) * 1024;
    }
  }
  flush();
}
