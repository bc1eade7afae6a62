// Where `pdserve router` gets its API key, so the key need not be on the command line (visible in
// `ps` and /proc/PID/cmdline to every local user).
import { readFileSync } from 'node:fs';

/**
 * The router's API key: --api-key, else --api-key-file (its first line), else $PDSERVE_API_KEY,
 * else $PDSERVE_API_KEY_FILE. More than one of the flags, or an empty key from a file, is an error.
 */
export function resolveApiKey(o: { apiKey?: string; apiKeyFile?: string }, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (o.apiKey !== undefined && o.apiKeyFile !== undefined) throw new Error('give --api-key or --api-key-file, not both');
  const file = o.apiKeyFile ?? (o.apiKey === undefined && !env.PDSERVE_API_KEY ? env.PDSERVE_API_KEY_FILE : undefined);
  if (file !== undefined && file !== '') {
    const key = (readFileSync(file, 'utf8').split(/\r?\n/)[0] ?? '').trim();
    if (key === '') throw new Error(`API key file ${file} is empty`);
    return key;
  }
  const key = o.apiKey ?? env.PDSERVE_API_KEY;
  return key === '' ? undefined : key;
}

