// A small ONNX graph writer: nodes, graph inputs/outputs and initializers whose bytes stream into
// one external-data file as they are added, so a multi-gigabyte model is never held in memory and
// the protobuf stays far below its 2 GiB limit.
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { basename } from 'node:path';
import { AttributeType, DataType, ModelProto, type DataTypeId } from './onnx-proto.ts';

export type Dim = number | string;
export type AttrValue = number | string | number[] | { floats: number[] } | { float: number };

interface ValueInfo { name: string; type: { tensorType: { elemType: number; shape: { dim: object[] } } } }

const DATA_ALIGNMENT = 64;

export class GraphBuilder {
  private readonly nodes: object[] = [];
  private readonly initializers: object[] = [];
  private readonly inputs: ValueInfo[] = [];
  private readonly outputs: ValueInfo[] = [];
  private readonly dataFd: number;
  private dataOffset = 0;
  private counter = 0;

  /** `dataPath` receives the weights; the .onnx written by `save` refers to it by file name. */
  constructor(private readonly dataPath: string) {
    this.dataFd = openSync(dataPath, 'w');
  }

  /** A fresh, readable tensor name. */
  name(hint: string): string {
    return `${hint}_${this.counter++}`;
  }

  input(name: string, elemType: DataTypeId, shape: Dim[]): string {
    this.inputs.push(valueInfo(name, elemType, shape));
    return name;
  }

  output(name: string, elemType: DataTypeId, shape: Dim[]): void {
    this.outputs.push(valueInfo(name, elemType, shape));
  }

  /** A float32 weight tensor, written to the external-data file now. */
  weight(name: string, data: Float32Array, dims: number[]): string {
    return this.weightOf(name, DataType.FLOAT, data, dims);
  }

  /** A weight tensor of any element type (uint8 codes, float16 bits as Uint16Array, ...). */
  weightOf(name: string, dataType: DataTypeId, data: Float32Array | Uint16Array | Uint8Array, dims: number[]): string {
    const count = dims.reduce((a, b) => a * b, 1);
    if (count !== data.length) throw new Error(`weight ${name}: ${data.length} values for shape [${dims}]`);
    const pad = (DATA_ALIGNMENT - (this.dataOffset % DATA_ALIGNMENT)) % DATA_ALIGNMENT;
    if (pad) writeSync(this.dataFd, new Uint8Array(pad));
    this.dataOffset += pad;
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    writeSync(this.dataFd, bytes);
    this.initializers.push({
      name,
      dims,
      dataType,
      dataLocation: 1,
      externalData: [
        { key: 'location', value: basename(this.dataPath) },
        { key: 'offset', value: String(this.dataOffset) },
        { key: 'length', value: String(bytes.byteLength) },
      ],
    });
    this.dataOffset += bytes.byteLength;
    return name;
  }

  /** A small constant kept inside the graph (shapes, axes, indices). */
  constInt64(values: number[], dims: number[] = [values.length]): string {
    const name = this.name('const');
    const raw = new BigInt64Array(values.map((v) => BigInt(v)));
    this.initializers.push({ name, dims, dataType: DataType.INT64, rawData: new Uint8Array(raw.buffer) });
    return name;
  }

  constFloat(values: number[], dims: number[] = [values.length]): string {
    const name = this.name('const');
    const raw = new Float32Array(values);
    this.initializers.push({ name, dims, dataType: DataType.FLOAT, rawData: new Uint8Array(raw.buffer) });
    return name;
  }

  /** Adds a node; returns its output names (`outputs` may be a count of fresh names). */
  node(opType: string, inputs: string[], outputs: string[] | number = 1, attrs: Record<string, AttrValue> = {}, domain = ''): string[] {
    const outs = typeof outputs === 'number' ? Array.from({ length: outputs }, () => this.name(opType.toLowerCase())) : outputs;
    this.nodes.push({
      opType,
      domain,
      name: this.name(`${opType}_node`),
      input: inputs,
      output: outs,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return outs;
  }

  /** Writes `modelPath` and closes the external-data file. */
  save(modelPath: string, opsets: Record<string, number>, metadata: Record<string, string> = {}): void {
    closeSync(this.dataFd);
    const message = ModelProto.fromObject({
      irVersion: 8,
      producerName: 'pdserve',
      producerVersion: '0.1.0',
      opsetImport: Object.entries(opsets).map(([domain, version]) => ({ domain, version })),
      metadataProps: Object.entries(metadata).map(([key, value]) => ({ key, value })),
      graph: { name: 'pdserve', node: this.nodes, initializer: this.initializers, input: this.inputs, output: this.outputs },
    });
    writeFileSync(modelPath, ModelProto.encode(message).finish());
  }
}

function valueInfo(name: string, elemType: number, shape: Dim[]): ValueInfo {
  return {
    name,
    type: { tensorType: { elemType, shape: { dim: shape.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } },
  };
}

function attribute(name: string, v: AttrValue): object {
  if (typeof v === 'number') return { name, type: AttributeType.INT, i: v };
  if (typeof v === 'string') return { name, type: AttributeType.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: AttributeType.INTS, ints: v };
  if ('float' in v) return { name, type: AttributeType.FLOAT, f: v.float };
  return { name, type: AttributeType.FLOATS, floats: v.floats };
}
