// The services' pino logger: JSON lines (for log collectors and the tests that read them) unless
// stdout is a terminal, where a person reads them and pino-pretty formats them. PDSERVE_LOG_FORMAT
// (json | pretty) overrides the choice; PDSERVE_LOG_LEVEL sets the level (default info).
import pino from 'pino';
import pretty from 'pino-pretty';

export type LogFormat = 'json' | 'pretty';

export function logFormat(env: NodeJS.ProcessEnv = process.env, isTTY: boolean = process.stdout.isTTY === true): LogFormat {
  const forced = env.PDSERVE_LOG_FORMAT;
  if (forced === 'json' || forced === 'pretty') return forced;
  return isTTY ? 'pretty' : 'json';
}

export function createLogger(name: string, opts: { level?: string; format?: LogFormat; destination?: NodeJS.WritableStream } = {}): pino.Logger {
  const level = opts.level ?? process.env.PDSERVE_LOG_LEVEL ?? 'info';
  const format = opts.format ?? logFormat();
  if (format === 'json') return opts.destination ? pino({ name, level }, opts.destination) : pino({ name, level });
  // Synchronous, in this thread: lines are not lost when a process exits right after logging.
  const stream = pretty({ colorize: opts.destination === undefined && process.stdout.isTTY === true, sync: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', destination: opts.destination ?? 1 });
  return pino({ name, level }, stream);
}
