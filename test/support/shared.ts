// Locates the read-only model folder `../shared` next to the repository. A test that needs it and
// does not find it skips with instructions, except under CI (CI=true), which always has it, where a
// missing folder is a failure.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';

// Every cluster or worker a test starts (children inherit the environment) and the test's own gRPC
// clients share one cluster token, so internal calls authenticate as in production.
process.env.PDSERVE_CLUSTER_TOKEN ||= `test-${randomBytes(16).toString('hex')}`;

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const sharedRoot = process.env.PDSERVE_SHARED_DIR ?? resolve(repoRoot, '..', 'shared');

export function sharedPath(...parts: string[]): string {
  return join(sharedRoot, ...parts);
}

/** Returns the path when it exists; otherwise skips the test (or throws under CI). */
export function requireShared(t: TestContext, ...parts: string[]): string | undefined {
  const path = sharedPath(...parts);
  if (existsSync(path)) return path;
  const message = `${path} is missing: put the shared model folder beside the repository (../shared) or set PDSERVE_SHARED_DIR`;
  if (process.env.CI === 'true') throw new Error(message);
  t.skip(message);
  return undefined;
}
