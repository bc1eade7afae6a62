// The one byte layout of KV-cache blocks, shared by serialization, gRPC transfer and every runner.
//
// Layout `pdserve-kv/1`: a block holds `blockTokens` consecutive positions of one sequence across
// all layers, float32 little-endian:
//
//   for layer in 0 .. n_layers-1:
//     keys   [kv_heads][blockTokens][head_dim]
//     values [kv_heads][blockTokens][head_dim]
//
// Positions past the sequence's length in its last block are zero. Block b of a sequence covers
// positions [b*blockTokens, (b+1)*blockTokens).

export const KV_LAYOUT = 'pdserve-kv/1';

export interface KvShape {
  layers: number;
  kvHeads: number;
  headDim: number;
  blockTokens: number;
}

export function blockBytes(s: KvShape): number {
  return s.layers * 2 * s.kvHeads * s.blockTokens * s.headDim * 4;
}

export function blocksFor(tokens: number, blockTokens: number): number {
  return Math.ceil(tokens / blockTokens);
}

/** Float offset, inside one block, of (layer, kind 0=keys/1=values, head, token 0). */
export function blockOffset(s: KvShape, layer: number, kind: 0 | 1, head: number): number {
  return ((layer * 2 + kind) * s.kvHeads + head) * s.blockTokens * s.headDim;
}
