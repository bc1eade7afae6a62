// The safetensors format (huggingface/safetensors): an 8-byte little-endian header length N, N bytes
// of JSON ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}), then the
// tensor bytes, offsets relative to the end of the header. The reader validates the header the way
// the reference implementation does (known dtypes, byte lengths that match the shape, tensors that
// tile the data region exactly, a file as long as the header says) and reads one tensor at a time
// from disk, so a converter never holds more than the tensor it is working on.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ModelLoadError } from './config.ts';
import { halfToFloat32Table } from '../numeric/half.ts';

export type SafetensorsDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U64' | 'U32' | 'U16' | 'U8' | 'BOOL' | 'F8_E4M3' | 'F8_E5M2';

const DTYPE_BYTES: Record<SafetensorsDtype, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1,
};

/** Floating dtypes the reader widens to float32. */
const FLOAT_SOURCES = new Set<SafetensorsDtype>(['F32', 'F16', 'BF16']);

/** The reference implementation refuses headers above 100 MB; so do we (a corrupt length is caught early). */
const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute byte offset of the tensor's data in the file. */
  offset: number;
  byteLength: number;
}

export class SafetensorsFile {
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Record<string, string>;
  private fd: number | undefined;

  private constructor(readonly path: string, fd: number, tensors: Map<string, TensorInfo>, metadata: Record<string, string>) {
    this.fd = fd;
    this.tensors = tensors;
    this.metadata = metadata;
  }

