// The worker's scheduler on its own (issue 14 item 2): continuous batching, the KV slot bound and
// the reservation queue, stop rules, KV chunks as the scheduler applies them, cancel racing the last
// step, and the loop's wake-up. A fake engine (support/scheduler-harness.ts) stands in for ONNX
// Runtime; gated decode steps let each test decide what happens between two steps.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { KvChecksumError } from '../../../packages/engine/src/index.ts';
import { DECODE_STEP_WINDOW_MS, QueueFullError } from '../src/scheduler.ts';
import { RequestFailure } from '../src/requests.ts';
import { BLOCK_BYTES, EOS, harness, kvChunk, until, type Harness } from './support/scheduler-harness.ts';

let h: Harness | undefined;
afterEach(async () => {
  if (h) {
    h.engine.ungate();
    await h.stop();
  }
  h = undefined;
});

function make(...args: Parameters<typeof harness>): Harness {
  h = harness(...args);
  return h;
}

// ---- continuous batching ----

test('a request joins the running batch between two steps, and one that finishes leaves it', async () => {
  const { engine, decode } = make();
  engine.gated = true;
  const a = decode('a', { ready: true, sampling: { max_tokens: 3 } });
  await engine.stepWaiting();
  assert.deepEqual(engine.steps, [['a']]);
  const b = decode('b', { ready: true, sampling: { max_tokens: 5 } });
  engine.step();
  await engine.stepWaiting();
  assert.deepEqual(engine.steps, [['a'], ['a', 'b']], 'b joined at the next step, not the one in flight');
  engine.step();
  await a.out.ended;
  assert.deepEqual(a.out.finished, { reason: 'length', stopTokenId: undefined });
  assert.equal(a.out.tokens.length, 3, 'the first token counts towards max_tokens');
  await engine.stepWaiting();
  assert.deepEqual(engine.steps.at(-1), ['b'], 'a left the batch as it finished');
  engine.gated = false;
  engine.step();
  await b.out.ended;
  assert.equal(b.out.tokens.length, 5);
  assert.deepEqual(engine.steps.map((s) => s.length), [1, 2, 1, 1, 1], 'a: first token + 2 steps; b: first token + 4 steps');
});

test('local prompts queued behind a running batch: one decode step runs between two prompts, not after the queue', async () => {
  // A unified worker under a burst: every local prompt that completes makes its request ready. The
  // running batch must still step after each prompt (and the new request joins it), or it waits
  // for the whole queue: measured before the fix, a 9 req/s burst held running requests 4-6 s
  // between their first and second token.
  const { engine, local, decode } = make({ maxSequences: 8, prefillChunk: 8 });
  engine.gated = true;
  const a = decode('a', { ready: true, sampling: { max_tokens: 50 } });
  await engine.stepWaiting(); // a is decoding; the prompts below queue behind its step
  const [b, c, d] = ['b', 'c', 'd'].map((id) => local(id, 6, { max_tokens: 50 }));
  engine.ungate();
  await until(() => engine.steps.length >= 6, 'six decode steps');
  assert.deepEqual(engine.passes.slice(0, 7), ['step:a', 'prefill:b', 'step:a,b', 'prefill:c', 'step:a,b,c', 'prefill:d', 'step:a,b,c,d']);
  for (const r of [b, c, d]) assert.equal(r.out.tokens[0], 10, 'the first token, from its prefill, went out as it joined');
  assert.equal(a.out.ends, 0);
});

test('decodeStepMean: the mean step time and batch of the decode steps of the last 10 s', async () => {
  const { sched, decode } = make();
  assert.equal(sched.decodeStepMean(), undefined, 'no step yet');
  const a = decode('a', { ready: true, sampling: { max_tokens: 3 } });
  const b = decode('b', { ready: true, sampling: { max_tokens: 4 } });
  await Promise.all([a.out.ended, b.out.ended]);
  const steps = sched.recentDecodeSteps;
  assert.ok(steps.length >= 2);
  const mean = sched.decodeStepMean()!;
  assert.ok(Math.abs(mean.batch - steps.reduce((n, x) => n + x.batch, 0) / steps.length) < 1e-9);
  assert.ok(Math.abs(mean.ms - steps.reduce((n, x) => n + x.ms, 0) / steps.length) < 1e-9);
  assert.equal(sched.decodeStepMean(performance.now() + DECODE_STEP_WINDOW_MS + 1), undefined, 'steps older than the window drop out');
});

