// Lets a child process of `pdserve up` (or of any Supervisor) exit when its parent dies, even when
// the parent was SIGKILLed and had no chance to signal it. Call it once, early, in every long-lived
// child entry point:
//
//   exitWhenParentDies({ onParentDeath: () => server.close(), logger });
//
// It watches, cheaply and without keeping the event loop alive:
//   1. the IPC channel, when the process was spawned with one (Supervisor does this): the kernel
//      closes it when the parent dies, and Node emits 'disconnect' at once;
//   2. when spawned by a Supervisor ($PDSERVE_SUPERVISOR_PID is set): every pollMs, whether that pid
//      is still alive and whether process.ppid changed (re-parenting to init / a subreaper). This also
//      covers a wrapper in between (e.g. the `tsx` CLI), which the IPC channel does not;
//   3. optionally (watchStdin) EOF on stdin, for parents that hand the child a pipe instead of IPC.
//      Off by default because it consumes stdin.
// Processes started by hand from a shell (no IPC, no $PDSERVE_SUPERVISOR_PID) are not affected, so
// `nohup pdserve worker &` keeps working after the shell exits.
//
// On parent death it runs onParentDeath (bounded by graceMs) and then exits with exitCode.
import { readFileSync } from 'node:fs';
import { errorMessage, silentLogger, type LogLike } from './log-like.ts';

/** Set by Supervisor in every child's environment to the supervisor's pid. */
export const SUPERVISOR_PID_ENV = 'PDSERVE_SUPERVISOR_PID';

export interface ParentWatchOptions {
  /** Cleanup to run before exiting (close servers, deregister). Bounded by graceMs. */
  onParentDeath?: () => void | Promise<void>;
  /** Default 3000 ms. */
  graceMs?: number;
  /** Exit status after the parent died; default 1. */
  exitCode?: number;
  /** Poll period of the pid checks; default 500 ms. */
  pollMs?: number;
  /** Poll the supervisor pid / ppid; default: when $PDSERVE_SUPERVISOR_PID is set. */
  watchPid?: boolean;
  /** Treat stdin EOF as parent death; default false. */
  watchStdin?: boolean;
  logger?: LogLike;
}

/** Installs the watchers; returns a function that removes them. Safe to call more than once. */
export function exitWhenParentDies(options: ParentWatchOptions = {}): () => void {
  const logger = options.logger ?? silentLogger;
  const cleanups: Array<() => void> = [];
  let fired = false;

  const fire = (how: string): void => {
    if (fired) return;
    fired = true;
    dispose();
    logger.warn({ how, ppid: process.ppid }, 'parent process died; exiting');
    const exit = (): never => process.exit(options.exitCode ?? 1);
    const hard = setTimeout(exit, options.graceMs ?? 3000);
    hard.unref();
    Promise.resolve()
      .then(() => options.onParentDeath?.())
      .catch((err: unknown) => logger.error({ err: errorMessage(err) }, 'onParentDeath failed'))
      .finally(exit);
  };

  const dispose = (): void => {
    for (const c of cleanups.splice(0)) c();
  };

  // 1. IPC channel.
  if (process.channel) {
    const onDisconnect = (): void => fire('ipc-disconnect');
    process.on('disconnect', onDisconnect);
    // A 'disconnect' listener refs the channel; the watch itself must not keep the process alive.
    process.channel.unref();
    cleanups.push(() => process.off('disconnect', onDisconnect));
    if (!process.connected) fire('ipc-disconnect');
  }

  // 2. Pid polling.
  const supervisorPid = Number(process.env[SUPERVISOR_PID_ENV]);
  const watchPid = options.watchPid ?? Number.isInteger(supervisorPid);
  if (watchPid) {
    const initialPpid = process.ppid;
    const check = (): void => {
      if (process.ppid !== initialPpid) return fire('ppid-changed');
      if (Number.isInteger(supervisorPid) && supervisorPid > 0 && !pidAlive(supervisorPid)) fire('supervisor-gone');
    };
    const timer = setInterval(check, options.pollMs ?? 500);
    timer.unref();
    cleanups.push(() => clearInterval(timer));
    check();
  }

  // 3. stdin EOF.
  if (options.watchStdin) {
    const stdin = process.stdin;
    const onEnd = (): void => fire('stdin-eof');
    stdin.on('end', onEnd);
    stdin.on('error', onEnd);
    stdin.resume();
    (stdin as { unref?: () => void }).unref?.();
    cleanups.push(() => {
      stdin.off('end', onEnd);
      stdin.off('error', onEnd);
    });
  }

  return dispose;
}

/** True when a process with this pid exists (and is not a zombie, where /proc tells). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    // /proc/PID/stat: "pid (comm) S ..."; comm may contain spaces or parentheses, so take the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return true; // no /proc (macOS) or raced with exit: trust kill(0)
  }
}
