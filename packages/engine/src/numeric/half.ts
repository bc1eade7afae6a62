// IEEE 754 half-precision decoding, shared by the safetensors reader (F16 weights) and the KV wire
// codec (fp16 blocks).

let table: Float32Array | undefined;

/**
 * Every one of the 65536 halves as a float32 (256 KiB, built once on first use; exact: every half
 * is representable in float32), so decoding is one table read per value.
 */
export function halfToFloat32Table(): Float32Array {
  if (table) return table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) t[h] = sign * frac * 2 ** -24;
    else if (exp === 31) t[h] = frac ? NaN : sign * Infinity;
    else t[h] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return (table = t);
}
