// Where pdserve keeps the models it fetches or builds for itself: $PDSERVE_CACHE_DIR, else
// ~/.cache/pdserve/models. `pdserve fetch` writes there; `pdserve up` looks there.
import { homedir } from 'node:os';
import { join } from 'node:path';

export function modelCacheDir(): string {
  return process.env.PDSERVE_CACHE_DIR ?? join(homedir(), '.cache', 'pdserve', 'models');
}

/** A served name's directory in the cache: `owner--name` for a Hugging Face repository. */
export function cachedModelDir(name: string): string {
  return join(modelCacheDir(), name.replace('/', '--'));
}
