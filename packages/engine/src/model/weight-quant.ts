// Block-wise weight quantization in the layouts ONNX Runtime's com.microsoft MatMulNBits and
// GatherBlockQuantized read: a [rows, K] matrix (llama2.c's [out, in]) is cut along K into blocks of
// `blockSize`; each block stores one float scale and `bits`-bit unsigned codes with the implicit
// zero point 2^(bits-1) (8 for 4 bits, 128 for 8 bits), so no zero-point tensor is written and MLAS
// takes its symmetric kernels. Scales follow llama.cpp's Q8_0 / Q4_0: 8 bits use absmax / 127; 4 bits
// use (the value of largest magnitude) / -8, so that value lands exactly on code -8 and all 16 codes
// are in use. Codes round to nearest.
// 4-bit codes pack two per byte, the even element in the low nibble. A K that is not a multiple of
// the block size is padded with zeros inside the last block.

export type QuantBits = 4 | 8;

export interface BlockQuantized {
  bits: QuantBits;
  blockSize: number;
  rows: number;
  /** The row length K (MatMulNBits: the input features). */
  cols: number;
  blocksPerRow: number;
  /** [rows, blocksPerRow, blockSize * bits / 8] */
  codes: Uint8Array;
  /** [rows, blocksPerRow] */
  scales: Float32Array;
}

export function quantizeBlockwise(w: Float32Array, rows: number, cols: number, bits: QuantBits, blockSize: number): BlockQuantized {
  if (w.length !== rows * cols) throw new Error(`quantize: ${w.length} values for [${rows}, ${cols}]`);
  if (blockSize < 16 || (blockSize & (blockSize - 1)) !== 0) throw new Error(`quantize: block size ${blockSize} must be a power of two >= 16`);
  const blocksPerRow = Math.ceil(cols / blockSize);
  const blobBytes = (blockSize * bits) / 8;
  const codes = new Uint8Array(rows * blocksPerRow * blobBytes);
  const scales = new Float32Array(rows * blocksPerRow);
  const zero = 1 << (bits - 1);
  const qmax = zero - 1;
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < blocksPerRow; b++) {
      const start = r * cols + b * blockSize;
      const end = r * cols + Math.min(cols, (b + 1) * blockSize);
      let extreme = 0;
      for (let i = start; i < end; i++) if (Math.abs(w[i]) > Math.abs(extreme)) extreme = w[i];
      const scale = Math.fround(bits === 8 ? Math.abs(extreme) / qmax : extreme / -zero);
      const inv = scale === 0 ? 0 : 1 / scale;
      scales[r * blocksPerRow + b] = scale;
      const blob = (r * blocksPerRow + b) * blobBytes;
      for (let j = 0; j < blockSize; j++) {
        const i = start + j;
        const q = i < end ? Math.max(-zero, Math.min(qmax, Math.round(w[i] * inv))) + zero : zero;
        if (bits === 8) codes[blob + j] = q;
        else codes[blob + (j >> 1)] |= (j & 1) ? q << 4 : q;
      }
    }
  }
  return { bits, blockSize, rows, cols, blocksPerRow, codes, scales };
}

/** The float matrix the quantized one stands for (what MatMulNBits multiplies by). */
export function dequantizeBlockwise(q: BlockQuantized): Float32Array {
  const out = new Float32Array(q.rows * q.cols);
  const blobBytes = (q.blockSize * q.bits) / 8;
  const zero = 1 << (q.bits - 1);
  for (let r = 0; r < q.rows; r++) {
    for (let c = 0; c < q.cols; c++) {
      const b = Math.floor(c / q.blockSize);
      const j = c % q.blockSize;
      const blob = (r * q.blocksPerRow + b) * blobBytes;
      const code = q.bits === 8 ? q.codes[blob + j] : (q.codes[blob + (j >> 1)] >> ((j & 1) * 4)) & 15;
      out[r * q.cols + c] = (code - zero) * q.scales[r * q.blocksPerRow + b];
    }
  }
  return out;
}