  /** Opens and validates `path`; throws ModelLoadError naming the file and what is wrong. */
  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (err) {
      throw new ModelLoadError(`cannot open ${path}: ${(err as Error).message}`);
    }
    try {
      const { tensors, metadata } = parseHeader(path, fd);
      return new SafetensorsFile(path, fd, tensors, metadata);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** Reads tensor `name` and widens it to float32 (F32, F16 and BF16 sources). */
  readFloat32(name: string): Float32Array {
    const info = this.tensors.get(name);
    if (!info) throw new ModelLoadError(`${this.path} has no tensor ${name}`);
    if (!FLOAT_SOURCES.has(info.dtype)) {
      throw new ModelLoadError(`${this.path}: tensor ${name} has dtype ${info.dtype}; pdserve converts F32, F16 and BF16 weights (pre-quantized checkpoints are not supported)`);
    }
    const count = info.byteLength / DTYPE_BYTES[info.dtype];
    if (info.dtype === 'F32') {
      const out = new Float32Array(count);
      this.readInto(info, new Uint8Array(out.buffer));
      return out;
    }
    const half = new Uint16Array(count);
    this.readInto(info, new Uint8Array(half.buffer));
    return info.dtype === 'BF16' ? bf16ToFloat32(half) : f16ToFloat32(half);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private readInto(info: TensorInfo, into: Uint8Array): void {
    if (this.fd === undefined) throw new Error(`${this.path} is closed`);
    let done = 0;
    while (done < into.byteLength) {
      const n = readSync(this.fd, into, done, into.byteLength - done, info.offset + done);
      if (n === 0) throw new ModelLoadError(`${this.path} ended while reading tensor ${info.name} (file truncated after it was opened?)`);
      done += n;
    }
  }
}

function readExactly(fd: number, length: number, position: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return buf.subarray(0, done);
}

function parseHeader(path: string, fd: number): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  const fileSize = fstatSync(fd).size;
  const bad = (why: string) => new ModelLoadError(`${path} is not a valid safetensors file: ${why}`);
  if (fileSize < 8) throw bad(`${fileSize} bytes, shorter than the 8-byte header length (truncated?)`);
  const headerLen = Number(readExactly(fd, 8, 0).readBigUInt64LE(0));
  if (headerLen > MAX_HEADER_BYTES) throw bad(`header length ${headerLen} exceeds ${MAX_HEADER_BYTES} bytes`);
  if (8 + headerLen > fileSize) throw bad(`header length ${headerLen} runs past the end of the ${fileSize}-byte file (truncated?)`);
  let header: unknown;
  try {
    header = JSON.parse(readExactly(fd, headerLen, 8).toString('utf8'));
  } catch (err) {
    throw bad(`header is not JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw bad('header is not a JSON object');
  const dataStart = 8 + headerLen;
  const dataSize = fileSize - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  const spans: Array<{ name: string; begin: number; end: number }> = [];
  for (const [name, value] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof value !== 'object' || value === null) throw bad('__metadata__ is not an object');
      metadata = value as Record<string, string>;
      continue;
    }
    const v = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof v !== 'object' || v === null) throw bad(`tensor ${name} is not an object`);
    if (typeof v.dtype !== 'string' || !(v.dtype in DTYPE_BYTES)) throw bad(`tensor ${name} has unknown dtype ${JSON.stringify(v.dtype)}`);
    const dtype = v.dtype as SafetensorsDtype;
    if (!Array.isArray(v.shape) || !v.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw bad(`tensor ${name} has an invalid shape ${JSON.stringify(v.shape)}`);
    const offsets = v.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[1] < offsets[0]) {
      throw bad(`tensor ${name} has invalid data_offsets ${JSON.stringify(offsets)}`);
    }
    const shape = v.shape as number[];
    const [begin, end] = offsets as [number, number];
    const expected = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    if (end - begin !== expected) {
      throw bad(`tensor ${name}: data_offsets [${begin}, ${end}] span ${end - begin} bytes, but ${dtype} [${shape}] needs ${expected}`);
    }
    if (end > dataSize) throw bad(`tensor ${name} ends at byte ${end} of the data, but the file holds only ${dataSize} data bytes (truncated?)`);
    spans.push({ name, begin, end });
    tensors.set(name, { name, dtype, shape, offset: dataStart + begin, byteLength: end - begin });
  }
  // Tensors must tile the data region: no overlap, no gap, nothing after the last one.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const s of spans) {
    if (s.begin !== cursor) throw bad(`tensor ${s.name} starts at data byte ${s.begin}, expected ${cursor} (overlapping or misplaced data_offsets)`);
    cursor = s.end;
  }
  if (cursor !== dataSize) throw bad(`tensors cover ${cursor} data bytes but the file holds ${dataSize}`);
  return { tensors, metadata };
}

export function bf16ToFloat32(src: Uint16Array): Float32Array {
  const bits = new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return new Float32Array(bits.buffer);
}

export function f16ToFloat32(src: Uint16Array): Float32Array {
  const t = halfToFloat32Table();
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = t[src[i]];
  return out;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** float32 -> bfloat16, round to nearest even (as torch's .to(torch.bfloat16)). */
export function float32ToBf16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    f32[0] = src[i];
    const b = u32[0];
    if ((b & 0x7f800000) === 0x7f800000 && b & 0x7fffff) out[i] = (b >>> 16) | 0x40; // NaN stays NaN
    else out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** float32 -> IEEE half, round to nearest even, overflow to infinity. */
export function float32ToF16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    f32[0] = src[i];
    const b = u32[0];
    const sign = (b >>> 16) & 0x8000;
    const exp = (b >>> 23) & 0xff;
    const mant = b & 0x7fffff;
    if (exp === 0xff) { out[i] = sign | 0x7c00 | (mant ? 0x200 : 0); continue; }
    const e = exp - 127 + 15;
    if (e >= 31) { out[i] = sign | 0x7c00; continue; }
    if (e <= 0) {
      if (e < -10) { out[i] = sign; continue; }
      const m = mant | 0x800000;
      const shift = 14 - e;
      const half = 1 << (shift - 1);
      const rest = m & ((1 << shift) - 1);
      let h = m >>> shift;
      if (rest > half || (rest === half && h & 1)) h++;
      out[i] = sign | h;
      continue;
    }
    let h = (e << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && h & 1)) h++; // a carry into the exponent is still right
    out[i] = sign | h;
  }
  return out;
}

export interface TensorToWrite {
  name: string;
  shape: number[];
  data: Float32Array;
  dtype: 'F32' | 'F16' | 'BF16';
}

/** Writes a safetensors file (tensors in the order given), encoding float32 data to each tensor's dtype. */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata: Record<string, string> = { format: 'pt' }): void {
  const encoded = tensors.map((t) => {
    const bytes = t.dtype === 'F32' ? new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
      : new Uint8Array((t.dtype === 'BF16' ? float32ToBf16(t.data) : float32ToF16(t.data)).buffer);
    return { ...t, bytes };
  });
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of encoded) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.byteLength] };
    offset += t.bytes.byteLength;
  }
  const raw = Buffer.from(JSON.stringify(header), 'utf8');
  // The reference writer pads the header with spaces to a multiple of 8 bytes.
  const jsonBytes = Buffer.concat([raw, Buffer.alloc((8 - (raw.byteLength % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(jsonBytes.byteLength));
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, len);
    writeSync(fd, jsonBytes);
    for (const t of encoded) writeSync(fd, t.bytes);
  } finally {
    closeSync(fd);
  }
}

export const SAFETENSORS_FILE = 'model.safetensors';
export const SAFETENSORS_INDEX_FILE = 'model.safetensors.index.json';

/**
 * A checkpoint's tensors across its files: `model.safetensors`, or the shards that
 * `model.safetensors.index.json` maps each tensor to (as transformers' `from_pretrained` reads them).
 */
export class SafetensorsCheckpoint {
  private constructor(private readonly files: SafetensorsFile[], private readonly where: Map<string, SafetensorsFile>) {}

  static open(dir: string): SafetensorsCheckpoint {
    const indexPath = join(dir, SAFETENSORS_INDEX_FILE);
    if (!existsSync(indexPath)) {
      const single = join(dir, SAFETENSORS_FILE);
      if (!existsSync(single)) throw new ModelLoadError(`${dir} has neither ${SAFETENSORS_FILE} nor ${SAFETENSORS_INDEX_FILE} (only safetensors checkpoints are supported)`);
      const file = SafetensorsFile.open(single);
      return new SafetensorsCheckpoint([file], new Map([...file.tensors.keys()].map((n) => [n, file])));
    }
    let index: { weight_map?: unknown };
    try {
      index = JSON.parse(readFileSync(indexPath, 'utf8'));
    } catch (err) {
      throw new ModelLoadError(`${indexPath} is not valid JSON: ${(err as Error).message}`);
    }
    const map = index.weight_map;
    if (typeof map !== 'object' || map === null || Array.isArray(map) || !Object.values(map).every((v) => typeof v === 'string')) {
      throw new ModelLoadError(`${indexPath} has no weight_map of tensor name -> shard file`);
    }
    const weightMap = map as Record<string, string>;
    const shardNames = [...new Set(Object.values(weightMap))].sort();
    for (const name of shardNames) {
      if (name.includes('/') || name.includes('\\') || name.startsWith('.')) throw new ModelLoadError(`${indexPath} names a shard outside the folder: ${JSON.stringify(name)}`);
      if (!existsSync(join(dir, name))) throw new ModelLoadError(`shard ${name} listed in ${indexPath} is missing from ${dir}`);
    }
    const files: SafetensorsFile[] = [];
    try {
      const byName = new Map<string, SafetensorsFile>();
      for (const name of shardNames) {
        const f = SafetensorsFile.open(join(dir, name));
        files.push(f);
        byName.set(name, f);
      }
      const where = new Map<string, SafetensorsFile>();
      for (const [tensor, shard] of Object.entries(weightMap)) {
        const f = byName.get(shard)!;
        if (!f.tensors.has(tensor)) throw new ModelLoadError(`${indexPath} maps ${tensor} to ${shard}, which has no such tensor`);
        where.set(tensor, f);
      }
      for (const f of files) {
        for (const tensor of f.tensors.keys()) {
          if (where.get(tensor) !== f) throw new ModelLoadError(`${f.path} holds ${tensor}, which ${indexPath} does not map to it`);
        }
      }
      return new SafetensorsCheckpoint(files, where);
    } catch (err) {
      for (const f of files) f.close();
      throw err;
    }
  }

  names(): string[] {
    return [...this.where.keys()];
  }

  info(name: string): TensorInfo | undefined {
    return this.where.get(name)?.tensors.get(name);
  }

  readFloat32(name: string): Float32Array {
    const f = this.where.get(name);
    if (!f) throw new ModelLoadError(`the checkpoint has no tensor ${name}`);
    return f.readFloat32(name);
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}
