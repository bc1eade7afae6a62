// gRPC clients of a worker's Prefill and Decode services that send request bytes exactly as given
// (see wire.ts) and decode the answers with the real proto definitions. Every call has a deadline,
// and every helper resolves with the call's final status: a call that never ends shows up as
// DEADLINE_EXCEEDED, which the properties treat as a hang.
import { channelCredentials, clientSecurityOptions, decodeService, grpc, prefillService, CHANNEL_OPTIONS, type GenerateEventMsg } from '../../../packages/common/src/index.ts';

type Method = grpc.MethodDefinition<Uint8Array, unknown>;

function rawService(def: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const out: Record<string, Method> = {};
  for (const [name, m] of Object.entries(def)) {
    out[name] = { ...(m as Method), requestSerialize: (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength) };
  }
  return out as grpc.ServiceDefinition;
}

const PrefillRaw = grpc.makeGenericClientConstructor(rawService(prefillService()), 'pdserve.v1.Prefill');
const DecodeRaw = grpc.makeGenericClientConstructor(rawService(decodeService()), 'pdserve.v1.Decode');

export interface CallEnd {
  code: grpc.status;
  details: string;
  /** Milliseconds from the call's start to its status. */
  ms: number;
}

export interface GenerateEnd extends CallEnd {
  events: GenerateEventMsg[];
}

type AnyClient = grpc.Client & Record<string, Function>;

/** One worker's two services over one channel each. */
export class RawWorkerClient {
  private readonly prefill: AnyClient;
  private readonly decode: AnyClient;

  constructor(readonly address: string) {
    // With this process's cluster token (if any), so the fuzzed bytes reach the handlers.
    const options = { ...CHANNEL_OPTIONS, ...clientSecurityOptions() };
    this.prefill = new PrefillRaw(address, channelCredentials(), options) as AnyClient;
    this.decode = new DecodeRaw(address, channelCredentials(), options) as AnyClient;
  }

  close(): void {
    this.prefill.close();
    this.decode.close();
  }

  private unary(client: AnyClient, method: string, bytes: Uint8Array, deadlineMs: number): { end: Promise<CallEnd>; cancel(): void } {
    const t0 = performance.now();
    let call: grpc.ClientUnaryCall | undefined;
    const end = new Promise<CallEnd>((resolve) => {
      call = client[method](bytes, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null) => {
        resolve({ code: err ? err.code : grpc.status.OK, details: err?.details ?? '', ms: performance.now() - t0 });
      });
    });
    return { end, cancel: () => call?.cancel() };
  }

  prefillCall(bytes: Uint8Array, deadlineMs: number): { end: Promise<CallEnd>; cancel(): void } {
    return this.unary(this.prefill, 'Prefill', bytes, deadlineMs);
  }

  cancel(service: 'prefill' | 'decode', bytes: Uint8Array, deadlineMs: number): Promise<CallEnd> {
    return this.unary(service === 'prefill' ? this.prefill : this.decode, 'Cancel', bytes, deadlineMs).end;
  }

  health(service: 'prefill' | 'decode', bytes: Uint8Array, deadlineMs: number): Promise<CallEnd> {
    return this.unary(service === 'prefill' ? this.prefill : this.decode, 'Health', bytes, deadlineMs).end;
  }

  /**
   * Decode.Generate: `reserved` resolves on the `reserved` event (or with false once the call ended
   * without one); `end` with the call's status. `cancel()` cancels it from this side.
   */
  generate(bytes: Uint8Array, deadlineMs: number): { reserved: Promise<boolean>; end: Promise<GenerateEnd>; cancel(): void } {
    const t0 = performance.now();
    const call = this.decode.Generate(bytes, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }) as grpc.ClientReadableStream<GenerateEventMsg>;
    const events: GenerateEventMsg[] = [];
    let onReserved: (r: boolean) => void = () => {};
    const reserved = new Promise<boolean>((r) => { onReserved = r; });
    call.on('data', (e: GenerateEventMsg) => {
      events.push(e);
      if (e.event === 'reserved') onReserved(true);
    });
    // The status is the one event every grpc-js call emits exactly once, error or not.
    const end = new Promise<GenerateEnd>((resolve) => {
      call.on('error', () => {}); // the status below carries it
      call.on('status', (s: grpc.StatusObject) => {
        onReserved(false);
        resolve({ code: s.code, details: s.details, ms: performance.now() - t0, events });
      });
    });
    return { reserved, end, cancel: () => call.cancel() };
  }

  /** Decode.PushKv: writes each message (honouring backpressure), half-closes, returns the status. */
  async pushKv(messages: Uint8Array[], deadlineMs: number): Promise<CallEnd> {
    const t0 = performance.now();
    let settle: (e: CallEnd) => void = () => {};
    const end = new Promise<CallEnd>((r) => { settle = r; });
    const call = this.decode.PushKv(new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null) => {
      settle({ code: err ? err.code : grpc.status.OK, details: err?.details ?? '', ms: performance.now() - t0 });
    }) as grpc.ClientWritableStream<Uint8Array>;
    let ended = false;
    void end.then(() => { ended = true; });
    for (const m of messages) {
      if (ended) break;
      if (!call.write(m)) await Promise.race([new Promise((r) => call.once('drain', r)), end]);
    }
    call.end();
    return end;
  }
}
