// Turns the scenarios of grpc-inputs.ts into bytes for this cluster's KV shape, sends them and
// checks the calls: each ends with a status before its deadline (the worker answered; no hang), a
// reservation ends once Decode.Cancel names it, and every token streamed back is in the vocabulary.
import { crc32 } from 'node:zlib';
import { grpc } from '../../../packages/common/src/index.ts';
import type { ChunkSpec, DecodeScenario, GarbageCall, GenerateSpec, IdSpec, PrefillScenario, SamplingSpec } from './grpc-inputs.ts';
import type { CallEnd, GenerateEnd, RawWorkerClient } from './raw-client.ts';
import { Violation } from './http-probe.ts';
import type { FuzzTarget } from './target.ts';
import { encodeFields, mangle, wire, type Mangle, type WireField } from './wire.ts';

const CALL_DEADLINE_MS = 10_000;
/** Generate streams are cancelled explicitly at the end of each scenario; this is the backstop. */
const GENERATE_DEADLINE_MS = 30_000;
/** How long a reservation may stay open after Decode.Cancel named it. */
const CANCEL_GRACE_MS = 5_000;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const utf8 = (s: string) => new TextEncoder().encode(s);

let counter = 0;
/** Request ids unique within this process (runs never collide unless a scenario asks for it). */
export function idBytes(spec: IdSpec): Uint8Array {
  if (spec.kind === 'fresh') return utf8(`fuzz-${process.pid}-${++counter}`);
  if (spec.kind === 'shared') return utf8('fuzz-shared');
  return spec.value;
}

function encodeSampling(s: SamplingSpec): WireField[] {
  const f: WireField[] = [];
  if (s.temperature !== undefined) f.push(wire.float(1, s.temperature));
  if (s.top_p !== undefined) f.push(wire.float(2, s.top_p));
  if (s.top_k !== undefined) f.push(wire.int(3, s.top_k));
  if (s.seed !== undefined) f.push(wire.int(4, s.seed));
  if (s.max_tokens !== undefined) f.push(wire.int(5, s.max_tokens));
  if (s.min_tokens !== undefined) f.push(wire.int(6, s.min_tokens));
  if (s.stop_token_ids !== undefined && s.stop_token_ids.length > 0) f.push(wire.packed(7, s.stop_token_ids));
  if (s.ignore_eos !== undefined) f.push(wire.int(8, s.ignore_eos));
  if (s.logprobs !== undefined) f.push(wire.int(9, s.logprobs));
  return f;
}

function encodeGenerate(g: GenerateSpec, id: Uint8Array, promptLen: number): Uint8Array {
  const f = [wire.bytes(1, id), wire.int(2, g.promptLen === 'auto' ? promptLen : g.promptLen)];
  if (g.sampling) f.push(wire.msg(3, encodeSampling(g.sampling)));
  f.push(wire.int(4, g.kvTimeoutMs));
  return mangle(encodeFields(f), g.mangle);
}

export function encodeCancel(id: Uint8Array, m: Mangle = { kind: 'none' }): Uint8Array {
  return mangle(encodeFields([wire.bytes(1, id)]), m);
}

/** Noise that is the same for the same spec (runs replay from the seed). */
function noise(n: number, salt: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = (salt * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; out[i] = x & 0xff; }
  return out;
}

function encodeChunk(t: FuzzTarget, c: ChunkSpec, id: Uint8Array, promptLen: number): Uint8Array {
  const B = t.blockTokens;
  const total = Math.ceil(promptLen / B);
  let first: bigint;
  let count: bigint;
  switch (c.range.kind) {
    case 'all': first = 0n; count = BigInt(total); break;
    case 'prefix': first = 0n; count = BigInt(Math.min(c.range.blocks, total)); break;
    case 'block': first = BigInt(c.range.index); count = 1n; break;
    case 'raw': first = c.range.first; count = c.range.count; break;
  }
  // What is actually sent: never more than 40 blocks of bytes, whatever block_count claims.
  const blocks = Number(BigInt.asUintN(32, count) > 40n ? 40n : BigInt.asUintN(32, count));
  let bytes = blocks * t.blockBytes;
  if (c.data === 'short') bytes = Math.max(0, bytes - 1);
  if (c.data === 'long') bytes += 1;
  if (c.data === 'empty') bytes = 0;
  const data = c.data === 'noise' ? noise(bytes, Number(first & 0xffffn) + blocks) : new Uint8Array(bytes);
  const sums: number[] = [];
  for (let off = 0; off < data.byteLength; off += t.blockBytes) sums.push(crc32(data.subarray(off, off + t.blockBytes)));
  if (c.checksums === 'wrong' && sums.length > 0) sums[0] = (sums[0] ^ 1) >>> 0;
  if (c.checksums === 'missing') sums.pop();
  if (c.checksums === 'extra') sums.push(0);
  const tokenCount = c.tokenCount !== 'auto' ? c.tokenCount : BigInt(Math.min(promptLen, Number(BigInt.asUintN(32, first + count)) * B));
  const f: WireField[] = [
    wire.bytes(1, c.target === 'same' ? id : utf8('fuzz-nobody')),
    wire.int(2, first), wire.int(3, count), wire.int(4, tokenCount), wire.bytes(5, data),
  ];
  if (sums.length > 0) f.push(wire.packed(6, sums.map(BigInt)));
  f.push(wire.int(7, c.done ? 1 : 0));
  if (c.firstToken.kind === 'valid') f.push(wire.msg(8, [wire.int(1, 13), wire.float(2, -0.5)]));
  else if (c.firstToken.kind === 'id') {
    const top = Array.from({ length: c.firstToken.topLogprobs }, (_, i) => wire.msg(3, [wire.int(1, i), wire.float(2, -1)]));
    f.push(wire.msg(8, [wire.int(1, c.firstToken.id), wire.float(2, c.firstToken.logprob), ...top]));
  }
  f.push(wire.int(9, c.blockTokens === 'ok' ? B : c.blockTokens), wire.int(10, c.blockBytes === 'ok' ? t.blockBytes : c.blockBytes));
  return encodeFields(f);
}

