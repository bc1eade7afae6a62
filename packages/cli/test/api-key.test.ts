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

test('several API keys: repeated flags, comma lists, one per line in a file, a comma list in the environment', async () => {
  const { resolveApiKeys } = await import('../src/commands/api-key.ts');
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-keys-'));
  try {
    const file = join(dir, 'keys');
    writeFileSync(file, 'sk-a\n# a comment\n\nsk-b, sk-c\n');
    assert.deepEqual(resolveApiKeys({ apiKey: ['sk-1', 'sk-2,sk-3', 'sk-1'] }, {}), ['sk-1', 'sk-2', 'sk-3']);
    assert.deepEqual(resolveApiKeys({ apiKeyFile: file }, {}), ['sk-a', 'sk-b', 'sk-c']);
    assert.deepEqual(resolveApiKeys({}, { PDSERVE_API_KEY: 'sk-x, sk-y' }), ['sk-x', 'sk-y']);
    assert.deepEqual(resolveApiKeys({}, {}), []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the cluster token: flag, file, environment; none without --insecure-cluster is refused', async () => {
  const { clusterSecurityFrom, resolveClusterToken } = await import('../src/commands/cluster-auth.ts');
  const dir = mkdtempSync(join(tmpdir(), 'pdserve-token-'));
  try {
    const file = join(dir, 'token');
    writeFileSync(file, 'tok-file\n');
    assert.equal(resolveClusterToken({ clusterToken: 'tok-flag' }, { PDSERVE_CLUSTER_TOKEN: 'tok-env' }), 'tok-flag');
    assert.equal(resolveClusterToken({ clusterTokenFile: file }, {}), 'tok-file');
    assert.equal(resolveClusterToken({}, { PDSERVE_CLUSTER_TOKEN: 'tok-env' }), 'tok-env');
    assert.equal(resolveClusterToken({}, { PDSERVE_CLUSTER_TOKEN_FILE: file }), 'tok-file');
    assert.throws(() => resolveClusterToken({ clusterToken: 'a', clusterTokenFile: file }, {}), /not both/);
    assert.throws(() => clusterSecurityFrom({}, {}), /no cluster token/);
    assert.equal(clusterSecurityFrom({ insecureCluster: true }, {}).insecure, true);
    assert.equal(clusterSecurityFrom({}, { PDSERVE_INSECURE_CLUSTER: '1' }).token, undefined);
    assert.throws(() => clusterSecurityFrom({ clusterToken: 't', tlsCert: file }, {}), /go together/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
