// `pdserve fetch stories260K`: downloads the published llama2.c files, checks their sha256 (the
// values in ../shared/models/stories260K/PROVENANCE.md), and converts them into the model cache
// that `pdserve up` looks in.
import type { Command } from 'commander';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertLlama2c } from '@pdserve/engine';
import { modelCacheDir } from './up.ts';

const BASE = 'https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K';
const KNOWN: Record<string, { files: Array<{ name: string; sha256: string }>; checkpoint: string; tokenizer: string }> = {
  stories260K: {
    files: [
      { name: 'stories260K.bin', sha256: 'b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696' },
      { name: 'tok512.bin', sha256: '037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312' },
    ],
    checkpoint: 'stories260K.bin',
    tokenizer: 'tok512.bin',
  },
};

async function download(url: string, sha256: string): Promise<Buffer> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(60_000) });
  } catch (err) {
    throw new Error(`cannot download ${url}: ${(err as Error).message} (no network? convert a local copy with \`pdserve convert\` instead)`);
  }
  if (!res.ok) throw new Error(`cannot download ${url}: HTTP ${res.status}`);
  const body = Buffer.from(await res.arrayBuffer());
  const got = createHash('sha256').update(body).digest('hex');
  if (got !== sha256) throw new Error(`${url}: sha256 ${got} does not match the published ${sha256}`);
  return body;
}

export function register(program: Command): void {
  program
    .command('fetch')
    .description(`download a published model and convert it into the model cache (${Object.keys(KNOWN).join(', ')})`)
    .argument('<name>', 'model name')
    .option('--out <dir>', 'model directory to write (default: the cache pdserve up reads)')
    .action(async (name: string, o: { out?: string }) => {
      const spec = KNOWN[name];
      if (!spec) throw new Error(`unknown model ${name}; known: ${Object.keys(KNOWN).join(', ')}`);
      const tmp = mkdtempSync(join(tmpdir(), 'pdserve-fetch-'));
      try {
        for (const f of spec.files) writeFileSync(join(tmp, f.name), await download(`${BASE}/${f.name}`, f.sha256));
        const out = o.out ?? join(modelCacheDir(), name);
        mkdirSync(out, { recursive: true });
        convertLlama2c({ checkpoint: join(tmp, spec.checkpoint), tokenizer: join(tmp, spec.tokenizer), out, name });
        process.stdout.write(`wrote ${out}\n`);
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
    });
}