/** The transfer a correct prefill worker would send: every block, then `done` with a first token. */
function completeTransfer(t: FuzzTarget, id: Uint8Array, promptLen: number): Uint8Array[] {
  const spec: ChunkSpec = {
    target: 'same', range: { kind: 'all' }, tokenCount: 'auto', data: 'zeros', checksums: 'ok', done: true,
    firstToken: { kind: 'valid' }, blockTokens: 'ok', blockBytes: 'ok',
  };
  return [encodeChunk(t, spec, id, promptLen)];
}

function expectAnswered(what: string, end: CallEnd): void {
  if (end.code === grpc.status.DEADLINE_EXCEEDED) throw new Violation(`${what}: no status within its deadline (${Math.round(end.ms)} ms): the worker never answered`);
}

function checkEvents(t: FuzzTarget, what: string, end: GenerateEnd): void {
  end.events.forEach((e, i) => {
    if (e.event === 'reserved' && i !== 0) throw new Violation(`${what}: 'reserved' as event ${i}`);
    for (const tok of e.tokens?.tokens ?? []) {
      if (!(tok.id >= 0 && tok.id < t.vocab)) throw new Violation(`${what}: streamed token id ${tok.id} outside the vocabulary of ${t.vocab}`);
    }
  });
}

/**
 * Decode.Cancel for the id, then the stream must end within the grace period. `idIntact` is false
 * when the request was mangled so that the worker may know it by another id (or none).
 */
async function closeReservation(t: FuzzTarget, what: string, c: RawWorkerClient, gen: ReturnType<RawWorkerClient['generate']>, id: Uint8Array, idIntact = true): Promise<void> {
  expectAnswered('Decode.Cancel', await c.cancel('decode', encodeCancel(id), CALL_DEADLINE_MS));
  const end = await Promise.race([gen.end, sleep(idIntact ? CANCEL_GRACE_MS : 200).then(() => undefined)]);
  if (!end) {
    gen.cancel();
    if (!idIntact) return;
    throw new Violation(`${what}: still open ${CANCEL_GRACE_MS} ms after Decode.Cancel named its id`);
  }
  expectAnswered(what, end);
  checkEvents(t, what, end);
}

export async function decodeProbe(t: FuzzTarget, s: DecodeScenario): Promise<void> {
  const c = t.client(t.decode.grpc);
  const id = idBytes(s.generate.id);
  const request = encodeGenerate(s.generate, id, s.promptLen);
  const gen = c.generate(request, GENERATE_DEADLINE_MS);
  const twin = s.twin ? c.generate(request, GENERATE_DEADLINE_MS) : undefined;
  try {
    await Promise.race([gen.reserved, sleep(3_000)]);
    for (const step of s.steps) {
      if (step.kind === 'push') {
        const messages = step.chunks.map((ch) => encodeChunk(t, ch, id, s.promptLen));
        messages[messages.length - 1] = mangle(messages[messages.length - 1], step.mangle);
        expectAnswered('Decode.PushKv', await c.pushKv(messages, CALL_DEADLINE_MS));
      } else if (step.kind === 'cancel') {
        const cid = step.target === 'same' ? id : utf8('fuzz-nobody');
        expectAnswered(`${step.service === 'decode' ? 'Decode' : 'Prefill'}.Cancel`, await t.client(step.service === 'decode' ? t.decode.grpc : t.prefill.grpc).cancel(step.service, encodeCancel(cid), CALL_DEADLINE_MS));
      } else if (step.kind === 'client-cancel') {
        gen.cancel();
      } else {
        await sleep(step.ms);
      }
    }
    if (s.completeTransfer) {
      const pushed = await c.pushKv(completeTransfer(t, id, s.promptLen), CALL_DEADLINE_MS);
      expectAnswered('Decode.PushKv (complete transfer)', pushed);
      if (pushed.code === grpc.status.OK) await Promise.race([gen.end, sleep(3_000)]); // let the decode loop run with this sampling
    }
  } finally {
    const intact = s.generate.mangle.kind === 'none' || s.generate.mangle.kind === 'unknown-field';
    await closeReservation(t, 'Decode.Generate', c, gen, id, intact);
    if (twin) await closeReservation(t, 'Decode.Generate (twin with the same id)', c, twin, id, intact);
  }
}

