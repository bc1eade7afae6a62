// startRedisServer / freePort against the real redis-server binary.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { freePort } from '../src/process/free-port.ts';
import { ping, startRedisServer } from '../src/redis/redis-server.ts';
import { killQuietly, pidAlive, waitFor } from './fixtures/util.ts';

const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));

describe('startRedisServer', () => {
  const leftovers: number[] = [];
  after(() => {
    for (const pid of leftovers) killQuietly(pid);
  });

  test('freePort returns a bindable port', async () => {
    const port = await freePort();
    assert.ok(Number.isInteger(port) && port > 0 && port < 65536);
  });

  test('starts on a free port, answers PING, stops and cleans up its temp dir', async () => {
    const server = await startRedisServer();
    leftovers.push(server.pid);
    assert.equal(server.url, `redis://127.0.0.1:${server.port}`);
    assert.equal(await ping(server.port), true);
    assert.ok(existsSync(server.dir));
    await server.stop();
    assert.equal(pidAlive(server.pid), false);
    assert.equal(await ping(server.port, 200), false);
    assert.equal(existsSync(server.dir), false);
    await server.stop(); // idempotent
  });

  test('an explicit port that is taken fails with the server output', async () => {
    const first = await startRedisServer();
    leftovers.push(first.pid);
    try {
      await assert.rejects(startRedisServer({ port: first.port }), /exited during startup[\s\S]*(in use|bind)/i);
    } finally {
      await first.stop();
    }
  });

  test('a missing binary gives install instructions', async () => {
    await assert.rejects(startRedisServer({ bin: 'no-such-redis-server-binary' }), (err: Error) => {
      assert.match(err.message, /apt-get install redis-server/);
      assert.match(err.message, /--redis-url/);
      return true;
    });
  });

  test('redis-server dies with its parent even when the parent is SIGKILLed', async () => {
    const parent = spawn(process.execPath, ['--import', 'tsx', 'packages/common/test/fixtures/redis-parent.ts'], {
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    leftovers.push(parent.pid!);
    let text = '';
    parent.stdout!.setEncoding('utf8');
    parent.stdout!.on('data', (c: string) => (text += c));
    const [pid, port] = await waitFor('redis ready in parent', () => {
      const m = /redis-ready (\d+) (\d+)/.exec(text);
      return m ? [Number(m[1]), Number(m[2])] : undefined;
    }, 8000);
    leftovers.push(pid!);
    assert.equal(await ping(port!), true);
    parent.kill('SIGKILL');
    await waitFor('orphaned redis-server gone', () => !pidAlive(pid!), 3000);
  });
});