test('the first token goes out when a request joins, before any forward pass of it', async () => {
  const { engine, decode } = make();
  engine.gated = true;
  const a = decode('a', { ready: true, firstToken: 7, sampling: { max_tokens: 2 } });
  await engine.stepWaiting();
  assert.deepEqual(a.out.tokens, [7]);
  assert.ok(a.out.firstAdmitMs !== undefined && a.out.firstAdmitMs >= 0);
  engine.step();
  await a.out.ended;
  assert.deepEqual(a.out.tokens, [7, 10]);
});

test('a paused request sits out decode steps and rejoins when resumed', async () => {
  const { engine, sched, decode } = make();
  engine.gated = true;
  decode('a', { ready: true, sampling: { max_tokens: 50 } });
  const b = decode('b', { ready: true, sampling: { max_tokens: 50 } });
  await engine.stepWaiting();
  sched.pauseDecode('b', true);
  engine.step();
  await engine.stepWaiting();
  assert.deepEqual(engine.steps.at(-1), ['a']);
  sched.pauseDecode('b', false);
  engine.step();
  await engine.stepWaiting();
  assert.deepEqual(engine.steps.at(-1), ['a', 'b']);
  assert.equal(b.out.ends, 0);
});

// ---- the KV slot bound and the reservation queue ----

test('with every KV slot held a reservation waits, and gets the first slot that frees', async () => {
  const { engine, sched, decode } = make({ maxSequences: 2 });
  engine.gated = true;
  const a = decode('a', { ready: true, sampling: { max_tokens: 2 } });
  decode('b', { ready: true, sampling: { max_tokens: 50 } });
  assert.equal(engine.freeSlots, 0);
  let got: string | undefined;
  const waiting = sched.reserve('c').then((seq) => { got = seq.id; return seq; });
  assert.ok(sched.hasDecodeOrWaiter('c'));
  await engine.stepWaiting();
  assert.equal(got, undefined, 'no slot yet');
  engine.step();
  await a.out.ended;
  const seq = await waiting;
  assert.equal(seq.id, 'c');
  assert.equal(sched.waitingCount, 0);
  assert.equal(engine.freeSlots, 0, 'a\'s slot went straight to c');
});

test('reservations beyond the queue bound are refused at once with QueueFullError', async () => {
  const { sched, decode } = make({ maxSequences: 1 }, { maxReserveQueue: 1 });
  decode('a', { ready: false });
  const first = sched.reserve('b');
  first.catch(() => {});
  await assert.rejects(sched.reserve('c'), (e: Error) => e instanceof QueueFullError && /1 requests already waiting/.test(e.message));
  assert.equal(sched.waitingCount, 1 + 1, 'b still waits (plus a, waiting for its KV)');
  assert.ok(sched.cancelReservation('b'));
  await assert.rejects(first, /cancelled/);
});

test('a reservation that waits past reserveTimeoutMs is refused and leaves the queue', async () => {
  const { sched, decode } = make({ maxSequences: 1 }, { reserveTimeoutMs: 30 });
  decode('a', { ready: false });
  await assert.rejects(sched.reserve('b'), (e: Error) => e instanceof QueueFullError && /no KV room freed within 30 ms/.test(e.message));
  assert.equal(sched.hasDecodeOrWaiter('b'), false);
  assert.equal(sched.waitingCount, 1, 'only a (waiting for its KV) is left');
});

test('a cancelled reservation is skipped: the freed slot goes to the next waiter', async () => {
  const { engine, sched, decode } = make({ maxSequences: 1 }, { maxReserveQueue: 4 });
  const a = decode('a', { ready: true, sampling: { max_tokens: 2 } });
  engine.gated = true;
  const b = sched.reserve('b');
  const c = sched.reserve('c');
  assert.ok(sched.cancelReservation('b'));
  await assert.rejects(b, /cancelled/);
  await engine.stepWaiting();
  engine.step();
  await a.out.ended;
  assert.equal((await c).id, 'c');
});

test('a prefill queue at its bound refuses the next prompt with QueueFullError', async () => {
  const { prefill, engine } = make({ maxSequences: 0 }, { maxPrefillQueue: 2 });
  prefill('p1', 8);
  prefill('p2', 8);
  assert.throws(() => prefill('p3', 8), (e: Error) => e instanceof QueueFullError && /prefill queue full \(2 prompts waiting\)/.test(e.message));
  assert.equal(engine.prefills.length, 0, 'no slot: nothing ran');
});

