// Runs one of scripts/*.ts the way BENCHMARKS.md does (node + tsx, from the repository root) for
// the smoke tests of the benchmark scripts; a non-zero exit fails the test with the script's output.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot } from './shared.ts';

export function runScript(name: string, args: string[]): string {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(repoRoot, 'scripts', name), ...args], { cwd: repoRoot, encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, `${name} failed (${r.signal ?? r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** A finite number above zero (what every smoke test asks of a reported measurement). */
export function assertPositive(x: unknown, what: string): void {
  assert.ok(typeof x === 'number' && Number.isFinite(x) && x > 0, `${what}: ${x}`);
}
