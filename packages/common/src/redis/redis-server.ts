// Runs a private, throw-away redis-server for tests and for `pdserve up`: bound to 127.0.0.1 on a
// free port, no persistence (`--save ''`, `--appendonly no`), its working directory in a fresh temp
// folder unless `dir` is given. `startRedisServer` resolves once the server answers PING.
//
// Orphan protection: unless `watchParent: false`, a tiny `sh` watchdog is started beside the server
// with a pipe from this process on its stdin. When this process dies for any reason (SIGKILL
// included) the pipe closes, the watchdog's `cat` sees EOF and it SIGTERMs the server, so a killed
// test run or a killed `pdserve up` does not leave redis-server behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, isAbsolute, join } from 'node:path';
import { freePort } from '../process/free-port.ts';

export interface StartRedisServerOptions {
  /** Port to listen on; a free one is picked when omitted (and re-picked if it was raced away). */
  port?: number;
  /** Working directory for redis-server; a temp folder (removed on stop) when omitted. */
  dir?: string;
  /** Binary to run; default `$PDSERVE_REDIS_SERVER` or `redis-server` from PATH. */
  bin?: string;
  /** How long to wait for PING to answer (default 10000 ms). */
  startTimeoutMs?: number;
  /** Grace between SIGTERM and SIGKILL in stop() (default 3000 ms). */
  stopTimeoutMs?: number;
  /** More `--option value` arguments appended to the command line. */
  extraArgs?: string[];
  /** Start the parent-death watchdog (default true). */
  watchParent?: boolean;
  /** Receives each line redis-server prints (it logs at `warning` level to stdout). */
  onLog?: (line: string) => void;
}

export interface RedisServerHandle {
  /** `redis://127.0.0.1:PORT` */
  url: string;
  port: number;
  pid: number;
  dir: string;
  /** SIGTERM, then SIGKILL after stopTimeoutMs; resolves when the process is gone. Idempotent. */
  stop(): Promise<void>;
  /** Resolves when the process exits, for whatever reason. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const HOST = '127.0.0.1';

export const REDIS_SERVER_MISSING_HELP =
  'redis-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install redis-server`, ' +
  'macOS: `brew install redis`), set PDSERVE_REDIS_SERVER to the binary, or point pdserve at an ' +
  'existing Redis with `--redis-url redis://HOST:PORT`.';

/** Absolute path of the binary, or undefined when it cannot be found / executed. */
export function findExecutable(name: string): string | undefined {
  const canRun = (p: string): boolean => {
    try {
      accessSync(p, fsConstants.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  if (name.includes('/')) return canRun(name) ? (isAbsolute(name) ? name : join(process.cwd(), name)) : undefined;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    if (canRun(candidate)) return candidate;
  }
  return undefined;
}

export async function startRedisServer(options: StartRedisServerOptions = {}): Promise<RedisServerHandle> {
  const binName = options.bin ?? process.env.PDSERVE_REDIS_SERVER ?? 'redis-server';
  const bin = findExecutable(binName);
  if (!bin) throw new Error(`${REDIS_SERVER_MISSING_HELP} (looked for ${JSON.stringify(binName)})`);

  const ownDir = options.dir === undefined;
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'pdserve-redis-'));
  const attempts = options.port === undefined ? 5 : 1;
  let lastError: unknown;
  try {
    for (let i = 0; i < attempts; i++) {
      const port = options.port ?? (await freePort(HOST));
      try {
        return await launch(bin, port, dir, ownDir, options);
      } catch (err) {
        lastError = err;
        if (!(err instanceof PortInUseError)) break;
      }
    }
  } catch (err) {
    lastError = err;
  }
  if (ownDir) rmSync(dir, { recursive: true, force: true });
  throw lastError;
}

class PortInUseError extends Error {}

async function launch(
  bin: string,
  port: number,
  dir: string,
  ownDir: boolean,
  options: StartRedisServerOptions,
): Promise<RedisServerHandle> {
  const args = [
    '--port', String(port),
    '--bind', HOST,
    '--save', '',
    '--appendonly', 'no',
    '--dir', dir,
    '--daemonize', 'no',
    '--protected-mode', 'yes',
    '--logfile', '',
    '--loglevel', 'warning',
    ...(options.extraArgs ?? []),
  ];
  // A process group of its own (setsid), as `up`'s other children have: a terminal's Ctrl-C goes to the
  // whole foreground group, and a server that took it itself would be gone before the workers that
  // `up` then stops could deregister from it. Whoever started it stops it (stop(), or the watchdog).
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const recent: string[] = [];
  const onLine = (line: string): void => {
    recent.push(line);
    if (recent.length > 40) recent.shift();
    options.onLog?.(line);
  };
  forwardLines(child.stdout!, onLine);
  forwardLines(child.stderr!, onLine);
  const outputClosed = Promise.all([child.stdout!, child.stderr!].map((s) => new Promise((r) => s.once('close', r))));

  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
  });
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));

  const watchdog = options.watchParent === false ? undefined : startWatchdog(child);
  const killOnExit = (): void => {
    try {
      child.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  };
  process.on('exit', killOnExit);

  const cleanupAfterExit = (): void => {
    process.off('exit', killOnExit);
    stopWatchdog(watchdog);
  };
  void exited.then(cleanupAfterExit);

  const describe = (): string => (recent.length ? `\n${recent.join('\n')}` : '');
  const startedAt = Date.now();
  const deadline = startedAt + (options.startTimeoutMs ?? 10_000);
  try {
    for (;;) {
      const err = await Promise.race([spawnError, sleep(0).then(() => undefined)]);
      if (err) throw err;
      if (exitInfo) {
        // 'exit' can beat the last output; give the pipes a moment to drain for the message.
        await Promise.race([outputClosed, sleep(500)]);
        const text = recent.join('\n');
        const message = `redis-server exited during startup (code ${exitInfo.code}, signal ${exitInfo.signal})${describe()}`;
        if (/address already in use/i.test(text)) throw new PortInUseError(message);
        throw new Error(message);
      }
      // Ask for the pid, not just PING: with an explicit port another server may already answer there.
      const answeringPid = await serverPid(port, 250);
      if (answeringPid === child.pid) break;
      // Normally our child exits at once with "Address already in use" (handled above).
      if (answeringPid !== undefined && Date.now() - startedAt > 2000) {
        throw new PortInUseError(`port ${port} is already served by another redis-server (pid ${answeringPid})${describe()}`);
      }
      if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer in time${describe()}`);
      await sleep(50);
    }
  } catch (err) {
    await terminate(child, exited, options.stopTimeoutMs ?? 3000);
    throw err;
  }

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      stopWatchdog(watchdog);
      await terminate(child, exited, options.stopTimeoutMs ?? 3000);
      cleanupAfterExit();
      if (ownDir) rmSync(dir, { recursive: true, force: true });
    })();
    return stopping;
  };

  return { url: `redis://${HOST}:${port}`, port, pid: child.pid!, dir, stop, exited };
}

async function terminate(
  child: ChildProcess,
  exited: Promise<unknown>,
  graceMs: number,
): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  if (child.pid === undefined) return; // never spawned
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => {
    timer = setTimeout(() => resolve('timeout'), graceMs);
  });
  const outcome = await Promise.race([exited.then(() => 'exited' as const), timeout]);
  clearTimeout(timer);
  if (outcome === 'timeout') {
    child.kill('SIGKILL');
    await exited;
  }
}

