// Supervisor for `pdserve up`: starts child processes, forwards their output, and guarantees that no
// child outlives it.
//
// - Each child runs in its own process group (spawn `detached`, i.e. setsid), so stop() signals the
//   whole group (grandchildren included) and a terminal Ctrl-C reaches only the supervisor, which
//   then stops the children in order: SIGTERM to every group, up to graceMs, then SIGKILL. When a
//   child exits (for any reason) what is left of its group is SIGKILLed at once, and its pid is
//   never signalled again (it may have been reused by then).
// - Each child gets an IPC channel and $PDSERVE_SUPERVISOR_PID; a child that calls
//   exitWhenParentDies() (process/parent-watch.ts) exits even if the supervisor is SIGKILLed.
// - On normal process exit (process.exit, uncaught exception) every child group still running gets
//   SIGKILL synchronously from a process 'exit' hook.
// - A child that exits while the supervisor is not stopping is reported to onUnexpectedExit, so
//   `up` can stop the rest and exit non-zero.
//
// Output modes: 'prefix' writes `[name] line`; 'passthrough' forwards lines unchanged (pino JSON
// stays parseable); 'auto' passes lines that look like JSON objects through and prefixes the rest;
// 'inherit' hands the child our stdout/stderr directly.
import { spawn, type ChildProcess } from 'node:child_process';
import { errorMessage, silentLogger, type LogLike } from './log-like.ts';
import { SUPERVISOR_PID_ENV } from './parent-watch.ts';

/** A signal repeated within this long of the first is the same one relayed by a wrapper (handleSignals). */
export const REPEAT_SIGNAL_MS = 1000;

export type OutputMode = 'prefix' | 'passthrough' | 'auto' | 'inherit';

export interface ChildSpec {
  /** Label used in prefixes, logs and exit reports; should be unique. */
  name: string;
  command: string;
  args?: string[];
  /** Added to (or, with inheritEnv: false, replacing) process.env; undefined values unset a variable. */
  env?: Record<string, string | undefined>;
  inheritEnv?: boolean;
  cwd?: string;
  /** Overrides the supervisor's output mode for this child. */
  output?: OutputMode;
  /** Give the child an IPC channel (default true). */
  ipc?: boolean;
}

export interface ChildExit {
  name: string;
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** False when the child exited on its own while the supervisor was not stopping. */
  expected: boolean;
}

export interface SupervisedChild {
  readonly name: string;
  readonly pid: number;
  readonly exited: Promise<ChildExit>;
  readonly running: boolean;
}

export interface SupervisorOptions {
  /** SIGTERM-to-SIGKILL grace in stop(); default 5000 ms. */
  graceMs?: number;
  /** Default 'prefix'. */
  output?: OutputMode;
  stdout?: NodeJS.WritableStream;
  stderr?: NodeJS.WritableStream;
  logger?: LogLike;
  /** Every child exit. */
  onChildExit?: (exit: ChildExit) => void;
  /** A child exited while the supervisor was not stopping. */
  onUnexpectedExit?: (exit: ChildExit) => void;
}

const MAX_LINE = 1024 * 1024;

class Child implements SupervisedChild {
  readonly exited: Promise<ChildExit>;
  running = true;
  /** Its group got the final SIGKILL when it exited; its pid must not be signalled any more. */
  groupReaped = false;
  constructor(
    readonly name: string,
    readonly pid: number,
    readonly proc: ChildProcess,
    exited: Promise<ChildExit>,
  ) {
    this.exited = exited;
  }
}

export class Supervisor {
  #opts: SupervisorOptions;
  #logger: LogLike;
  #children: Child[] = [];
  #stopping: Promise<ChildExit[]> | undefined;
  #exitHook = (): void => this.#killAll('SIGKILL');
  #hooked = false;

  constructor(options: SupervisorOptions = {}) {
    this.#opts = options;
    this.#logger = options.logger ?? silentLogger;
  }

  get stopping(): boolean {
    return this.#stopping !== undefined;
  }

