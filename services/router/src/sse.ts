// Server-sent events over the raw response: `data: {json}\n\n` per chunk, `data: [DONE]\n\n` last.
// The response is hijacked from fastify on open, so headers fastify would have added (x-request-id)
// are copied over. Opening is lazy so that errors before the first chunk are plain HTTP errors.
import type { FastifyReply } from 'fastify';
import type { ApiError } from './errors.ts';

export class SseStream {
  private opened = false;

  constructor(private readonly reply: FastifyReply) {}

  get isOpen(): boolean {
    return this.opened;
  }

  /** The client is gone or the stream was ended: writes are dropped. */
  get closed(): boolean {
    const res = this.reply.raw;
    return res.destroyed || res.writableEnded;
  }

  open(): void {
    if (this.opened) return;
    this.opened = true;
    const reply = this.reply;
    reply.hijack();
    const headers: Record<string, string | number | string[]> = {};
    for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) headers[k] = v;
    Object.assign(headers, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    reply.raw.writeHead(200, headers);
    const socket = reply.raw.socket;
    if (typeof socket?.setNoDelay === 'function') socket.setNoDelay(true);
  }

  /** Writes one event; resolves when the socket accepts more (backpressure) or closes. */
  send(data: unknown): Promise<void> | void {
    return this.write(`data: ${JSON.stringify(data)}\n\n`);
  }

  /** An error after streaming started: an error event, then [DONE]. */
  fail(e: ApiError): void {
    void this.send(e.toJSON());
    this.done();
  }

  done(): void {
    if (this.closed) return;
    this.reply.raw.end('data: [DONE]\n\n');
  }

  private write(s: string): Promise<void> | void {
    this.open();
    const res = this.reply.raw;
    if (this.closed) return;
    if (res.write(s)) return;
    return new Promise<void>((resolve) => {
      const done = () => {
        res.off('drain', done);
        res.off('close', done);
        resolve();
      };
      res.on('drain', done);
      res.on('close', done);
    });
  }
}
