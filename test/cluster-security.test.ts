// Internal authentication end to end, through real processes: the cluster token on every worker
// gRPC call (refused and counted without it, the worker keeps serving), the start-up policy (no
// token and no --insecure-cluster: exit 2), a Redis ACL user with a password, several public API
// keys, no secret on any child's command line, and a mutual-TLS cluster (router -> worker and
// prefill -> decode over TLS).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  decodeService, grpc, startRedisServer, tokenClientInterceptor, type RedisServerHandle,
} from '../packages/common/src/index.ts';
import { postJson, startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { repoRoot } from './support/shared.ts';
import { assertAlive, needStories260K, startWorkerProc, type WorkerProc } from '../services/worker/test/support/workers.ts';

const DecodeCtor = grpc.makeGenericClientConstructor(decodeService(), 'pdserve.v1.Decode');

/** Health over a client with the given credentials; resolves with the status code. */
function health(address: string, creds: grpc.ChannelCredentials, options: grpc.ClientOptions = {}): Promise<grpc.status> {
  const client = new DecodeCtor(address, creds, options) as unknown as grpc.Client & { Health: Function };
  return new Promise((resolve) => {
    client.Health({}, { deadline: Date.now() + 10_000 }, (err: grpc.ServiceError | null) => {
      client.close();
      resolve(err ? err.code : grpc.status.OK);
    });
  });
}

function counterValue(metrics: string, name: string, label: string): number {
  const line = metrics.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(label));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

/** Every descendant of `pid` (from /proc), with its argv and environment-free command line. */
function descendants(pid: number): Array<{ pid: number; argv: string[] }> {
  const parentOf = new Map<number, number>();
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      parentOf.set(Number(d), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch { /* gone */ }
  }
  const out: Array<{ pid: number; argv: string[] }> = [];
  const walk = (p: number) => {
    for (const [child, parent] of parentOf) {
      if (parent !== p) continue;
      try { out.push({ pid: child, argv: readFileSync(`/proc/${child}/cmdline`, 'utf8').split('\0') }); } catch { /* gone */ }
      walk(child);
    }
  };
  walk(pid);
  return out;
}

describe('cluster token on worker gRPC', () => {
  let redis: RedisServerHandle | undefined;
  let model: { dir: string; cleanup(): void } | undefined;
  let worker: WorkerProc | undefined;

  before(async () => {
    redis = await startRedisServer();
    model = stories260K();
    worker = await startWorkerProc(model.dir, redis.url, 'unified');
  });
  after(async () => {
    await worker?.stop();
    await redis?.stop();
    model?.cleanup();
  });

  test('a call without the token or with a wrong one is refused (UNAUTHENTICATED) and counted; the worker keeps serving', async (t) => {
    if (!needStories260K(t)) return;
    const w = worker!;
    const insecure = grpc.credentials.createInsecure();
    assert.equal(await health(w.address, insecure), grpc.status.UNAUTHENTICATED);
    assert.equal(await health(w.address, insecure, { interceptors: [tokenClientInterceptor('not-the-token')] }), grpc.status.UNAUTHENTICATED);
    // Same length as the real token, one character off: still refused.
    const real = process.env.PDSERVE_CLUSTER_TOKEN!;
    const near = real.slice(0, -1) + (real.endsWith('a') ? 'b' : 'a');
    assert.equal(await health(w.address, insecure, { interceptors: [tokenClientInterceptor(near)] }), grpc.status.UNAUTHENTICATED);
    // Streaming calls too: a KV push (client stream) and a decode stream (server stream).
    const bare = new DecodeCtor(w.address, insecure) as unknown as grpc.Client & Record<string, Function>;
    const pushEnd = await new Promise<grpc.status>((resolve) => {
      const call = bare.PushKv((err: grpc.ServiceError | null) => resolve(err ? err.code : grpc.status.OK)) as grpc.ClientWritableStream<unknown>;
      call.write({ request_id: 'x', first_block: 0, block_count: 0, token_count: 0, data: Buffer.alloc(0), checksums: [], done: true, block_tokens: 16, block_bytes: 0 });
      call.end();
    });
    assert.equal(pushEnd, grpc.status.UNAUTHENTICATED);
    const genEnd = await new Promise<grpc.status>((resolve) => {
      const call = bare.Generate({ request_id: 'y', prompt_len: 5 }, { deadline: Date.now() + 10_000 }) as grpc.ClientReadableStream<unknown>;
      call.on('data', () => {});
      call.on('error', () => {});
      call.on('status', (st: grpc.StatusObject) => resolve(st.code));
    });
    assert.equal(genEnd, grpc.status.UNAUTHENTICATED);
    bare.close();
    // The right token passes.
    assert.equal(await health(w.address, insecure, { interceptors: [tokenClientInterceptor(real)] }), grpc.status.OK);
    const text = await (await fetch(w.metricsUrl)).text();
    assert.equal(counterValue(text, 'pdserve_auth_failures_total', 'service="decode"'), 5, text.split('\n').filter((l) => l.includes('auth')).join('\n'));
    assert.match(w.output(), /gRPC call refused: cluster token/);
    assert.ok(!w.output().includes(real), 'the token is never logged');
    await assertAlive(w);
  });

  test('a worker or router with no token and no --insecure-cluster exits 2 before serving', async () => {
    // Both at once: each is a node start and a check before anything listens.
    const cmds = [['worker', '--role', 'unified', '--model', '/nonexistent', '--redis-url', 'redis://127.0.0.1:1'], ['router', '--model', '/nonexistent', '--redis-url', 'redis://127.0.0.1:1']];
    const runs = await Promise.all(cmds.map((cmd) => new Promise<{ status: number | null; stderr: string }>((resolve, reject) => {
      const p = spawn(process.execPath, ['--import', 'tsx', join(repoRoot, 'packages/cli/src/main.ts'), ...cmd], {
        cwd: repoRoot, stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000, env: { ...process.env, PDSERVE_CLUSTER_TOKEN: '' },
      });
      let stderr = '';
      p.stderr!.on('data', (d) => { stderr += d; });
      p.on('error', reject);
      p.on('close', (status) => resolve({ status, stderr }));
    })));
    runs.forEach((r, i) => {
      assert.equal(r.status, 2, `${cmds[i]![0]}: ${r.stderr}`);
      assert.match(r.stderr, /no cluster token: .*--insecure-cluster/);
    });
  });
});

describe('pdserve up with a Redis ACL user and several API keys', () => {
  let redis: RedisServerHandle | undefined;
  let model: { dir: string; cleanup(): void } | undefined;
  let cluster: TestCluster | undefined;
  const PASSWORD = 'r3dis-s3cret-pw';

  before(async () => {
    redis = await startRedisServer();
    // An ACL user with a password; the default user is switched off, so nothing gets in without it.
    const cli = (...args: string[]) => execFileSync('redis-cli', ['-p', String(redis!.port), ...args], { encoding: 'utf8' });
    assert.match(cli('ACL', 'SETUSER', 'pdserve', 'on', `>${PASSWORD}`, '~*', '&*', '+@all'), /OK/);
    assert.match(cli('ACL', 'SETUSER', 'default', 'off'), /OK/);
    model = stories260K();
    cluster = await startCluster(model.dir, ['--unified', '1', '--planner', 'off'], 90_000, {
      env: { PDSERVE_REDIS_URL: `redis://pdserve:${PASSWORD}@127.0.0.1:${redis.port}`, PDSERVE_API_KEY: 'key-one, key-two' },
    });
  });
  after(async () => {
    await cluster?.stop();
    await redis?.stop();
    model?.cleanup();
  });

  test('requests with either key are served through the ACL-protected registry; a third key is refused', async (t) => {
    if (!needStories260K(t)) return;
    const c = cluster!;
    const body = { model: c.modelName, prompt: 'Once upon a time', max_tokens: 4, temperature: 0 };
    for (const key of ['key-one', 'key-two']) {
      const r = await postJson(`${c.url}/v1/completions`, body, { authorization: `Bearer ${key}` });
      assert.equal(r.status, 200, JSON.stringify(r.json));
    }
    assert.equal((await postJson(`${c.url}/v1/completions`, body, { authorization: 'Bearer key-three' })).status, 401);
    assert.equal((await postJson(`${c.url}/v1/completions`, body)).status, 401);
  });

  test('neither the Redis password nor the cluster token is on any child command line', () => {
    const kids = descendants(cluster!.proc.pid!);
    assert.ok(kids.some((k) => k.argv.includes('worker')) && kids.some((k) => k.argv.includes('router')), JSON.stringify(kids));
    for (const k of kids) {
      const line = k.argv.join(' ');
      assert.ok(!line.includes(PASSWORD), `password in argv of ${k.pid}: ${line}`);
      assert.ok(!line.includes(process.env.PDSERVE_CLUSTER_TOKEN!), `token in argv of ${k.pid}: ${line}`);
    }
  });
});

describe('mutual TLS between router and workers', () => {
  let dir: string | undefined;
  let model: { dir: string; cleanup(): void } | undefined;
  let cluster: TestCluster | undefined;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'pdserve-tls-'));
    const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    ssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=pdserve-test-ca');
    ssl('req', ...ec, '-keyout', 'node.key', '-out', 'node.csr', '-subj', '/CN=localhost');
    writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
    ssl('x509', '-req', '-in', 'node.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'node.pem', '-days', '2', '-extfile', 'ext.cnf');
    model = stories260K();
    cluster = await startCluster(model.dir, [
      '--prefill', '1', '--decode', '1', '--prefill-placement', 'remote', '--planner', 'off',
      '--tls-cert', join(dir, 'node.pem'), '--tls-key', join(dir, 'node.key'), '--tls-ca', join(dir, 'ca.pem'),
    ], 90_000);
  });
  after(async () => {
    await cluster?.stop();
    model?.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('a request is served (router -> prefill -> decode over mTLS); plaintext and certificate-less clients are refused', async (t) => {
    if (!needStories260K(t)) return;
    const c = cluster!;
    const r = await postJson(`${c.url}/v1/completions`, { model: c.modelName, prompt: 'Once upon a time', max_tokens: 6, temperature: 0 });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.ok(r.json.choices[0].text.length > 0);
    const address = await waitFor(async () => /"grpc":"([^"]+)"/.exec(c.output())?.[1], 10_000, 'a worker address in the log');
    const token = { interceptors: [tokenClientInterceptor(process.env.PDSERVE_CLUSTER_TOKEN!)] };
    const ca = readFileSync(join(dir!, 'ca.pem'));
    assert.notEqual(await health(address, grpc.credentials.createInsecure(), token), grpc.status.OK, 'plaintext refused');
    assert.notEqual(await health(address, grpc.credentials.createSsl(ca), token), grpc.status.OK, 'TLS without a client certificate refused');
    const mtls = grpc.credentials.createSsl(ca, readFileSync(join(dir!, 'node.key')), readFileSync(join(dir!, 'node.pem')));
    assert.equal(await health(address, mtls, token), grpc.status.OK);
  });
});