  children(): SupervisedChild[] {
    return [...this.#children];
  }

  /** Starts a child. Throws if the supervisor is stopping or the command cannot be spawned. */
  spawn(spec: ChildSpec): SupervisedChild {
    if (this.#stopping) throw new Error(`Supervisor is stopping; not starting ${spec.name}`);
    const mode = spec.output ?? this.#opts.output ?? 'prefix';
    const env: NodeJS.ProcessEnv = spec.inheritEnv === false ? {} : { ...process.env };
    for (const [k, v] of Object.entries(spec.env ?? {})) {
      if (v === undefined) delete env[k];
      else env[k] = v;
    }
    env[SUPERVISOR_PID_ENV] = String(process.pid);
    const out = mode === 'inherit' ? 'inherit' : 'pipe';
    const proc = spawn(spec.command, spec.args ?? [], {
      cwd: spec.cwd,
      env,
      detached: true,
      stdio: ['pipe', out, out, ...(spec.ipc === false ? [] : ['ipc' as const])],
    });
    // A child that never reads stdin must not get EPIPE surprises on our side.
    proc.stdin?.on('error', () => {});
    if (proc.pid === undefined) {
      // spawn failed (ENOENT, EACCES): swallow the async 'error' event so it cannot crash us.
      proc.once('error', () => {});
      throw new Error(`failed to spawn ${spec.name}: ${spec.command} not found or not executable`);
    }
    proc.on('error', (err) => this.#logger.error({ child: spec.name, err: errorMessage(err) }, 'child process error'));
    if (mode !== 'inherit') {
      this.#forward(proc.stdout!, this.#opts.stdout ?? process.stdout, spec.name, mode);
      this.#forward(proc.stderr!, this.#opts.stderr ?? process.stderr, spec.name, mode);
    }
    const pid = proc.pid;
    let child!: Child;
    const exited = new Promise<ChildExit>((resolve) => {
      proc.once('exit', (code, signal) => {
        child.running = false;
        // Reap what is left in its process group now, while the group id can only be this group's:
        // once the pid is free it may be reused (even as another group's id), so the group is never
        // signalled again after this.
        signalGroup(child, 'SIGKILL');
        child.groupReaped = true;
        const exit: ChildExit = { name: spec.name, pid, code, signal, expected: this.#stopping !== undefined };
        this.#logger[exit.expected ? 'info' : 'error'](
          { child: spec.name, pid, code, signal },
          exit.expected ? 'child exited' : 'child exited unexpectedly',
        );
        try {
          this.#opts.onChildExit?.(exit);
          if (!exit.expected) this.#opts.onUnexpectedExit?.(exit);
        } catch (err) {
          this.#logger.error({ err: errorMessage(err) }, 'supervisor exit callback threw');
        }
        if (!this.#children.some((c) => c.running)) this.#unhook();
        resolve(exit);
      });
    });
    child = new Child(spec.name, pid, proc, exited);
    this.#children.push(child);
    this.#hook();
    this.#logger.info({ child: spec.name, pid, command: spec.command, args: spec.args ?? [] }, 'child started');
    return child;
  }

  /**
   * SIGTERM to every child's process group, wait up to graceMs, SIGKILL what is left (and any
   * leftover members of the groups), and resolve with every child's exit. Idempotent.
   */
  stop(): Promise<ChildExit[]> {
    this.#stopping ??= (async () => {
      const graceMs = this.#opts.graceMs ?? 5000;
      this.#killAll('SIGTERM');
      const all = Promise.all(this.#children.map((c) => c.exited));
      let timer: NodeJS.Timeout | undefined;
      const timedOut = await Promise.race([
        all.then(() => false),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(true), graceMs);
        }),
      ]);
      clearTimeout(timer);
      if (timedOut) {
        this.#logger.warn(
          { children: this.#children.filter((c) => c.running).map((c) => c.name), graceMs },
          'children did not exit in time; sending SIGKILL',
        );
      }
      // Children still running get SIGKILL (their groups with them); children that exited had their
      // groups reaped at exit.
      this.#killAll('SIGKILL');
      const exits = await all;
      this.#unhook();
      return exits;
    })();
    return this.#stopping;
  }

  /**
   * Stops the children on SIGINT/SIGTERM/SIGHUP and then exits (130 for SIGINT, 143 for SIGTERM,
   * 129 for SIGHUP) unless `exit: false`. A second signal SIGKILLs every child and exits at once,
   * unless it comes within REPEAT_SIGNAL_MS of the first: one Ctrl-C reaches a process twice when a
   * wrapper relays it (the terminal signals the whole foreground group, and `pnpm start`'s tsx
   * forwards its own copy), and that must not skip the children's drain.
   * Returns a function that removes the handlers.
   */
  handleSignals(options: { exit?: boolean; onSignal?: (signal: NodeJS.Signals) => void } = {}): () => void {
    const codes: Partial<Record<NodeJS.Signals, number>> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };
    let received: number | undefined;
    const handler = (signal: NodeJS.Signals): void => {
      const code = codes[signal] ?? 1;
      if (received !== undefined && performance.now() - received < REPEAT_SIGNAL_MS) {
        this.#logger.debug({ signal }, 'the same signal again (relayed); already stopping');
        return;
      }
      if (received !== undefined) {
        this.#logger.warn({ signal }, 'second signal; killing children now');
        this.#killAll('SIGKILL');
        if (options.exit !== false) process.exit(code);
        return;
      }
      received = performance.now();
      this.#logger.info({ signal }, 'stopping children');
      options.onSignal?.(signal);
      void this.stop().then(() => {
        if (options.exit !== false) process.exit(code);
      });
    };
    const signals = Object.keys(codes) as NodeJS.Signals[];
    for (const s of signals) process.on(s, handler);
    return () => {
      for (const s of signals) process.off(s, handler);
    };
  }

  #killAll(signal: NodeJS.Signals): void {
    for (const c of this.#children) if (c.running) signalGroup(c, signal);
  }

  #hook(): void {
    if (this.#hooked) return;
    this.#hooked = true;
    process.on('exit', this.#exitHook);
  }

  #unhook(): void {
    if (!this.#hooked) return;
    this.#hooked = false;
    process.off('exit', this.#exitHook);
  }

  #forward(stream: NodeJS.ReadableStream, dest: NodeJS.WritableStream, name: string, mode: OutputMode): void {
    let partial = '';
    const emit = (line: string): void => {
      const raw = mode === 'passthrough' || (mode === 'auto' && line.startsWith('{') && line.endsWith('}'));
      dest.write(raw ? `${line}\n` : `[${name}] ${line}\n`);
    };
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      partial += chunk;
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        emit(partial.slice(0, nl).replace(/\r$/, ''));
        partial = partial.slice(nl + 1);
      }
      if (partial.length > MAX_LINE) {
        emit(partial);
        partial = '';
      }
    });
    stream.on('end', () => {
      if (partial) emit(partial);
      partial = '';
    });
    stream.on('error', () => {});
  }
}

function signalGroup(child: Child, signal: NodeJS.Signals): void {
  if (child.groupReaped) return;
  try {
    process.kill(-child.pid, signal);
    return;
  } catch {
    /* no such group (already gone) or not a group leader: fall back to the process itself */
  }
  if (!child.running) return;
  try {
    child.proc.kill(signal);
  } catch {
    /* gone */
  }
}
