// A hand-rolled protobuf wire encoder for the fuzz suite. The generated gRPC clients would clamp or
// reject the values the fuzzer wants to send (an int32 of 2^31, a uint32 of -1, a float NaN, a
// field with the wrong wire type, a truncated message), so the fuzz clients send these bytes as
// they are (raw-client.ts) and only decode the answers with the real proto definitions.

/** A field's value as it goes on the wire: every integer is a bigint (64-bit two's complement). */
export type WireValue =
  | { kind: 'varint'; value: bigint }
  | { kind: 'fixed32'; value: number } // a float, written as IEEE-754 single
  | { kind: 'bytes'; value: Uint8Array }
  | { kind: 'packed'; values: bigint[] };

export interface WireField {
  field: number;
  value: WireValue;
}

const U64 = (1n << 64n) - 1n;

function varint(v: bigint): number[] {
  let x = v & U64; // negative numbers: 10-byte two's complement, as protobuf writes int32/int64
  const out: number[] = [];
  do {
    let b = Number(x & 0x7fn);
    x >>= 7n;
    if (x !== 0n) b |= 0x80;
    out.push(b);
  } while (x !== 0n);
  return out;
}

function wireType(v: WireValue): number {
  return v.kind === 'varint' ? 0 : v.kind === 'fixed32' ? 5 : 2;
}

export function encodeFields(fields: WireField[]): Uint8Array {
  const out: number[] = [];
  for (const f of fields) {
    out.push(...varint(BigInt((f.field << 3) | wireType(f.value))));
    const v = f.value;
    if (v.kind === 'varint') out.push(...varint(v.value));
    else if (v.kind === 'fixed32') {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setFloat32(0, v.value, true);
      out.push(...b);
    } else {
      const payload = v.kind === 'bytes' ? v.value : Uint8Array.from(v.values.flatMap(varint));
      out.push(...varint(BigInt(payload.byteLength)));
      for (const byte of payload) out.push(byte);
    }
  }
  return Uint8Array.from(out);
}

// Constructors for the fields of proto/pdserve/v1/pdserve.proto.
export const wire = {
  int: (field: number, value: bigint | number): WireField => ({ field, value: { kind: 'varint', value: BigInt(value) } }),
  float: (field: number, value: number): WireField => ({ field, value: { kind: 'fixed32', value } }),
  bytes: (field: number, value: Uint8Array): WireField => ({ field, value: { kind: 'bytes', value } }),
  str: (field: number, value: string): WireField => ({ field, value: { kind: 'bytes', value: new TextEncoder().encode(value) } }),
  msg: (field: number, fields: WireField[]): WireField => ({ field, value: { kind: 'bytes', value: encodeFields(fields) } }),
  packed: (field: number, values: Array<bigint | number>): WireField => ({ field, value: { kind: 'packed', values: values.map((v) => BigInt(v)) } }),
};

/** Damage applied to an encoded message: what a broken or hostile peer might send. */
export type Mangle =
  | { kind: 'none' }
  | { kind: 'truncate'; keep: number } // the first `keep` bytes (a fraction of 1000 of the length)
  | { kind: 'unknown-field'; field: number; payload: Uint8Array }
  | { kind: 'garbage'; bytes: Uint8Array };

export function mangle(bytes: Uint8Array, m: Mangle): Uint8Array {
  switch (m.kind) {
    case 'none': return bytes;
    case 'truncate': return bytes.subarray(0, Math.floor((bytes.byteLength * m.keep) / 1000));
    case 'unknown-field': return Uint8Array.from([...bytes, ...encodeFields([wire.bytes(m.field, m.payload)])]);
    case 'garbage': return m.bytes;
  }
}
