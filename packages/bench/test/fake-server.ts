// A small fake OpenAI-compatible streaming server for the bench tests: GET /v1/models, and
// streaming POST /v1/completions and /v1/chat/completions that emit `max_tokens` tokens with known
// delays (first token after ttftMs, then one every itlMs), each SSE event written in two pieces.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeServerOptions {
  ttftMs?: number;
  itlMs?: number;
  vocabSize?: number;
  maxModelLen?: number;
  model?: string;
  /** Return an HTTP status to fail this request (0-based arrival order), or undefined to serve it. */
  failWith?: (n: number) => number | undefined;
  /** Stop after this many tokens without [DONE] and hang (to exercise the timeout). */
  hangAfterTokens?: number;
  /** Omit the usage chunk. */
  noUsage?: boolean;
}

export interface FakeServer {
  url: string;
  bodies: Array<Record<string, unknown>>;
  peakInFlight: number;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startFakeServer(opts: FakeServerOptions = {}): Promise<FakeServer> {
  const ttft = opts.ttftMs ?? 40;
  const itl = opts.itlMs ?? 10;
  const model = opts.model ?? 'fake-model';
  const state = { bodies: [] as Array<Record<string, unknown>>, inFlight: 0, peak: 0, n: 0 };
  const sockets = new Set<import('node:net').Socket>();

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (req.method === 'GET' && req.url === '/v1/models') {
      const entry: Record<string, unknown> = { id: model, object: 'model' };
      if (opts.vocabSize !== undefined) entry.vocab_size = opts.vocabSize;
      if (opts.maxModelLen !== undefined) entry.max_model_len = opts.maxModelLen;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [entry] }));
      return;
    }
    const chat = req.url === '/v1/chat/completions';
    if (req.method !== 'POST' || (!chat && req.url !== '/v1/completions')) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'not found', type: 'NotFound', code: 404 } }));
      return;
    }
    let raw = '';
    for await (const c of req) raw += c;
    const body = JSON.parse(raw) as Record<string, unknown>;
    const index = state.n++;
    state.bodies.push(body);
    const status = opts.failWith?.(index);
    if (status !== undefined) {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'server overloaded, retry later', type: 'ServiceUnavailableError', code: status } }));
      return;
    }
    state.inFlight++;
    state.peak = Math.max(state.peak, state.inFlight);
    try {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      const send = async (obj: unknown) => {
        const text = `data: ${typeof obj === 'string' ? obj : JSON.stringify(obj)}\r\n\r\n`;
        const cut = Math.floor(text.length / 2);
        res.write(text.slice(0, cut));
        await sleep(1);
        res.write(text.slice(cut));
      };
      const n = Number(body.max_tokens ?? 16);
      const promptTokens = Array.isArray(body.prompt) ? body.prompt.length : 7;
      if (chat) await send({ id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] });
      await sleep(ttft);
      for (let i = 0; i < n; i++) {
        if (i > 0) await sleep(itl);
        if (res.destroyed) return;
        if (opts.hangAfterTokens !== undefined && i >= opts.hangAfterTokens) {
          await new Promise<void>((resolve) => res.once('close', () => resolve()));
          return;
        }
        const finish = i === n - 1 ? 'length' : null;
        if (chat) await send({ id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: ` t${i}` }, finish_reason: finish }] });
        else await send({ id: 'c', object: 'text_completion', choices: [{ index: 0, text: ` t${i}`, finish_reason: finish }] });
      }
      if (!opts.noUsage) await send({ id: 'c', choices: [], usage: { prompt_tokens: promptTokens, completion_tokens: n, total_tokens: promptTokens + n } });
      await send('[DONE]');
      res.end();
    } finally {
      state.inFlight--;
    }
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500);
      res.end(String(err));
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    bodies: state.bodies,
    get peakInFlight() {
      return state.peak;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
