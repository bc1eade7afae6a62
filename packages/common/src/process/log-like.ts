// The slice of a pino logger that the process/ and redis/ helpers use. A pino `Logger` satisfies it;
// so does a console shim in a script. `silentLogger` is the default where none is passed.
export type LogMethod = (obj: Record<string, unknown>, msg?: string) => void;

export interface LogLike {
  debug: LogMethod;
  info: LogMethod;
  warn: LogMethod;
  error: LogMethod;
}

const noop: LogMethod = () => {};
export const silentLogger: LogLike = { debug: noop, info: noop, warn: noop, error: noop };

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