function decodeAddress(t: FuzzTarget, a: PrefillScenario['decodeAddress']): string {
  if (a === 'decode') return t.decode.grpc;
  if (a === 'self') return t.prefill.grpc;
  if (a === 'refused') return '127.0.0.1:1';
  if (a === 'router-http') return new URL(t.url).host;
  return a.literal;
}

export async function prefillProbe(t: FuzzTarget, s: PrefillScenario): Promise<void> {
  const dc = t.client(t.decode.grpc);
  const pc = t.client(t.prefill.grpc);
  const id = idBytes(s.id);
  const ids: Array<bigint | number> = s.promptIds.kind === 'repeat' ? Array(s.promptIds.count).fill(s.promptIds.id) : s.promptIds.ids;
  const gen = s.reserve ? dc.generate(encodeGenerate(s.reserve, id, ids.length), GENERATE_DEADLINE_MS) : undefined;
  try {
    if (gen) await Promise.race([gen.reserved, sleep(3_000)]);
    const f = [wire.bytes(1, id)];
    if (ids.length > 0) f.push(wire.packed(2, ids));
    if (s.sampling) f.push(wire.msg(3, encodeSampling(s.sampling)));
    f.push(wire.str(4, decodeAddress(t, s.decodeAddress)));
    const call = pc.prefillCall(mangle(encodeFields(f), s.mangle), CALL_DEADLINE_MS);
    let race: Promise<unknown> = Promise.resolve();
    if (s.race) {
      const r = s.race;
      race = sleep(r.afterMs).then(async () => {
        if (r.kind === 'prefill-cancel') expectAnswered('Prefill.Cancel', await pc.cancel('prefill', encodeCancel(id), CALL_DEADLINE_MS));
        else if (r.kind === 'decode-cancel') expectAnswered('Decode.Cancel', await dc.cancel('decode', encodeCancel(id), CALL_DEADLINE_MS));
        else if (r.kind === 'generate-cancel') gen?.cancel();
        else call.cancel();
      });
    }
    const [end] = await Promise.all([call.end, race]);
    expectAnswered('Prefill.Prefill', end);
    if (gen && end.code === grpc.status.OK) await Promise.race([gen.end, sleep(3_000)]); // a good transfer: let the decode finish
  } finally {
    if (gen) await closeReservation(t, 'Decode.Generate (reserved for the prefill)', dc, gen, id);
  }
}

export async function garbageProbe(t: FuzzTarget, calls: GarbageCall[]): Promise<void> {
  for (const [i, g] of calls.entries()) {
    const w = t.workers[i % t.workers.length];
    const c = t.client(w.grpc);
    const bytes = mangle(g.payload.kind === 'cancel' ? encodeCancel(idBytes(g.payload.id)) : g.payload.bytes, g.mangle);
    const what = `${g.method} on ${w.role}`;
    switch (g.method) {
      case 'Prefill.Prefill': expectAnswered(what, await c.prefillCall(bytes, CALL_DEADLINE_MS).end); break;
      case 'Prefill.Cancel': expectAnswered(what, await c.cancel('prefill', bytes, CALL_DEADLINE_MS)); break;
      case 'Decode.Cancel': expectAnswered(what, await c.cancel('decode', bytes, CALL_DEADLINE_MS)); break;
      case 'Prefill.Health': expectAnswered(what, await c.health('prefill', bytes, CALL_DEADLINE_MS)); break;
      case 'Decode.Health': expectAnswered(what, await c.health('decode', bytes, CALL_DEADLINE_MS)); break;
      case 'Decode.PushKv': expectAnswered(what, await c.pushKv([bytes], CALL_DEADLINE_MS)); break;
      case 'Decode.Generate': {
        // Bytes that happen to parse as a request may hold a reservation: that is an answer too.
        const gen = c.generate(bytes, GENERATE_DEADLINE_MS);
        const first = await Promise.race([gen.reserved.then((r) => (r ? 'reserved' : 'ended')), sleep(5_000).then(() => 'silent')]);
        gen.cancel();
        if (first === 'silent') throw new Violation(`${what}: neither reserved nor ended within 5 s`);
        expectAnswered(what, await gen.end);
        break;
      }
    }
  }
}
