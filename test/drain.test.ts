// SIGTERM to a worker drains it: it stops taking work, finishes the sequences it holds, deregisters
// and exits.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readSse, startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { requireShared } from './support/shared.ts';

let cluster: TestCluster | undefined;
let model: { dir: string; cleanup(): void } | undefined;

after(async () => {
  await cluster?.stop();
  model?.cleanup();
});

function childWithArgs(parent: number, needle: string): number | undefined {
  const pids = spawnSync('pgrep', ['-P', String(parent)], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).map(Number);
  return pids.find((pid) => spawnSync('ps', ['-o', 'args=', '-p', String(pid)], { encoding: 'utf8' }).stdout.includes(needle));
}

test('a decode worker told to stop finishes its running stream, then deregisters and exits', async (t) => {
  if (!requireShared(t, 'models', 'stories260K')) return;
  model = stories260K();
  cluster = await startCluster(model.dir, ['--prefill', '1', '--decode', '1', '--planner', 'off']);
  const decodePid = childWithArgs(cluster.proc.pid!, '--role decode');
  assert.ok(decodePid, 'found the decode worker process');
  const res = await fetch(`${cluster.url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: cluster.modelName, prompt: 'Once upon a time', max_tokens: 400, ignore_eos: true, temperature: 0, stream: true }),
  });
  const reader = res.body!.getReader();
  const first = await reader.read(); // the sequence is running on the decode worker
  process.kill(decodePid!, 'SIGTERM');
  // Draining: the registry shows it, and it refuses new work meanwhile.
  await waitFor(async () => {
    const w = ((await (await fetch(`${cluster!.url}/workers`)).json()) as any).workers as any[];
    return w.some((x) => x.role === 'decode' && x.state === 'draining') ? true : undefined;
  }, 5_000, 'the decode worker to report draining');
  let rest = '';
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    rest += decoder.decode(value);
  }
  const { events, done } = await readSse(new Response(decoder.decode(first.value) + rest));
  assert.ok(done, 'the stream finished with [DONE]');
  const text = events.filter((e) => e.choices?.length).map((e) => e.choices[0].text).join('');
  assert.ok(text.length > 100, 'the whole generation arrived');
  assert.equal(events.filter((e) => e.choices?.[0]?.finish_reason).at(-1).choices[0].finish_reason, 'length');
  await waitFor(async () => (cluster!.output().includes('"worker deregistered"') && cluster!.output().includes('"worker stopped"') ? true : undefined), 10_000, 'the worker to deregister and stop');
});