// ---- prefill ----

test('a multi-chunk prompt streams its full blocks after each chunk and the rest with the first token', async () => {
  const { engine, prefill } = make({ prefillChunk: 8 });
  const p = prefill('p', 22); // chunks of 8, 8, 6; blocks of 4 tokens
  const r = await p.result;
  assert.deepEqual(engine.prefills.map((f) => f.map((x) => x.tokens)), [[8], [8], [6]]);
  assert.deepEqual(p.sent, [{ first: 0, count: 2, tokenCount: 8 }, { first: 2, count: 2, tokenCount: 16 }, { first: 4, count: 2, tokenCount: 22 }]);
  assert.equal(r.firstToken.id, 10);
  assert.equal(engine.freeSlots, 4, 'the prefill slot is given back once the blocks are read');
});

// ---- stop rules ----

test('EOS ends a request with stop; the EOS token itself is not emitted', async () => {
  const { engine, decode } = make();
  engine.scripts.set('a', (n) => (n === 2 ? EOS : 20 + n));
  const a = decode('a', { ready: true, sampling: { max_tokens: 10 } });
  await a.out.ended;
  assert.deepEqual(a.out.tokens, [5, 20, 21]);
  assert.deepEqual(a.out.finished, { reason: 'stop', stopTokenId: EOS });
  assert.equal(engine.freeSlots, 4);
});

test('a stop_token_id ends with stop and names the token', async () => {
  const { engine, decode } = make();
  engine.scripts.set('a', (n) => 20 + n);
  const a = decode('a', { ready: true, sampling: { max_tokens: 10, stop_token_ids: [22] } });
  await a.out.ended;
  assert.deepEqual(a.out.tokens, [5, 20, 21]);
  assert.deepEqual(a.out.finished, { reason: 'stop', stopTokenId: 22 });
});

test('min_tokens: EOS before it is emitted as a token and decoding goes on; after it, EOS stops', async () => {
  const { engine, decode } = make();
  engine.scripts.set('a', () => EOS);
  const a = decode('a', { ready: true, sampling: { max_tokens: 10, min_tokens: 3 } });
  await a.out.ended;
  assert.deepEqual(a.out.tokens, [5, EOS, EOS], 'three tokens, two of them EOS');
  assert.deepEqual(a.out.finished, { reason: 'stop', stopTokenId: EOS });
});

test('ignore_eos: EOS is an ordinary token and max_tokens ends the request', async () => {
  const { engine, decode } = make();
  engine.scripts.set('a', () => EOS);
  const a = decode('a', { ready: true, sampling: { max_tokens: 3, ignore_eos: true } });
  await a.out.ended;
  assert.deepEqual(a.out.tokens, [5, EOS, EOS]);
  assert.equal(a.out.finished?.reason, 'length');
});

test('a first token that is EOS ends the request at once, without a decode step', async () => {
  const { engine, decode } = make();
  const a = decode('a', { ready: true, firstToken: EOS });
  await a.out.ended;
  assert.deepEqual(a.out.tokens, []);
  assert.equal(a.out.finished?.reason, 'stop');
  assert.equal(engine.steps.length, 0);
});

test('the context end stops a request with length even below max_tokens', async () => {
  const { decode } = make({ maxModelLen: 6 });
  const a = decode('a', { ready: true, promptLen: 4, sampling: { max_tokens: 100 } });
  await a.out.ended;
  assert.equal(a.out.finished?.reason, 'length');
  assert.equal(a.out.tokens.length, 3, 'first token, then steps until the sequence holds 6 positions');
});

// ---- KV chunks as applied by the scheduler ----

test('KV chunks applied in order make the request ready; it then decodes', async () => {
  const { engine, sched, decode } = make();
  const a = decode('a', { promptLen: 10, sampling: { max_tokens: 2 } });
  const applied: number[] = [];
  a.req.kvApplied = (b) => applied.push(b);
  a.req.pendingKv.push(kvChunk('a', 10, 0, 2, false), kvChunk('a', 10, 2, 1, true, 9));
  sched.notify();
  await a.out.ended;
  assert.deepEqual(engine.writes, [{ id: 'a', first: 0, count: 2, tokenCount: 8 }, { id: 'a', first: 2, count: 1, tokenCount: 10 }]);
  assert.deepEqual(applied, [2 * BLOCK_BYTES, BLOCK_BYTES]);
  assert.deepEqual(a.out.tokens, [9, 10]);
});

