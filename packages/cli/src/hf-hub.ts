// A small Hugging Face Hub client: the repository listing with each file's size and hash, and
// file downloads that resume (HTTP Range) and are verified before they are kept.
//   GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true  -> {sha, siblings: [{rfilename,
//       size, blobId, lfs?: {sha256, size}}]}; LFS files (weights) carry a sha256, the others
//       their git blob id (sha1 of "blob <size>\0" + content), which is checked the same way.
//   GET {endpoint}/{repo}/resolve/{rev}/{file}                  -> the file (often a redirect)
// The endpoint is $HF_ENDPOINT (as huggingface_hub reads it) or https://huggingface.co; $HF_TOKEN
// is sent as a bearer token for gated or private repositories.
import { createHash, type Hash } from 'node:crypto';
import { closeSync, createReadStream, existsSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';

export const DEFAULT_HUB_ENDPOINT = 'https://huggingface.co';

export function hubEndpoint(): string {
  return (process.env.HF_ENDPOINT || DEFAULT_HUB_ENDPOINT).replace(/\/+$/, '');
}

export class HubError extends Error {}
/** The bytes arrived but are not the published ones: the partial file is gone, a retry starts over. */
export class IntegrityError extends HubError {}

export interface HubFile {
  path: string;
  size?: number;
  /** LFS files: the sha256 of the content. */
  sha256?: string;
  /** Git blob id (sha1 of "blob <size>\0" + content), for files stored in git itself. */
  blobId?: string;
}

export interface RepoInfo {
  /** The commit the revision resolved to; files are fetched from it so a moving branch cannot mix versions. */
  sha: string;
  files: Map<string, HubFile>;
}

function authHeaders(): Record<string, string> {
  const token = process.env.HF_TOKEN;
  return token ? { authorization: `Bearer ${token}` } : {};
}

const encodePath = (p: string) => p.split('/').map(encodeURIComponent).join('/');

export function resolveUrl(repo: string, revision: string, file: string, endpoint = hubEndpoint()): string {
  return `${endpoint}/${encodePath(repo)}/resolve/${encodeURIComponent(revision)}/${encodePath(file)}`;
}

export async function repoInfo(repo: string, revision: string, endpoint = hubEndpoint()): Promise<RepoInfo> {
  if (!/^[\w.-]+\/[\w.-]+$/.test(repo)) throw new HubError(`${JSON.stringify(repo)} is not a Hugging Face repository id (owner/name)`);
  const url = `${endpoint}/api/models/${encodePath(repo)}/revision/${encodeURIComponent(revision)}?blobs=true`;
  let res: Response;
  try {
    res = await fetch(url, { headers: authHeaders(), signal: AbortSignal.timeout(30_000) });
  } catch (err) {
    throw new HubError(`cannot reach ${endpoint} (${(err as Error).message}): no network? set HF_ENDPOINT for a mirror, or convert a local folder with \`pdserve convert --from hf DIR\``);
  }
  if (res.status === 401 || res.status === 403) throw new HubError(`${repo}: HTTP ${res.status} from the hub (gated or private: accept its licence on the website and set HF_TOKEN)`);
  if (res.status === 404) throw new HubError(`${repo} at revision ${revision} was not found on ${endpoint}`);
  if (!res.ok) throw new HubError(`${url}: HTTP ${res.status}`);
  let body: { sha?: unknown; siblings?: unknown };
  try {
    body = (await res.json()) as typeof body;
  } catch (err) {
    throw new HubError(`${url}: the answer is not JSON (${(err as Error).message})`);
  }
  if (typeof body.sha !== 'string' || !Array.isArray(body.siblings)) throw new HubError(`${url}: the answer has no sha and siblings list`);
  const files = new Map<string, HubFile>();
  for (const s of body.siblings as Array<Record<string, any>>) {
    if (typeof s?.rfilename !== 'string') continue;
    files.set(s.rfilename, {
      path: s.rfilename,
      size: Number.isInteger(s.lfs?.size) ? s.lfs.size : Number.isInteger(s.size) ? s.size : undefined,
      sha256: typeof s.lfs?.sha256 === 'string' ? s.lfs.sha256.toLowerCase() : undefined,
      blobId: typeof s.blobId === 'string' ? s.blobId.toLowerCase() : undefined,
    });
  }
  return { sha: body.sha, files };
}

/** The hashes a file is checked against while it streams in. */
class Verifier {
  private readonly sha256: Hash | undefined;
  private readonly sha1: Hash | undefined;
  constructor(private readonly expected: HubFile) {
    this.sha256 = expected.sha256 ? createHash('sha256') : undefined;
    // A git blob id hashes a header with the size, so it needs the size up front.
    this.sha1 = !expected.sha256 && expected.blobId && expected.size !== undefined ? createHash('sha1').update(`blob ${expected.size}\0`) : undefined;
  }
  update(chunk: Uint8Array): void {
    this.sha256?.update(chunk);
    this.sha1?.update(chunk);
  }
  /** Throws IntegrityError when the size or the hash is not the published one. */
  check(url: string, size: number): void {
    if (this.expected.size !== undefined && size !== this.expected.size) {
      throw new IntegrityError(`${url}: got ${size} bytes, the hub lists ${this.expected.size}`);
    }
    if (this.sha256) {
      const got = this.sha256.digest('hex');
      if (got !== this.expected.sha256) throw new IntegrityError(`${url}: sha256 ${got} does not match the published ${this.expected.sha256}`);
    } else if (this.sha1) {
      const got = this.sha1.digest('hex');
      if (got !== this.expected.blobId) throw new IntegrityError(`${url}: git blob id ${got} does not match the published ${this.expected.blobId}`);
    }
  }
}

async function hashExisting(path: string, verifier: Verifier): Promise<void> {
  for await (const chunk of createReadStream(path)) verifier.update(chunk as Buffer);
}

export interface DownloadOptions {
  /** Attempts per file; an interrupted attempt resumes where the previous one stopped. */
  attempts?: number;
  /** Abort an attempt when no bytes arrive for this long. */
  idleTimeoutMs?: number;
  onProgress?: (info: { url: string; bytes: number; total?: number; resumedFrom: number }) => void;
}

/**
 * Downloads `url` to `dest`, through `dest + ".part"`: bytes already in the .part file (an earlier
 * interrupted run or attempt) are kept and only the rest is requested with a Range header. The
 * file is renamed to `dest` only once its size and hash match `expected`; on a mismatch the .part
 * file is deleted and IntegrityError thrown.
 */
export async function downloadFile(url: string, dest: string, expected: HubFile, opts: DownloadOptions = {}): Promise<void> {
  const part = `${dest}.part`;
  const attempts = opts.attempts ?? 3;
  let lastError: Error | undefined;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      await downloadAttempt(url, part, expected, opts);
      renameSync(part, dest);
      return;
    } catch (err) {
      if (err instanceof IntegrityError) {
        rmSync(part, { force: true });
        throw err;
      }
      lastError = err as Error;
    }
  }
  throw new HubError(`cannot download ${url} after ${attempts} attempts: ${lastError?.message} (run the command again to resume)`);
}

