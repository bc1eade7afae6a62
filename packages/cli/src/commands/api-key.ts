// Where `pdserve router` gets its API keys, so no key need be on the command line (visible in
// `ps` and /proc/PID/cmdline to every local user). Several keys may be valid at once (one per
// client, or old and new during a rotation): every source may hold a list.
import { readFileSync } from 'node:fs';

export interface ApiKeyFlags {
  /** Repeated --api-key flags (commander collects them); each may be a comma list. */
  apiKey?: string | string[];
  apiKeyFile?: string;
}

/** Commander collector for a repeatable flag. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

const splitList = (s: string) => s.split(',').map((k) => k.trim()).filter((k) => k !== '');

function keysOfFile(file: string): string[] {
  // One key per line (comma lists allowed too); blank lines and # comments ignored.
  const keys = readFileSync(file, 'utf8').split(/\r?\n/).filter((l) => !l.trim().startsWith('#')).flatMap(splitList);
  if (keys.length === 0) throw new Error(`API key file ${file} is empty`);
  return keys;
}

/**
 * The router's API keys: --api-key (repeatable, comma lists), else --api-key-file (one key per
 * line), else $PDSERVE_API_KEY (comma list), else $PDSERVE_API_KEY_FILE. Both flags at once, or a
 * file without a key, is an error. [] = no authentication.
 */
export function resolveApiKeys(o: ApiKeyFlags, env: NodeJS.ProcessEnv = process.env): string[] {
  const flags = o.apiKey === undefined ? undefined : (Array.isArray(o.apiKey) ? o.apiKey : [o.apiKey]);
  if (flags !== undefined && o.apiKeyFile !== undefined) throw new Error('give --api-key or --api-key-file, not both');
  if (flags !== undefined) return [...new Set(flags.flatMap(splitList))];
  const file = o.apiKeyFile ?? (!env.PDSERVE_API_KEY ? env.PDSERVE_API_KEY_FILE : undefined);
  if (file !== undefined && file !== '') return [...new Set(keysOfFile(file))];
  return [...new Set(splitList(env.PDSERVE_API_KEY ?? ''))];
}

/** The first key, for callers that serve one (kept for compatibility). */
export function resolveApiKey(o: ApiKeyFlags, env: NodeJS.ProcessEnv = process.env): string | undefined {
  return resolveApiKeys(o, env)[0];
}