function startWatchdog(child: ChildProcess): ChildProcess | undefined {
  if (child.pid === undefined) return undefined;
  const shell = findExecutable('sh');
  if (!shell) return undefined;
  const watchdog = spawn(
    shell,
    ['-c', 'cat >/dev/null 2>&1; kill -TERM "$1" 2>/dev/null', 'pdserve-redis-watchdog', String(child.pid)],
    // Out of the terminal's process group too: a Ctrl-C must not kill it while the server lives on.
    { stdio: ['pipe', 'ignore', 'ignore'], detached: true },
  );
  watchdog.on('error', () => {
    /* best effort */
  });
  watchdog.stdin!.on('error', () => {
    /* EPIPE if it died: nothing to do */
  });
  // Neither the watchdog nor its pipe may keep this process alive.
  watchdog.unref();
  (watchdog.stdin as unknown as Socket).unref();
  return watchdog;
}

function stopWatchdog(watchdog: ChildProcess | undefined): void {
  if (!watchdog) return;
  // Kill the shell first so it cannot run its `kill` (the pid may be reused later), then close the
  // pipe so its `cat` sees EOF and exits too.
  try {
    watchdog.kill('SIGKILL');
  } catch {
    /* gone */
  }
  watchdog.stdin?.destroy();
}

/** True when something on 127.0.0.1:port answers `PING` with `+PONG` within timeoutMs. */
export function ping(port: number, timeoutMs = 500, host = HOST): Promise<boolean> {
  return new Promise((resolve) => {
    let done = false;
    let buffer = '';
    const socket = connect({ port, host });
    const finish = (ok: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      if (buffer.includes('\r\n')) finish(buffer.startsWith('+PONG'));
    });
    socket.on('error', () => finish(false));
    socket.on('close', () => finish(false));
  });
}

/** The process_id reported by `INFO server` on 127.0.0.1:port, or undefined if nothing answers. */
export function serverPid(port: number, timeoutMs = 500, host = HOST): Promise<number | undefined> {
  return new Promise((resolve) => {
    let done = false;
    let buffer = '';
    const socket = connect({ port, host });
    const finish = (pid: number | undefined): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(pid);
    };
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write('INFO server\r\n'));
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      if (buffer.startsWith('-')) return finish(undefined);
      const m = /process_id:(\d+)\r\n/.exec(buffer);
      if (m) finish(Number(m[1]));
    });
    socket.on('error', () => finish(undefined));
    socket.on('close', () => finish(undefined));
  });
}

function forwardLines(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  let partial = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    partial += chunk;
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      onLine(partial.slice(0, nl));
      partial = partial.slice(nl + 1);
    }
    if (partial.length > 64 * 1024) {
      onLine(partial);
      partial = '';
    }
  });
  stream.on('end', () => {
    if (partial) onLine(partial);
    partial = '';
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
