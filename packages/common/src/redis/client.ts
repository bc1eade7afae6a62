// ioredis connections for the registry, configured for "Redis is a hint, never a dependency of the
// data path": commands fail fast while Redis is unreachable instead of queueing, and the client
// keeps reconnecting in the background forever.
//
//   enableOfflineQueue: false       a command issued while disconnected rejects at once; nothing is
//                                    buffered, so an outage cannot build a backlog of stale
//                                    heartbeats that would flush (out of date) when Redis returns.
//   maxRetriesPerRequest: 0          a command in flight when the connection drops rejects at once
//   autoResendUnfulfilledCommands:   ... and is not resent after reconnecting.
//     false
//   commandTimeout                   a hung server (SIGSTOPped, partitioned) rejects commands after
//                                    this long, so heartbeat / poll loops never stall.
//   connectTimeout                   same for a connect that hangs.
//   socketTimeout                    a connection with commands outstanding that receives nothing
//                                    for this long is dropped and re-established, so a hung server
//                                    turns into "disconnected" (fail fast, no queue) instead of an
//                                    ever-growing pipeline of timed-out commands on a dead socket.
//   keepAlive                        TCP keep-alive for idle connections (the events subscriber).
//   retryStrategy                    reconnect forever, backing off 100 ms .. maxReconnectDelayMs.
//   lazyConnect: false               connect right away; callers may await waitForReady().
//   disconnectTimeout: 200           see below; only bounds how long closing may hold the event loop.
//
// Every client gets an 'error' listener (without one ioredis prints "Unhandled error event") that
// logs the first failure, then at most one summary per `logEveryMs`, and logs recovery.
import { Redis } from 'ioredis';
import { errorMessage, silentLogger, type LogLike } from '../process/log-like.ts';

export interface RedisClientOptions {
  url: string;
  /** Shown in CLIENT LIST and in log lines. */
  name?: string;
  logger?: LogLike;
  /** Default 1000 ms. */
  commandTimeoutMs?: number;
  /** Default 2000 ms. */
  connectTimeoutMs?: number;
  /** Drop and reconnect a socket that has commands outstanding but receives nothing for this long; default max(1000, 2 × commandTimeoutMs). */
  socketTimeoutMs?: number;
  /** Upper bound of the reconnect back-off; default 1000 ms. */
  maxReconnectDelayMs?: number;
  /** Minimum interval between repeated connection-error log lines; default 30000 ms. */
  logEveryMs?: number;
}

export function createRedisClient(options: RedisClientOptions): Redis {
  const logger = options.logger ?? silentLogger;
  const maxDelay = options.maxReconnectDelayMs ?? 1000;
  const name = options.name ?? 'pdserve';
  const commandTimeout = options.commandTimeoutMs ?? 1000;
  const client = new Redis(options.url, {
    connectionName: name,
    lazyConnect: false,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    autoResubscribe: false,
    commandTimeout,
    connectTimeout: options.connectTimeoutMs ?? 2000,
    socketTimeout: options.socketTimeoutMs ?? Math.max(1000, 2 * commandTimeout),
    keepAlive: 10_000,
    disableClientInfo: true,
    // disconnect() arms a timer of this length to destroy a stream that does not close; when the
    // stream is already dead (Redis down) nothing clears it, so keep it short (default is 2 s).
    disconnectTimeout: 200,
    retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times - 1, 10), maxDelay),
  });

  const logEveryMs = options.logEveryMs ?? 30_000;
  let failing = false;
  let suppressed = 0;
  let lastLog = 0;
  client.on('error', (err: unknown) => {
    const now = Date.now();
    if (!failing || now - lastLog >= logEveryMs) {
      logger.warn(
        { redis: redactUrl(options.url), client: name, err: errorMessage(err), suppressed },
        failing ? 'redis still unreachable' : 'redis connection error; retrying in the background',
      );
      failing = true;
      suppressed = 0;
      lastLog = now;
    } else {
      suppressed++;
    }
  });
  client.on('ready', () => {
    if (failing) logger.info({ redis: redactUrl(options.url), client: name }, 'redis connection restored');
    failing = false;
    suppressed = 0;
  });
  return client;
}

/** Resolves true once the client is ready, false after timeoutMs (the client keeps trying). */
export function waitForReady(client: Redis, timeoutMs: number): Promise<boolean> {
  if (client.status === 'ready') return Promise.resolve(true);
  return new Promise((resolve) => {
    const onReady = (): void => {
      clearTimeout(timer);
      client.off('end', onEnd);
      resolve(true);
    };
    const onEnd = (): void => {
      clearTimeout(timer);
      client.off('ready', onReady);
      resolve(false);
    };
    const timer = setTimeout(() => {
      client.off('ready', onReady);
      client.off('end', onEnd);
      resolve(false);
    }, timeoutMs);
    timer.unref();
    client.once('ready', onReady);
    client.once('end', onEnd);
  });
}

/** QUIT politely when connected (bounded by timeoutMs), then drop the socket and stop reconnecting. */
export async function closeRedisClient(client: Redis, timeoutMs = 500): Promise<void> {
  if (client.status === 'ready') {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      client.quit().catch(() => undefined),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }
  // After a completed QUIT the status is 'end'; disconnect() then would only arm ioredis's
  // disconnectTimeout timer on an already-closed stream and hold the event loop for 2 s.
  if (client.status !== 'end') client.disconnect(false);
}

/** The URL without its password, for logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

/** The client type createRedisClient() returns, for packages that do not depend on ioredis themselves. */
export type RedisClient = Redis;
