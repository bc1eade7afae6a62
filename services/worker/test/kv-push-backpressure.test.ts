// Issue 12 defect 13: a KV push to a decode worker that does not read holds its chunks itself
// (waiting for 'drain') instead of piling every chunk into gRPC's send buffer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bindServer, createGrpcServer, decodeService, grpc, type KvChunkMsg } from '@pdserve/common';
import { GrpcKvPush } from '../src/kv-sinks.ts';

test('GrpcKvPush waits for drain while the receiver is not reading, then delivers everything', async () => {
  let release!: () => void;
  const reading = new Promise<void>((r) => { release = r; });
  let received = 0;
  const server = createGrpcServer();
  server.addService(decodeService(), {
    PushKv(call: grpc.ServerReadableStream<KvChunkMsg, unknown>, cb: grpc.sendUnaryData<unknown>) {
      // Not reading at first: HTTP/2 flow control stops the sender once the window is full.
      void reading.then(() => {
        call.on('data', (c: KvChunkMsg) => { received += c.data.byteLength; });
        call.on('end', () => cb(null, { bytes: received, chunks: 0 }));
      });
    },
  });
  const port = await bindServer(server, '127.0.0.1:0');
  try {
    let ended: ((e?: string) => void) | undefined;
    const done = new Promise<string | undefined>((r) => { ended = r; });
    const push = new GrpcKvPush('bp', `127.0.0.1:${port}`, (e) => ended!(e));
    const data = new Uint8Array(64 * 1024);
    const chunk = (i: number): KvChunkMsg => ({
      request_id: 'bp', first_block: i, block_count: 1, token_count: 16, data, checksums: [0], done: false, first_token: null, block_tokens: 16, block_bytes: data.byteLength,
    });
    const total = 1200; // 75 MiB: well past the 32 MiB HTTP/2 window
    for (let i = 0; i < total; i += 100) push.write(Array.from({ length: 100 }, (_, k) => chunk(i + k)), i + 100 >= total);
    // Let the window fill.
    const call = (push as unknown as { call: { writableLength: number } }).call;
    const deadline = Date.now() + 10_000;
    let previous = -1;
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      if (call.writableLength === previous) break;
      previous = call.writableLength;
    }
    assert.ok(call.writableLength <= 32, `gRPC's send buffer holds ${call.writableLength} chunks while the receiver does not read`);
    release();
    assert.equal(await done, undefined, 'the push completed');
    assert.equal(received, total * data.byteLength);
    assert.equal(push.bytes, total * data.byteLength);
  } finally {
    server.forceShutdown();
  }
});
