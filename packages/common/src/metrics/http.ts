// A tiny node:http server for a worker's metrics port: `GET /metrics` (Prometheus text format)
// and `GET /health` (JSON, 200 when ok, 503 otherwise). Everything else is 404. The router serves
// `/metrics` from its own fastify app instead (see `registry.metrics()` / `registry.contentType`).
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface HealthStatus {
  ok: boolean;
  [key: string]: unknown;
}

/** The part of a prom-client Registry the server needs. */
export interface MetricsSource {
  metrics(): Promise<string>;
  readonly contentType: string;
}

export interface MetricsServerOptions {
  /** Interface to bind (default 0.0.0.0). */
  host?: string;
  /** Port to bind; 0 picks a free one (read it back from the result). */
  port: number;
  registry: MetricsSource;
  /** Health probe; default reports `{ ok: true }`. A throw is reported as 503 with the message. */
  health?: () => HealthStatus | Promise<HealthStatus>;
}

export interface MetricsServer {
  /** The bound port (the real one when 0 was asked for). */
  port: number;
  host: string;
  close(): Promise<void>;
}

function send(res: ServerResponse, status: number, contentType: string, body: string, head: boolean): void {
  res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
  res.end(head ? undefined : body);
}

export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const host = options.host ?? '0.0.0.0';
  const health = options.health ?? (() => ({ ok: true }));

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const path = (req.url ?? '/').split('?', 1)[0];
    const head = req.method === 'HEAD';
    if (req.method !== 'GET' && !head) {
      if (path === '/metrics' || path === '/health') {
        res.setHeader('allow', 'GET, HEAD');
        send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', false);
      } else send(res, 404, 'text/plain; charset=utf-8', 'not found\n', false);
      return;
    }
    if (path === '/metrics') {
      try {
        send(res, 200, options.registry.contentType, await options.registry.metrics(), head);
      } catch (err) {
        send(res, 500, 'text/plain; charset=utf-8', `metrics collection failed: ${(err as Error).message}\n`, head);
      }
    } else if (path === '/health') {
      let status: HealthStatus;
      try {
        status = await health();
      } catch (err) {
        status = { ok: false, error: (err as Error).message };
      }
      send(res, status.ok ? 200 : 503, 'application/json; charset=utf-8', JSON.stringify(status), head);
    } else {
      send(res, 404, 'text/plain; charset=utf-8', 'not found\n', head);
    }
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', `${String(err)}\n`, false);
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    host,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}
