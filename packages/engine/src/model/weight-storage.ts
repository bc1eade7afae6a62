// How pdserve's Llama graph stores its weight matrices and multiplies by them: the one place that
// knows the weight dtype. The graph builder asks for "x times this [out, in] matrix", "rows of the
// embedding table" and "logits against the classifier"; this module picks the ONNX operators.
//
//   fp32  MatMul / Gemm / Gather over float32 initializers (the reference, exact to run.c)
//   q8    com.microsoft MatMulNBits bits=8, GatherBlockQuantized bits=8 for the embedding
//   q4    the same with bits=4
//
// Quantized weights are symmetric, block-wise along the input dimension (weight-quant.ts), with
// accuracy_level 4: MLAS quantizes the activations to int8 per block and runs int8 dot products,
// the fast path for both 8- and 4-bit weights on x86. Activations, norms, RoPE and the KV cache stay
// float32, so the graph's I/O (and with it the KV blocks, their transfer and batching) does not
// depend on the dtype.
//
// fp16 is not offered: measured on this build (ORT 1.30 CPU, x86), a float16 MatMul has no CPU kernel
// and ORT converts float16 initializers to float32 at session load, so the same resident memory and
// a slower GEMV (BENCHMARKS.md, "Weight precision"); q8 halves what fp16 would have stored.
import type { GraphBuilder } from '../onnx/graph-builder.ts';
import { DataType } from '../onnx/onnx-proto.ts';
import { quantizeBlockwise, type QuantBits } from './weight-quant.ts';

export const WEIGHT_DTYPES = ['fp32', 'q8', 'q4'] as const;
export type WeightDtype = (typeof WEIGHT_DTYPES)[number];

/** Default block length along K for the quantized dtypes (llama.cpp's Q8_0/Q4_0 use 32 as well). */
export const DEFAULT_QUANT_BLOCK_SIZE = 32;
/** Block sizes MatMulNBits accepts: powers of two from 16. */
export const QUANT_BLOCK_SIZES = [16, 32, 64, 128, 256] as const;
/**
 * MatMulNBits accuracy_level 4: MLAS quantizes activations to int8 and runs int8 dot products, its
 * fast CPU path. Level 1 (fp32 compute) measured ~25x slower on the 135M shape (BENCHMARKS.md).
 */
export const QUANT_ACCURACY_LEVEL = 4;

/** A weight dtype plus, for q8/q4, the quantization block length. */
export interface WeightFormat {
  dtype: WeightDtype;
  blockSize?: number;
}

export class WeightDtypeError extends Error {}

export function parseWeightDtype(value: string): WeightDtype {
  if ((WEIGHT_DTYPES as readonly string[]).includes(value)) return value as WeightDtype;
  if (value === 'fp16') {
    throw new WeightDtypeError('--dtype fp16 is not supported: ONNX Runtime\'s CPU provider converts float16 weights to float32 when it loads them (no memory saved, slower matmuls); use q8 (8-bit, half of fp16\'s size) or fp32');
  }
  throw new WeightDtypeError(`unknown --dtype ${JSON.stringify(value)} (expected one of ${WEIGHT_DTYPES.join(', ')})`);
}

export function checkWeightFormat(f: WeightFormat): Required<WeightFormat> {
  parseWeightDtype(f.dtype);
  const blockSize = f.blockSize ?? DEFAULT_QUANT_BLOCK_SIZE;
  if (!(QUANT_BLOCK_SIZES as readonly number[]).includes(blockSize)) {
    throw new WeightDtypeError(`unsupported quantization block size ${blockSize} (expected one of ${QUANT_BLOCK_SIZES.join(', ')})`);
  }
  if (f.dtype === 'fp32' && f.blockSize !== undefined) throw new WeightDtypeError('a block size applies only to --dtype q8 or q4');
  return { dtype: f.dtype, blockSize };
}

/** What config.json records about the weights beyond the dtype. */
export function quantizationInfo(f: WeightFormat): Record<string, unknown> | undefined {
  const { dtype, blockSize } = checkWeightFormat(f);
  if (dtype === 'fp32') return undefined;
  return {
    method: 'MatMulNBits',
    bits: bitsOf(dtype),
    block_size: blockSize,
    accuracy_level: QUANT_ACCURACY_LEVEL,
    symmetric: true,
    embedding: 'GatherBlockQuantized',
  };
}