test('a KV transfer makes room for its whole prompt before its first block is written, so the cache grows once, not block by block', async () => {
  const { engine, sched, decode } = make();
  const a = decode('a', { promptLen: 40, sampling: { max_tokens: 1 } });
  a.req.pendingKv.push(kvChunk('a', 40, 0, 1, false), kvChunk('a', 40, 1, 1, false), kvChunk('a', 40, 2, 1, true, 9));
  sched.notify();
  await a.out.ended;
  const firstWrite = engine.kvCalls.indexOf('write:a:0+1');
  assert.ok(firstWrite > 0 && engine.kvCalls.slice(0, firstWrite).includes('reserve:40'), engine.kvCalls.join(' '));
});

test('KV chunks out of order: the transfer ends short of the prompt and the request fails (precondition), slot freed', async () => {
  const { engine, sched, decode } = make();
  const a = decode('a', { promptLen: 10 });
  a.req.pendingKv.push(kvChunk('a', 10, 2, 1, false), kvChunk('a', 10, 0, 2, true));
  sched.notify();
  await a.out.ended;
  assert.ok(a.out.failed instanceof RequestFailure && a.out.failed.kind === 'precondition', String(a.out.failed));
  assert.match(a.out.failed!.message, /KV transfer ended with 8 of 10 positions/);
  await until(() => engine.freeSlots === 4, 'the slot to be freed');
  assert.equal(sched.decodes.size, 0);
});

test('a duplicated KV chunk is written again harmlessly: the request completes as usual', async () => {
  const { sched, decode } = make();
  const a = decode('a', { promptLen: 10, sampling: { max_tokens: 2 } });
  const c0 = kvChunk('a', 10, 0, 2, false);
  a.req.pendingKv.push(c0, c0, kvChunk('a', 10, 2, 1, true, 9));
  sched.notify();
  await a.out.ended;
  assert.deepEqual(a.out.tokens, [9, 10]);
  assert.equal(a.out.finished?.reason, 'length');
});

test('a KV chunk for a request whose transfer already ended is refused: no second first token', async () => {
  const { engine, sched, decode } = make();
  engine.gated = true;
  const a = decode('a', { promptLen: 10, sampling: { max_tokens: 5 } });
  const done = kvChunk('a', 10, 2, 1, true, 9);
  a.req.pendingKv.push(kvChunk('a', 10, 0, 2, false), done);
  sched.notify();
  await engine.stepWaiting();
  assert.deepEqual(a.out.tokens, [9]);
  a.req.pendingKv.push(done); // the same done chunk again, while the request is running
  engine.gated = false;
  engine.step();
  await a.out.ended;
  assert.equal(a.out.tokens.filter((t) => t === 9).length, 1, `first token emitted once: ${a.out.tokens}`);
  assert.ok(a.out.failed instanceof RequestFailure && a.out.failed.kind === 'precondition', String(a.out.failed ?? a.out.finished?.reason));
  await until(() => engine.freeSlots === 4, 'the slot to be freed');
});

test('a corrupted block fails only its request with a checksum error; its later chunks are dropped', async () => {
  const { engine, sched, decode } = make();
  const a = decode('a', { promptLen: 10 });
  const b = decode('b', { ready: true, sampling: { max_tokens: 3 } });
  const applied: number[] = [];
  a.req.kvApplied = (n) => applied.push(n);
  const bad = kvChunk('a', 10, 0, 2, false);
  bad.data[BLOCK_BYTES + 1] ^= 1;
  a.req.pendingKv.push(bad, kvChunk('a', 10, 2, 1, true));
  sched.notify();
  await a.out.ended;
  assert.ok(a.out.failed instanceof KvChecksumError, String(a.out.failed));
  assert.match(a.out.failed!.message, /block 1/);
  assert.deepEqual(applied, [2 * BLOCK_BYTES, BLOCK_BYTES], 'every chunk accounted for');
  assert.equal(engine.writes.length, 0);
  await b.out.ended;
  assert.equal(b.out.finished?.reason, 'length', 'the other request is unaffected');
  await until(() => engine.freeSlots === 4, 'every slot to be freed');
});

