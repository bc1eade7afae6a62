// Which model `pdserve up` serves when none is named: --model, else $PDSERVE_MODEL, else the
// stories260K in the model cache, else stories260K fetched now (a real model, real text) where a
// network allows, else a dummy model with random weights, said loudly because its text is noise.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type pino from 'pino';
import { writeDummyModel } from '@pdserve/engine';
import { fetchLlama2cModel } from './fetch-model.ts';
import { cachedModelDir, modelCacheDir } from './model-cache.ts';

export const DEFAULT_MODEL = 'stories260K';

export async function resolveDefaultModel(log: pino.Logger, given?: string): Promise<string> {
  if (given) return resolve(given);
  if (process.env.PDSERVE_MODEL) return resolve(process.env.PDSERVE_MODEL);
  const cached = cachedModelDir(DEFAULT_MODEL);
  if (existsSync(join(cached, 'config.json'))) return cached;
  let why: string;
  try {
    log.info({ model: DEFAULT_MODEL }, `no model configured: fetching ${DEFAULT_MODEL} into ${modelCacheDir()}`);
    // One attempt with a short idle limit: offline, `up` should fall back quickly, not retry.
    const { out } = await fetchLlama2cModel(DEFAULT_MODEL, { attempts: 1 });
    log.info({ model: out }, `serving ${DEFAULT_MODEL} (fetched)`);
    return out;
  } catch (err) {
    why = (err as Error).message;
  }
  const dummy = join(modelCacheDir(), 'dummy-tiny');
  if (!existsSync(join(dummy, 'config.json'))) writeDummyModel('tiny', dummy);
  log.warn({ model: dummy, fetch_error: why }, `NO MODEL CONFIGURED and ${DEFAULT_MODEL} could not be fetched: serving a DUMMY model with random weights (meaningless text). Use --model DIR, or \`pnpm pdserve fetch ${DEFAULT_MODEL}\` where a network allows.`);
  return dummy;
}
