// Looking into a running `pdserve up` from outside: its worker processes (to fault them) and the
// counters on its Prometheus pages. Shared by the chaos tests and scripts/soak.ts.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** Worker processes of a `pdserve up` (its direct children running `worker`), of `role` when given. */
export function workerPids(upPid: number, role?: string): number[] {
  let out = '';
  try { out = execFileSync('ps', ['-o', 'pid=', '--ppid', String(upPid)], { encoding: 'utf8' }); } catch { return []; }
  return out.trim().split('\n').filter(Boolean).map(Number).filter((pid) => {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      return argv.includes('worker') && (role === undefined || argv[argv.indexOf('--role') + 1] === role);
    } catch { return false; }
  });
}

/** A counter's total over its label sets in a Prometheus text page (those whose line contains `match`). */
export function counterTotal(page: string, name: string, match = ''): number {
  let sum = 0;
  for (const line of page.split('\n')) {
    if (!line.startsWith(name) || line.startsWith('#')) continue;
    if (match && !line.includes(match)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}