test('a block holding NaN is refused (invalid) naming the block', async () => {
  const { sched, decode } = make();
  const a = decode('a', { promptLen: 10 });
  const c = kvChunk('a', 10, 0, 2, false);
  new DataView(c.data.buffer).setFloat32(BLOCK_BYTES + 8, NaN, true);
  const { checksumBlocks } = await import('../../../packages/engine/src/index.ts');
  c.checksums = checksumBlocks(c.data, BLOCK_BYTES);
  a.req.pendingKv.push(c);
  sched.notify();
  await a.out.ended;
  assert.ok(a.out.failed instanceof RequestFailure && a.out.failed.kind === 'invalid');
  assert.match(a.out.failed!.message, /KV block 1 holds a NaN/);
});

test('a done chunk without first_token fails its request (invalid)', async () => {
  const { sched, decode } = make();
  const a = decode('a', { promptLen: 4 });
  const c = kvChunk('a', 4, 0, 1, true);
  c.first_token = null;
  a.req.pendingKv.push(c);
  sched.notify();
  await a.out.ended;
  assert.match(String(a.out.failed), /carries no first_token/);
});

// ---- cancel racing completion ----

test('cancel arriving with the last step: the request ends once, its slot is freed once', async () => {
  const { engine, sched, decode } = make();
  engine.gated = true;
  const a = decode('a', { ready: true, sampling: { max_tokens: 2 } });
  await engine.stepWaiting(); // the last step (max_tokens 2: the first token plus this one) is in flight
  assert.ok(sched.cancelDecode('a'));
  engine.step();
  await a.out.ended;
  await until(() => sched.decodes.size === 0 && engine.freeSlots === 4, 'the request to be gone');
  assert.equal(a.out.ends, 1, `ended once (${a.out.finished?.reason ?? a.out.failed?.message})`);
  // The fake engine throws on a second release of a slot; the loop would then fail everything, so a
  // later request completing shows it did not.
  engine.gated = false;
  const b = decode('b', { ready: true, sampling: { max_tokens: 2 } });
  await b.out.ended;
  assert.equal(b.out.finished?.reason, 'length');
});

test('cancel during a middle step: that request ends cancelled, the rest of the batch goes on', async () => {
  const { engine, sched, decode } = make();
  engine.gated = true;
  const a = decode('a', { ready: true, sampling: { max_tokens: 10 } });
  const b = decode('b', { ready: true, sampling: { max_tokens: 4 } });
  await engine.stepWaiting();
  sched.cancelDecode('a');
  engine.gated = false;
  engine.step();
  await a.out.ended;
  assert.ok(a.out.failed instanceof RequestFailure && a.out.failed.kind === 'cancelled');
  assert.equal(a.out.tokens.length, 1, 'no token after the cancel');
  await b.out.ended;
  assert.equal(b.out.tokens.length, 4);
  assert.equal(a.out.ends, 1);
  await until(() => engine.freeSlots === 4, 'both slots to be freed');
});

test('a decode step that throws fails its batch, and the loop serves the next request', async () => {
  const { engine, decode } = make();
  engine.failNext = new Error('ORT exploded');
  const a = decode('a', { ready: true, sampling: { max_tokens: 5 } });
  await a.out.ended;
  assert.match(String(a.out.failed), /ORT exploded/);
  await until(() => engine.freeSlots === 4, 'the slot to be freed');
  const b = decode('b', { ready: true, sampling: { max_tokens: 3 } });
  await b.out.ended;
  assert.equal(b.out.finished?.reason, 'length');
});

// ---- the loop's wake-up ----

test('work added while the loop runs an idle pass is not lost (no lost wake-up)', async () => {
  // An idle pass (woken with nothing to do) runs through several awaits; work that arrives in a
  // microtask during it calls notify() while the loop holds no waker. Sweep every point in the pass.
  const { sched, decode } = make();
  for (let depth = 0; depth < 24; depth++) {
    sched.notify(); // start an idle pass
    let hop = depth;
    const added = new Promise<ReturnType<typeof decode>>((resolve) => {
      const next = () => (hop-- > 0 ? queueMicrotask(next) : resolve(decode(`r${depth}`, { ready: true, sampling: { max_tokens: 2 } })));
      queueMicrotask(next);
    });
    const r = await added;
    await until(() => r.out.ends === 1, `request added ${depth} microtasks into an idle pass to finish`, 2_000);
  }
});
