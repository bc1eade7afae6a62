// `pdserve router` takes its API key from --api-key-file or the environment, so it need not be on
// the command line where `ps` shows it (issue 12, defect 17).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveApiKey } from '../src/commands/api-key.ts';

test('the API key comes from a file, the environment, or the flag, in that order of safety', () => {
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-key-'));
  try {
    const file = join(dir, 'key');
    writeFileSync(file, 'sk-from-file\n# trailing lines are ignored\n');
    assert.equal(resolveApiKey({ apiKeyFile: file }, {}), 'sk-from-file');
    assert.equal(resolveApiKey({}, { PDSERVE_API_KEY: 'sk-env' }), 'sk-env');
    assert.equal(resolveApiKey({}, { PDSERVE_API_KEY_FILE: file }), 'sk-from-file');
    assert.equal(resolveApiKey({ apiKey: 'sk-flag' }, { PDSERVE_API_KEY: 'sk-env' }), 'sk-flag');
    assert.equal(resolveApiKey({}, {}), undefined);
    assert.throws(() => resolveApiKey({ apiKey: 'a', apiKeyFile: file }, {}), /not both/);
    writeFileSync(file, '\n');
    assert.throws(() => resolveApiKey({ apiKeyFile: file }, {}), /empty/);
    assert.throws(() => resolveApiKey({ apiKeyFile: join(dir, 'missing') }, {}), /ENOENT/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
