// KV transfer between real workers (`pdserve up`, real gRPC, real ONNX Runtime): blocks that arrive
// over many prefill chunks continue exactly as one engine would; every wire dtype is decoded into the
// decode worker's fp32 arena (fp16 keeps the golden text); a cancelled transfer frees both sides; a
// block corrupted on the wire is refused by number and the request fails cleanly; a dtype or layout
// the decode worker does not know is refused with a clear error.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { checksumBlocks, Engine, generate } from '../packages/engine/src/index.ts';
import { clusterSecurity, decodeClient, grpc } from '../packages/common/src/index.ts';
import { postJson, startCluster, stories260K, waitFor, type TestCluster } from './support/cluster.ts';
import { sharedPath } from './support/shared.ts';
import { connect } from 'node:net';
import { chunkMeta, encodeHeader } from '../services/worker/src/kv-data/frames.ts';

function haveShared(): boolean {
  if (process.env.CI === 'true') return true;
  try { return readFileSync(sharedPath('golden', 'stories260K.once-upon-a-time.json')).length > 0; } catch { return false; }
}

const LONG = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. One day, she saw a big red ball in the park and';

async function workersOf(c: TestCluster): Promise<any[]> {
  return ((await (await fetch(`${c.url}/workers`)).json()) as any).workers;
}
/** Each worker's live load (/health), not the registry's copy, which lags by a heartbeat. */
async function liveLoads(c: TestCluster): Promise<any[]> {
  return Promise.all((await workersOf(c)).map(async (w) => ({ role: w.role, ...((await (await fetch(w.metrics_url.replace(/metrics$/, 'health'))).json()) as any).load })));
}
async function allFree(c: TestCluster): Promise<void> {
  await waitFor(async () => ((await liveLoads(c)).every((l) => l.running === 0 && l.waiting === 0 && l.free_kv_blocks === l.total_kv_blocks) ? true : undefined),
    10_000, 'every worker to report all KV blocks free');
}
function metric(text: string, name: string, label = ''): number {
  return text.split('\n').filter((l) => (l.startsWith(`${name}{`) || l.startsWith(`${name} `)) && l.includes(label))
    .reduce((s, l) => s + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
}
async function workerMetrics(c: TestCluster, role: string): Promise<string> {
  const w = (await workersOf(c)).find((x) => x.role === role);
  return (await fetch(w.metrics_url)).text();
}

/** The decode worker's KV data channel as its Health answer advertises it. */
async function dataAddress(c: TestCluster): Promise<{ address: string; host: string; port: number }> {
  const decode = (await workersOf(c)).find((w) => w.role === 'decode');
  const client = decodeClient(decode.grpc_address) as grpc.Client & { Health: Function };
  try {
    const health = await new Promise<any>((resolve, reject) => client.Health({}, (err: Error | null, res: any) => (err ? reject(err) : resolve(res))));
    const [host, port] = health.kv_data_address.split(':');
    return { address: health.kv_data_address, host, port: Number(port) };
  } finally {
    client.close();
  }
}

/** Sends `bytes` to a data channel; returns what came back before the connection closed (or `closeAfter` said enough). */
function exchange(to: { host: string; port: number }, bytes: Buffer, closeAfter?: (got: Buffer) => boolean): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const got: Buffer[] = [];
    const s = connect(to, () => s.write(bytes));
    s.on('data', (d) => { got.push(d); if (closeAfter?.(Buffer.concat(got))) s.end(); });
    s.on('error', reject);
    s.on('close', () => resolve(Buffer.concat(got)));
  });
}

/** Whether `b` holds one whole frame (its 16-byte header and the meta it announces). */
const oneFrame = (b: Buffer) => b.byteLength >= 16 && b.byteLength >= 16 + b.readUInt32BE(8);

