// A local HTTP server that answers like the Hugging Face Hub for the URLs pdserve uses:
//   GET /api/models/{owner}/{name}/revision/{rev}?blobs=true   repository listing with sizes,
//       LFS sha256 (for *.safetensors and *.bin) and git blob ids (other files)
//   GET /{owner}/{name}/resolve/{rev}/{path}                    302 to /cdn/... as the hub does,
//       where the file is served with HTTP Range support
// Knobs for tests: `lie` (files whose listed hash is wrong), `cutAfter` (responses for a file stop
// after that many bytes and the connection is dropped), and a log of every request with its Range.
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

export interface MockHubRepo {
  /** Folder whose files (recursively) are the repository's. */
  dir: string;
  sha?: string;
}

export interface MockHub {
  url: string;
  requests: Array<{ path: string; range?: string; status: number }>;
  /** Paths (within a repo) whose listed sha256 / blob id is wrong. */
  lie: Set<string>;
  /** Path -> bytes after which each response for it is cut off. */
  cutAfter: Map<string, number>;
  close(): Promise<void>;
}

const LFS = /\.(safetensors|bin|gguf|onnx)$/;

function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

export async function startMockHub(repos: Record<string, MockHubRepo>): Promise<MockHub> {
  const hub: Omit<MockHub, 'url' | 'close'> = { requests: [], lie: new Set(), cutAfter: new Map() };
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://hub');
    const log = (status: number) => hub.requests.push({ path: url.pathname, range: req.headers.range, status });
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/([^/]+)$/.exec(url.pathname);
    if (api) {
      const repo = repos[decodeURIComponent(api[1])];
      if (!repo) { log(404); res.writeHead(404).end('{"error":"Repository not found"}'); return; }
      const siblings = listFiles(repo.dir).map((path) => {
        const body = readFileSync(join(repo.dir, path));
        const wrong = hub.lie.has(path);
        const blobId = createHash('sha1').update(`blob ${body.length}\0`).update(body).digest('hex');
        const sha256 = createHash('sha256').update(body).digest('hex');
        const flip = (h: string) => (wrong ? (h[0] === '0' ? '1' : '0') + h.slice(1) : h);
        return LFS.test(path)
          ? { rfilename: path, size: body.length, blobId, lfs: { sha256: flip(sha256), size: body.length, pointerSize: 134 } }
          : { rfilename: path, size: body.length, blobId: flip(blobId) };
      });
      log(200);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: api[1], sha: repo.sha ?? 'a'.repeat(40), siblings }));
      return;
    }
    const resolveMatch = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (resolveMatch) {
      log(302);
      res.writeHead(302, { location: `/cdn/${resolveMatch[1]}/${resolveMatch[3]}` }).end();
      return;
    }
    const cdn = /^\/cdn\/([^/]+\/[^/]+)\/(.+)$/.exec(url.pathname);
    const repo = cdn && repos[decodeURIComponent(cdn[1])];
    const path = cdn ? decodeURIComponent(cdn[2]) : '';
    let body: Buffer;
    try {
      if (!repo) throw new Error('no repo');
      body = readFileSync(join(repo.dir, path));
    } catch {
      log(404);
      res.writeHead(404).end('Entry not found');
      return;
    }
    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (range) {
      start = Number(range[1]);
      if (start >= body.length) { log(416); res.writeHead(416, { 'content-range': `bytes */${body.length}` }).end(); return; }
    }
    const status = range ? 206 : 200;
    log(status);
    res.writeHead(status, {
      'content-length': String(body.length - start),
      'accept-ranges': 'bytes',
      ...(range ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {}),
    });
    const cut = hub.cutAfter.get(path);
    if (cut !== undefined && body.length - start > cut) {
      res.write(body.subarray(start, start + cut), () => res.destroy());
      return;
    }
    res.end(body.subarray(start));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  return {
    ...hub,
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}
