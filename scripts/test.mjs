#!/usr/bin/env node
// Runs every test file of the workspace with node's own test runner (through tsx, which strips the
// TypeScript), so CI sees one summary. `pnpm test -- PATTERN` narrows to files whose path contains
// PATTERN.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const roots = ['packages', 'services', 'test'];
const files = [];
function walk(dir) {
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules') continue;
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (name.endsWith('.test.ts')) files.push(relative(root, path));
  }
}
for (const r of roots) {
  try { walk(join(root, r)); } catch { /* folder absent */ }
}
const patterns = process.argv.slice(2).filter((a) => a !== '--');
const selected = files.filter((f) => patterns.length === 0 || patterns.some((p) => f.includes(p))).sort();
if (selected.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
const result = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-concurrency=1', '--test-reporter=spec', ...selected],
  { cwd: root, stdio: 'inherit', env: process.env },
);
process.exit(result.status ?? 1);
