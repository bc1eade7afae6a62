// Assembles the project's WebAssembly text modules into the TypeScript modules that embed them
// (base64 between the BEGIN/END GENERATED markers), so running pdserve needs no assembler:
//
//   node --import tsx scripts/build-wasm.ts          (rewrites the embedded bytes)
//   node --import tsx scripts/build-wasm.ts --check  (exits 1 if any is out of date)
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import wabtInit from 'wabt';

export const WASM_MODULES = [
  { wat: 'packages/engine/src/kv/finite-scan.wat', ts: 'packages/engine/src/kv/finite-scan.ts', name: 'FINITE_SCAN_WASM' },
];

const root = fileURLToPath(new URL('..', import.meta.url));

/** The base64 of `wat`'s binary module. */
export async function assemble(watPath: string): Promise<string> {
  const wabt = await wabtInit();
  const module = wabt.parseWat(watPath, readFileSync(`${root}/${watPath}`, 'utf8'), { simd: true, threads: true });
  try {
    // (wabt's validate() ignores the features given to parseWat; V8 validates when it compiles.)
    return Buffer.from(module.toBinary({}).buffer).toString('base64');
  } finally {
    module.destroy();
  }
}

/** The TypeScript source with `name`'s embedded bytes set to `base64`. */
export function embed(source: string, name: string, base64: string): string {
  const re = new RegExp(`(// BEGIN GENERATED\\n)export const ${name} = '[^']*';(\\n// END GENERATED)`);
  if (!re.test(source)) throw new Error(`no generated block for ${name}`);
  return source.replace(re, `$1export const ${name} = '${base64}';$2`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const check = process.argv.includes('--check');
  let stale = 0;
  for (const m of WASM_MODULES) {
    const path = `${root}/${m.ts}`;
    const source = readFileSync(path, 'utf8');
    const next = embed(source, m.name, await assemble(m.wat));
    if (next === source) continue;
    stale++;
    if (check) console.error(`${m.ts} does not hold ${m.wat}'s bytes: run node --import tsx scripts/build-wasm.ts`);
    else { writeFileSync(path, next); console.log(`${m.ts}: ${m.name} from ${m.wat}`); }
  }
  if (check && stale > 0) process.exit(1);
}
