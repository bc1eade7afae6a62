// Fetching a model: a Hugging Face model repository (config.json, safetensors weights, tokenizer
// files; each checked against the hub's sha256 / git blob id; resumable) or karpathy's published
// llama2.c stories260K (sha256 as in ../shared/models/stories260K/PROVENANCE.md), downloaded and
// converted into a model directory (by default in the model cache that `pdserve up` looks in).
import { readFileSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { convertHf, convertLlama2c, type ModelConfig, type WeightDtype } from '@pdserve/engine';
import { downloadFile, hubEndpoint, HubError, IntegrityError, repoInfo, resolveUrl, type HubFile } from './hf-hub.ts';
import { cachedModelDir, modelCacheDir } from './model-cache.ts';

export const LLAMA2C_MODELS: Record<string, { repo: string; revision: string; files: Array<{ path: string; sha256: string }>; checkpoint: string; tokenizer: string }> = {
  stories260K: {
    repo: 'karpathy/tinyllamas',
    revision: 'main',
    files: [
      { path: 'stories260K/stories260K.bin', sha256: 'b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696' },
      { path: 'stories260K/tok512.bin', sha256: '037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312' },
    ],
    checkpoint: 'stories260K.bin',
    tokenizer: 'tok512.bin',
  },
};

/** Files of a Hugging Face repository that a conversion reads, besides the weights. */
const HF_FILES = { required: ['config.json', 'tokenizer.json'], optional: ['generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json', 'chat_template.jinja'] };
const INDEX = 'model.safetensors.index.json';

export interface FetchOptions {
  out?: string;
  revision?: string;
  /** Keep the downloaded Hugging Face files after converting (default: delete them). */
  keepDownload?: boolean;
  /** Weight storage of the converted model (default fp32) and its q8/q4 block length. */
  dtype?: WeightDtype;
  blockSize?: number;
  /** Attempts per file (default 3); each resumes where the previous stopped. */
  attempts?: number;
  log?: (line: string) => void;
}

/** Where downloads of one repository commit collect (resumable across runs). */
function downloadDir(repo: string, sha: string): string {
  return join(modelCacheDir(), '.downloads', repo.replace('/', '--'), sha);
}

function progress(log: (line: string) => void): (i: { url: string; bytes: number; total?: number; resumedFrom: number }) => void {
  let lastTenth = -1;
  let lastUrl = '';
  return (i) => {
    if (i.url !== lastUrl) { lastUrl = i.url; lastTenth = -1; if (i.resumedFrom > 0) log(`resuming ${i.url} at byte ${i.resumedFrom}`); }
    if (!i.total || i.total < 8 << 20) return;
    const tenth = Math.floor((10 * i.bytes) / i.total);
    if (tenth !== lastTenth) { lastTenth = tenth; log(`  ${(i.bytes / 2 ** 20).toFixed(0)} / ${(i.total / 2 ** 20).toFixed(0)} MiB`); }
  };
}

export async function fetchHfRepo(repo: string, opts: FetchOptions = {}): Promise<{ out: string; config: ModelConfig }> {
  const log = opts.log ?? (() => {});
  const info = await repoInfo(repo, opts.revision ?? 'main');
  const dir = downloadDir(repo, info.sha);
  mkdirSync(dir, { recursive: true });
  const get = async (path: string) => {
    const file = info.files.get(path)!;
    if (existsSync(join(dir, path))) return; // complete and verified when it was renamed into place
    log(`downloading ${path}${file.size !== undefined ? ` (${file.size} bytes)` : ''}`);
    await downloadFile(resolveUrl(repo, info.sha, path), join(dir, path), file, { onProgress: progress(log), attempts: opts.attempts });
  };
  try {
    for (const path of HF_FILES.required) {
      if (!info.files.has(path)) throw new HubError(`${repo} has no ${path}: not a transformers model repository pdserve can convert`);
    }
    const wanted = [...HF_FILES.required, ...HF_FILES.optional.filter((p) => info.files.has(p))];
    for (const path of wanted) await get(path);
    let weights: string[];
    if (info.files.has(INDEX)) {
      await get(INDEX);
      const index = JSON.parse(readFileSync(join(dir, INDEX), 'utf8')) as { weight_map?: Record<string, string> };
      weights = [...new Set(Object.values(index.weight_map ?? {}))].sort();
      for (const w of weights) {
        // Shards are files beside the index; anything else would be written outside the download folder.
        if (!/^[\w.-]+\.safetensors$/.test(w) || w.startsWith('.')) throw new HubError(`${repo}: ${INDEX} names ${JSON.stringify(w)}, which is not a shard file name`);
        if (!info.files.has(w)) throw new HubError(`${repo}: ${INDEX} names ${w}, which the repository does not have`);
      }
    } else if (info.files.has('model.safetensors')) {
      weights = ['model.safetensors'];
    } else {
      throw new HubError(`${repo} has no model.safetensors or ${INDEX} (pdserve converts safetensors checkpoints only)`);
    }
    for (const w of weights) await get(w);
  } catch (err) {
    // Bytes that are not the published ones are not kept for a later resume; an interrupted
    // transfer is, so that running the command again continues it.
    if (err instanceof IntegrityError) rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const out = opts.out ?? cachedModelDir(repo);
  log(`converting into ${out}`);
  const config = convertHf({ dir, out, name: repo, source: { repo, revision: info.sha, endpoint: hubEndpoint() }, dtype: opts.dtype, blockSize: opts.blockSize });
  if (!opts.keepDownload) rmSync(dir, { recursive: true, force: true });
  return { out, config };
}

/** Downloads a published llama2.c model (e.g. stories260K) and converts it. */
export async function fetchLlama2cModel(name: string, opts: FetchOptions = {}): Promise<{ out: string; config: ModelConfig }> {
  const spec = LLAMA2C_MODELS[name];
  if (!spec) throw new HubError(`unknown model ${name}; known: ${Object.keys(LLAMA2C_MODELS).join(', ')}, or a Hugging Face repository id (owner/name)`);
  const dir = downloadDir(spec.repo, `${spec.revision}-${name}`);
  mkdirSync(dir, { recursive: true });
  const local = (path: string) => join(dir, path.split('/').at(-1)!);
  try {
    for (const f of spec.files) {
      if (existsSync(local(f.path))) continue;
      opts.log?.(`downloading ${f.path}`);
      await downloadFile(resolveUrl(spec.repo, spec.revision, f.path), local(f.path), { path: f.path, sha256: f.sha256 } satisfies HubFile, { attempts: opts.attempts });
    }
  } catch (err) {
    if (err instanceof IntegrityError) rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const out = opts.out ?? cachedModelDir(name);
  const config = convertLlama2c({ checkpoint: join(dir, spec.checkpoint), tokenizer: join(dir, spec.tokenizer), out, name, dtype: opts.dtype, blockSize: opts.blockSize });
  rmSync(dir, { recursive: true, force: true });
  return { out, config };
}

export function fetchModel(name: string, opts: FetchOptions = {}): Promise<{ out: string; config: ModelConfig }> {
  return name.includes('/') ? fetchHfRepo(name, opts) : fetchLlama2cModel(name, opts);
}