async function downloadAttempt(url: string, part: string, expected: HubFile, opts: DownloadOptions): Promise<void> {
  let have = existsSync(part) ? statSync(part).size : 0;
  if (expected.size !== undefined && have > expected.size) {
    rmSync(part, { force: true });
    have = 0;
  }
  const verifier = new Verifier(expected);
  if (expected.size !== undefined && have === expected.size) {
    await hashExisting(part, verifier);
    verifier.check(url, have);
    return;
  }
  const controller = new AbortController();
  const idleMs = opts.idleTimeoutMs ?? 60_000;
  let idle = setTimeout(() => controller.abort(new Error(`no data for ${idleMs / 1000} s`)), idleMs);
  const touch = () => {
    clearTimeout(idle);
    idle = setTimeout(() => controller.abort(new Error(`no data for ${idleMs / 1000} s`)), idleMs);
  };
  try {
    let res: Response;
    try {
      res = await fetch(url, { headers: { ...authHeaders(), ...(have > 0 ? { range: `bytes=${have}-` } : {}) }, signal: controller.signal });
    } catch (err) {
      throw new HubError(`cannot download ${url}: ${(err as Error).message}`);
    }
    if (res.status === 401 || res.status === 403) throw new IntegrityError(`${url}: HTTP ${res.status} (gated or private: set HF_TOKEN)`);
    if (res.status === 404) throw new IntegrityError(`${url}: HTTP 404`);
    if (res.status === 416 && have > 0) {
      // The server has nothing past what we hold: check what we hold.
      await hashExisting(part, verifier);
      verifier.check(url, have);
      return;
    }
    if (res.status !== 200 && res.status !== 206) throw new HubError(`${url}: HTTP ${res.status}`);
    const resumed = res.status === 206;
    if (resumed) {
      const range = /^bytes (\d+)-/.exec(res.headers.get('content-range') ?? '');
      if (!range || Number(range[1]) !== have) throw new HubError(`${url}: the server resumed at ${range?.[1] ?? 'an unknown offset'}, not at byte ${have}`);
      await hashExisting(part, verifier);
    } else {
      have = 0; // the server ignored the Range header: start over
    }
    const fd = openSync(part, resumed ? 'a' : 'w');
    let size = have;
    try {
      if (!res.body) throw new HubError(`${url}: empty response`);
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        touch();
        writeSync(fd, chunk);
        verifier.update(chunk);
        size += chunk.byteLength;
        opts.onProgress?.({ url, bytes: size, total: expected.size, resumedFrom: resumed ? have : 0 });
      }
    } catch (err) {
      if (err instanceof HubError) throw err;
      throw new HubError(`download of ${url} interrupted at byte ${size}: ${(err as Error).message}`);
    } finally {
      closeSync(fd);
    }
    verifier.check(url, size);
  } finally {
    clearTimeout(idle);
  }
}