describe('KV transfer between workers', { skip: !haveShared() && 'no ../shared models' }, () => {
  let model: { dir: string; cleanup(): void };
  let engine: Engine;
  const expected = new Map<string, number[]>();
  let golden: any;

  before(async () => {
    golden = JSON.parse(readFileSync(sharedPath('golden', 'stories260K.once-upon-a-time.json'), 'utf8'));
    model = stories260K();
    engine = await Engine.load(model.dir, { threads: 1, maxSequences: 1 });
    for (const p of [LONG, golden.prompt]) {
      const ids = engine.tokenizer.encode(p);
      expected.set(p, (await generate(engine, ids, { temperature: 0, topK: 0, topP: 1, maxTokens: 30, stopTokenIds: [] })).ids);
    }
  });
  after(() => model?.cleanup());

  describe('fp32, prefill chunks of 1 token (each block of 16 arrives after 16 chunks)', () => {
    let cluster: TestCluster;
    let trace: string;
    before(async () => {
      trace = join(mkdtempSync(join(tmpdir(), 'pdserve-kv-test-')), 'trace.jsonl');
      writeFileSync(trace, '');
      // debug: the decode worker logs each transfer's message count; the trace shows blocks arriving.
      cluster = await startCluster(model.dir, ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote', '--prefill-chunk', '1', '--max-sequences', '4', '--planner', 'off'], 60_000,
        { env: { PDSERVE_LOG_LEVEL: 'debug', PDSERVE_KV_TRACE: trace } });
    });
    after(async () => { await cluster?.stop(); rmSync(dirname(trace), { recursive: true, force: true }); });

    test('the decode worker continues exactly as one engine: same bytes, every checksum verified on arrival', async () => {
      const ids = engine.tokenizer.encode(LONG);
      assert.ok(ids.length > 40, `prompt of ${ids.length} tokens spans 3+ blocks`);
      // A data connection's first chunks go inline until the decode worker's welcome (accepting the
      // shared-memory ring) is in, and on a loaded machine that can be a whole first transfer: one
      // request first opens the connection, so the one measured below finds the ring accepted.
      const warm = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: ids.slice(0, 20), max_tokens: 1, temperature: 0 });
      assert.equal(warm.status, 200, JSON.stringify(warm.json));
      const before = await workerMetrics(cluster, 'prefill');
      const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: ids, max_tokens: 30, temperature: 0, ignore_eos: true });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.choices[0].text, engine.tokenizer.decode(expected.get(LONG)!, ids));
      const afterText = await workerMetrics(cluster, 'prefill');
      // fp32 on the wire: the bytes counted are the fp32 blocks themselves, ratio 1.
      assert.ok(metric(afterText, 'pdserve_kv_transfer_bytes_total', 'wire_dtype="fp32"') > metric(before, 'pdserve_kv_transfer_bytes_total', 'wire_dtype="fp32"'));
      assert.equal(metric(afterText, 'pdserve_kv_transfer_compression_ratio', 'wire_dtype="fp32"'), 1);
      // The blocks came over the TCP data channel (the default transport) in several frames, one per
      // prefill chunk that completed blocks.
      const received = cluster.output().split('\n').filter((l) => l.includes('"KV received"')).map((l) => JSON.parse(l));
      assert.ok(received.some((l) => l.kv_chunks >= 3 && l.via === 'tcp'), `several chunks per transfer over tcp: ${JSON.stringify(received)}`);
      assert.equal(metric(await workerMetrics(cluster, 'decode'), 'pdserve_kv_transfer_failures_total'), 0);
      // Both workers are on this host: the payloads went through the shared-memory ring (the first
      // chunks of a connection may go inline, before the decode worker's welcome is in), and the
      // ring's file was unlinked once the decode worker had it open.
      assert.ok(received.some((l) => l.kv_shm_chunks >= 1), `payloads through shared memory: ${JSON.stringify(received)}`);
      const shm = metric(afterText, 'pdserve_kv_transfer_shm_bytes_total') - metric(before, 'pdserve_kv_transfer_shm_bytes_total');
      assert.ok(shm > 0, 'pdserve_kv_transfer_shm_bytes_total counts them');
      const pids = cluster.output().split('\n').filter((l) => l.startsWith('{"')).map((l) => { try { return JSON.parse(l).pid as number; } catch { return 0; } });
      assert.deepEqual(readdirSync('/dev/shm').filter((n) => n.startsWith('pdserve-kv-') && pids.includes(Number(n.split('-')[2]))), []);
    });

    test('a transfer cancelled while the prompt is still being prefilled frees the blocks on both workers', async (t) => {
      const id = `kv-cancel-${Date.now()}`;
      const controller = new AbortController();
      // 480 tokens in chunks of 1: 480 prefill passes, a block pushed after every 16th.
      const prompt = Array.from({ length: 480 }, (_, i) => 5 + ((i * 37) % 500));
      const req = fetch(`${cluster.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': id }, signal: controller.signal,
        body: JSON.stringify({ model: cluster.modelName, prompt, max_tokens: 20, temperature: 0, stream: true, ignore_eos: true }),
      }).catch(() => undefined);
      // Cancel as soon as the decode worker has received some of the sequence's blocks.
      const arrived = () => readFileSync(trace, 'utf8').split('\n').some((l) => l.includes(`"request_id":"${id}#`) && l.includes('"stage":"d.data"'));
      for (const deadline = Date.now() + 10_000; !arrived();) {
        assert.ok(Date.now() < deadline, 'KV blocks of the request reached the decode worker');
        await new Promise((r) => setTimeout(r, 2));
      }
      controller.abort();
      await req;
      await allFree(cluster);
      await new Promise((r) => setTimeout(r, 200));
      assert.ok(!cluster.output().split('\n').some((l) => l.includes(id) && l.includes('decode finished')), 'the generation never ran to its end');
      // Where the cancel landed (mid-push, or just after the last block) depends on timing; either way
      // nothing is left held and the generation did not run.
      const ended = readFileSync(trace, 'utf8').split('\n').some((l) => l.includes(`"request_id":"${id}#`) && l.includes('"stage":"d.end"'));
      t.diagnostic(ended ? 'the cancel landed after the last block' : 'the cancel cut the push off');
      // And the cluster keeps serving.
      const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: 'Sam', max_tokens: 4, temperature: 0 });
      assert.equal(r.status, 200);
    });

    test('garbage sent to the decode worker\'s KV data port closes that connection only; the worker keeps serving', async () => {
      const channel = await dataAddress(cluster);
      assert.match(channel.address, /^127\.0\.0\.1:\d+$/, 'the decode worker advertises its data channel in Health');
      const send = (bytes: Buffer, closeAfter?: (got: Buffer) => boolean) => exchange(channel, bytes, closeAfter);
      // Not a frame at all; then a frame that claims a 4 GiB payload (refused before any allocation);
      // then a chunk frame whose meta is not JSON.
      assert.equal((await send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(50)))).byteLength, 0);
      const huge = encodeHeader('chunk', { r: 'x' }, 0);
      huge.writeUInt32BE(0xffffffff, 12);
      assert.equal((await send(huge)).byteLength, 0);
      const bad = Buffer.concat([encodeHeader('chunk', {}, 0).subarray(0, 16), Buffer.from('{{')]);
      bad.writeUInt32BE(2, 8);
      assert.equal((await send(bad)).byteLength, 0);
      // A connection must open with a hello carrying the cluster token: a chunk first, no token or
      // another token closes it unanswered, and the refusals are counted with the gRPC ones.
      const meta = { r: 'nobody', fb: 0, bc: 1, tc: 1, cs: [0], d: false, ft: null, bt: 16, bb: 16, l: 'pdserve-kv/1', w: 'fp32', c: 0 };
      const chunk = Buffer.concat([encodeHeader('chunk', meta, 16), Buffer.alloc(16)]);
      const token = clusterSecurity().token;
      assert.ok(token, 'the test cluster has a token');
      const refusedBefore = metric(await workerMetrics(cluster, 'decode'), 'pdserve_auth_failures_total', 'service="kv_data"');
      assert.equal((await send(chunk)).byteLength, 0, 'a chunk before the hello');
      assert.equal((await send(Buffer.concat([encodeHeader('hello', {}, 0), chunk]))).byteLength, 0, 'no token');
      assert.equal((await send(Buffer.concat([encodeHeader('hello', { t: `${token}x` }, 0), chunk]))).byteLength, 0, 'a wrong token');
      assert.equal(metric(await workerMetrics(cluster, 'decode'), 'pdserve_auth_failures_total', 'service="kv_data"') - refusedBefore, 2);
      // After the hello, a well-formed chunk for a request nobody reserved is refused by an ack
      // naming why, and the connection stays usable.
      const reply = await send(Buffer.concat([encodeHeader('hello', { t: token }, 0), chunk]), oneFrame);
      assert.match(reply.subarray(16).toString(), /"r":"nobody","e":".*(not supported|mismatch|no sequence)/);
      // A hello offering a "shared-memory ring" that is not one (outside /dev/shm, a name that is
      // not a ring's, a nonce that does not match) is answered with a welcome that declines it; a
      // chunk that then points into a ring closes the connection.
      const declined = async (shm: unknown) => {
        const b = await send(Buffer.concat([encodeHeader('hello', { t: token, shm }, 0)]), oneFrame);
        return JSON.parse(b.subarray(16, 16 + b.readUInt32BE(8)).toString());
      };
      assert.match((await declined({ p: '/etc/passwd', n: '0'.repeat(32), b: 4096 })).e, /not a pdserve shared-memory ring path/);
      assert.match((await declined({ p: '/dev/shm/pdserve-kv-1-0000000000000000', n: '0'.repeat(32), b: 4096 })).e, /not usable here/);
      assert.match((await declined({ p: '/dev/shm/x', n: 'zz', b: -1 })).e, /out of range|not a pdserve/);
      const byRef = encodeHeader('chunk', { ...meta, s: [0, 16] }, 0);
      assert.equal((await send(Buffer.concat([encodeHeader('hello', { t: token }, 0), byRef]))).byteLength, 0, 'a chunk by reference without a ring');
      // The worker is still up and serving.
      const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: 'Sam', max_tokens: 4, temperature: 0 });
      assert.equal(r.status, 200, JSON.stringify(r.json));
    });

    test('a chunk over the data channel whose checksums match but whose padding holds a NaN is refused by block (the scan in the receive pool); the worker decodes as before', async () => {
      const decode = (await workersOf(cluster)).find((w) => w.role === 'decode');
      const client = decodeClient(decode.grpc_address) as grpc.Client & { Generate: Function };
      try {
        const rid = `kv-nan-${Date.now()}`;
        // prompt_len 20: block 1 holds positions 16..19, then padding; the NaN goes in its last float.
        const call = client.Generate({ request_id: rid, prompt_len: 20, kv_timeout_ms: 10_000, sampling: { temperature: 0, max_tokens: 4, seed: 1, top_p: 1 } });
        const ended = new Promise<grpc.ServiceError | null>((resolve) => { call.on('error', resolve); call.on('end', () => resolve(null)); call.on('data', () => {}); });
        await new Promise<void>((resolve) => call.once('data', () => resolve()));
        const blockBytes = (engine.runner as unknown as { blockBytes: number }).blockBytes;
        const data = new Uint8Array(2 * blockBytes);
        new DataView(data.buffer).setFloat32(data.byteLength - 4, NaN, true);
        const meta = chunkMeta({
          request_id: rid, first_block: 0, block_count: 2, token_count: 20, data, checksums: checksumBlocks(data, blockBytes), done: true,
          first_token: { id: 5, logprob: 0, top_logprobs: [] }, block_tokens: 16, block_bytes: blockBytes, layout: 'pdserve-kv/1', wire_dtype: 'fp32', cached_tokens: 0,
        } as never);
        const frames = Buffer.concat([encodeHeader('hello', { t: clusterSecurity().token }, 0), encodeHeader('chunk', meta, data.byteLength), Buffer.from(data)]);
        const reply = await exchange(await dataAddress(cluster), frames, oneFrame);
        assert.match(reply.subarray(16, 16 + reply.readUInt32BE(8)).toString(), /KV block 1 holds a NaN or infinite value/);
        const err = await ended;
        assert.equal(err?.code, grpc.status.INVALID_ARGUMENT, err?.details);
        await allFree(cluster);
        // The freed slot holds no poison: the next request decodes exactly as one engine.
        const ids = engine.tokenizer.encode(LONG);
        const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: ids, max_tokens: 30, temperature: 0, ignore_eos: true });
        assert.equal(r.status, 200, JSON.stringify(r.json));
        assert.equal(r.json.choices[0].text, engine.tokenizer.decode(expected.get(LONG)!, ids));
      } finally {
        client.close();
      }
    });

    test('a decode worker refuses a wire dtype or layout it does not know, with a clear error', async () => {
      const decode = (await workersOf(cluster)).find((w) => w.role === 'decode');
      const client = decodeClient(decode.grpc_address) as grpc.Client & { PushKv: Function };
      try {
        const push = (fields: Record<string, unknown>) => new Promise<grpc.ServiceError>((resolve) => {
          const call = client.PushKv((err: grpc.ServiceError | null) => resolve(err!));
          call.write({ request_id: 'nobody', first_block: 0, block_count: 1, token_count: 1, data: new Uint8Array(16), checksums: [0], block_tokens: 16, block_bytes: 16, ...fields });
          call.end();
        });
        const dtype = await push({ wire_dtype: 'fp8', layout: 'pdserve-kv/1' });
        assert.equal(dtype.code, grpc.status.FAILED_PRECONDITION);
        assert.match(dtype.details, /KV wire dtype "fp8" is not supported here \(this worker reads fp32, fp16, bf16, int8\)/);
        const layout = await push({ wire_dtype: 'fp32', layout: 'pdserve-kv/2' });
        assert.equal(layout.code, grpc.status.FAILED_PRECONDITION);
        assert.match(layout.details, /KV layout "pdserve-kv\/2" is not supported here \(this worker reads pdserve-kv\/1\)/);
        assert.ok(metric(await workerMetrics(cluster, 'decode'), 'pdserve_kv_transfer_failures_total', 'reason="rejected"') >= 2);
      } finally {
        client.close();
      }
    });
  });

  // One cluster for both: the wire dtype (encoded by the prefill worker, decoded into the decode
  // worker's fp32 arena) and the transport that carries the bytes are independent; fp32 over the
  // TCP data channel is the first cluster above, int8 over it the last.
  describe('fp16 on the wire over --kv-transport grpc (Decode.PushKv), prefill chunks of 16', () => {
    let cluster: TestCluster;
    before(async () => {
      cluster = await startCluster(model.dir, ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote', '--kv-transport', 'grpc', '--kv-wire-dtype', 'fp16', '--prefill-chunk', '16', '--planner', 'off'], 60_000,
        { env: { PDSERVE_LOG_LEVEL: 'debug' } });
    });
    after(async () => cluster?.stop());

    test('halves the bytes and keeps the greedy text of the golden prompt and a long one (as one engine); the blocks went over gRPC', async () => {
      for (const p of [golden.prompt, LONG]) {
        const ids = engine.tokenizer.encode(p);
        const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: ids, max_tokens: 30, temperature: 0, ignore_eos: true });
        assert.equal(r.status, 200, JSON.stringify(r.json));
        assert.equal(r.json.choices[0].text, engine.tokenizer.decode(expected.get(p)!, ids), p);
      }
      const received = cluster.output().split('\n').filter((l) => l.includes('"KV received"')).map((l) => JSON.parse(l));
      assert.ok(received.length >= 2 && received.every((l) => l.via === undefined), `PushKv received every transfer: ${JSON.stringify(received)}`);
      const text = await workerMetrics(cluster, 'prefill');
      assert.equal(metric(text, 'pdserve_kv_transfer_compression_ratio', 'wire_dtype="fp16"'), 2);
      assert.ok(metric(text, 'pdserve_kv_transfer_bytes_total', 'wire_dtype="fp16"') > 0);
      assert.equal(metric(text, 'pdserve_kv_transfer_bytes_total', 'wire_dtype="fp32"'), 0);
    });
  });

  describe('int8 on the wire, with a prefill worker that corrupts block 1 of every transfer', () => {
    let cluster: TestCluster;
    before(async () => {
      cluster = await startCluster(model.dir, ['--prefill', '1', '--decode', '1', '--prefill-placement', 'remote', '--kv-wire-dtype', 'int8', '--planner', 'off'], 60_000, { env: { PDSERVE_TEST_CORRUPT_KV_BLOCK: '1' } });
    });
    after(async () => cluster?.stop());

    test('the corrupted block is refused by number, both workers free its blocks, and the request is migrated off the sender: the text of one engine', async () => {
      const id = `kv-corrupt-${Date.now()}`;
      const ids = engine.tokenizer.encode(LONG); // > 16 tokens: has a block 1
      const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: ids, max_tokens: 10, temperature: 0, ignore_eos: true }, { 'x-request-id': id });
      const lines = () => cluster.output().split('\n').filter((l) => l.includes(id));
      // On failure, show what the cluster logged for this request (placement, the push, the refusal).
      assert.equal(r.status, 200, `${JSON.stringify(r.json)}; cluster log for ${id}:\n${lines().join('\n')}`);
      // The corrupt transfer is the prefill worker's fault (DATA_LOSS blames the sender): the second
      // attempt prefilled on the decode worker, and greedy output is exactly one engine's.
      assert.equal(r.json.choices[0].text, engine.tokenizer.decode(expected.get(LONG)!.slice(0, 10), ids));
      await allFree(cluster);
      assert.ok(lines().some((l) => l.includes('KV block 1 failed its checksum')), 'the decode worker names the block');
      const migration = lines().map((l) => JSON.parse(l)).find((l) => l.msg === 'worker failed mid-request; migrating it to other workers');
      assert.equal(migration?.reason, 'prefill_failed', JSON.stringify(migration));
      assert.equal(metric(await workerMetrics(cluster, 'decode'), 'pdserve_kv_transfer_failures_total', 'reason="checksum"'), 1);
      assert.equal(metric(await (await fetch(`${cluster.url}/metrics`)).text(), 'pdserve_request_migrations_total', 'reason="prefill_failed"'), 1);
    });

    test('a prompt of one block (block 1 never sent) goes through int8 and decodes', async () => {
      const ids = engine.tokenizer.encode('Sam went');
      assert.ok(ids.length <= 16);
      const r = await postJson(`${cluster.url}/v1/completions`, { model: cluster.modelName, prompt: ids, max_tokens: 10, temperature: 0, ignore_eos: true });
      assert.equal(r.status, 200, JSON.stringify(r.json));
      assert.equal(r.json.usage.completion_tokens, 10);
      // A float32 scale per row of head_dim int8 values: 4*D / (D + 4) (8 for stories260K: 2.67).
      const D = JSON.parse(readFileSync(join(model.dir, 'config.json'), 'utf8')).head_dim as number;
      const ratio = metric(await workerMetrics(cluster, 'prefill'), 'pdserve_kv_transfer_compression_ratio', 'wire_dtype="int8"');
      assert.ok(Math.abs(ratio - (4 * D) / (D + 4)) < 1e-9, `int8 ratio ${ratio} with head_dim ${D}`);
    });
  });
});