function bitsOf(dtype: Exclude<WeightDtype, 'fp32'>): QuantBits {
  return dtype === 'q8' ? 8 : 4;
}

/** [out, in] -> [in, out]. */
function transposed(w: Float32Array, out: number, inDim: number): Float32Array {
  const t = new Float32Array(w.length);
  for (let o = 0; o < out; o++) {
    const row = o * inDim;
    for (let i = 0; i < inDim; i++) t[i * out + o] = w[row + i];
  }
  return t;
}

export class WeightStorage {
  readonly dtype: WeightDtype;
  readonly blockSize: number;

  constructor(private readonly g: GraphBuilder, format: WeightFormat) {
    ({ dtype: this.dtype, blockSize: this.blockSize } = checkWeightFormat(format));
  }

  /**
   * `x [.., inDim]` times the transpose of `w [out, inDim]` (llama2.c's layout): `[.., out]`.
   * fp32 stores the transpose for MatMul; MatMulNBits takes [out, in] blocks as they are.
   */
  linear(name: string, x: string, w: Float32Array, out: number, inDim: number, output?: string): string {
    const g = this.g;
    const outputs = output ? [output] : 1;
    if (this.dtype === 'fp32') {
      return g.node('MatMul', [x, g.weight(name, transposed(w, out, inDim), [inDim, out])], outputs)[0];
    }
    const bits = bitsOf(this.dtype);
    const q = quantizeBlockwise(w, out, inDim, bits, this.blockSize);
    const codes = g.weightOf(name, DataType.UINT8, q.codes, [out, q.blocksPerRow, (this.blockSize * bits) / 8]);
    const scales = g.weightOf(`${name}.scales`, DataType.FLOAT, q.scales, [out, q.blocksPerRow]);
    return g.node('MatMulNBits', [x, codes, scales], outputs, {
      K: inDim, N: out, bits, block_size: this.blockSize, accuracy_level: QUANT_ACCURACY_LEVEL,
    }, 'com.microsoft')[0];
  }

  /**
   * The token embedding `table [vocab, dim]`: returns the rows for `ids` and a way to compute
   * logits against the same table (tied classifier) or against a separate `[vocab, dim]` one.
   */
  embedding(name: string, ids: string, table: Float32Array, vocab: number, dim: number): { rows: string; tiedLogits: (x: string, out: string) => void } {
    const g = this.g;
    if (this.dtype === 'fp32') {
      const t = g.weight(name, table, [vocab, dim]);
      return {
        rows: g.node('Gather', [t, ids], 1, { axis: 0 })[0],
        tiedLogits: (x, out) => { g.node('Gemm', [x, t], [out], { transB: 1 }); },
      };
    }
    const bits = bitsOf(this.dtype);
    let rows: string;
    if (dim % this.blockSize === 0) {
      const q = quantizeBlockwise(table, vocab, dim, bits, this.blockSize);
      const data = g.weightOf(name, DataType.UINT8, q.codes, [vocab, (dim * bits) / 8]);
      const scales = g.weightOf(`${name}.scales`, DataType.FLOAT, q.scales, [vocab, q.blocksPerRow]);
      rows = g.node('GatherBlockQuantized', [data, ids, scales], 1, {
        gather_axis: 0, quantize_axis: 1, block_size: this.blockSize, bits,
      }, 'com.microsoft')[0];
    } else {
      // GatherBlockQuantized wants whole blocks per row; such a small table stays float32.
      rows = g.node('Gather', [g.weight(name, table, [vocab, dim]), ids], 1, { axis: 0 })[0];
    }
    // The classifier reads the table once per logits row, so it gets MatMulNBits' own copy (MLAS
    // repacks MatMulNBits weights at load anyway; sharing the initializer would not save memory).
    return { rows, tiedLogits: (x, out) => this.logits(`${name}.classifier`, x, table, vocab, dim, out) };
  }

  /** Logits `[rows, vocab]` of `x [rows, dim]` against a `[vocab, dim]` classifier, into `out`. */
  logits(name: string, x: string, w: Float32Array, vocab: number, dim: number, out: string): void {
    const g = this.g;
    if (this.dtype === 'fp32') {
      g.node('Gemm', [x, g.weight(name, w, [vocab, dim])], [out], { transB: 1 });
      return;
    }
    this.linear(name, x, w, vocab, dim, out);
  }
}
