// Identity of KV blocks for prefix caching: a hash chain over the token ids of a sequence's full
// blocks, as vLLM's automatic prefix caching builds it. Block i's hash covers block i-1's, so one
// hash names the whole prefix up to and including its block; the root covers what else decides the
// bytes of a block (the model, the block layout, the block size), so blocks of different models or
// layouts never share a hash. 64 bits: enough that a collision is rare, and a collision is harmless
// anyway because every reuse compares the stored token ids first (prefix-cache.ts).
import { createHash } from 'node:crypto';
import { KV_LAYOUT } from './layout.ts';

/** 16 lowercase hex digits: the first 64 bits of a SHA-256. */
export type BlockHash = string;

export const PREFIX_HASH_VERSION = 'pdserve-prefix/1';

export interface PrefixIdentity {
  /** Whatever identifies the weights and graph (e.g. a digest of the model's config.json). */
  model: string;
  blockTokens: number;
  layout?: string;
}

/** The parent of block 0. */
export function prefixRootHash(id: PrefixIdentity): BlockHash {
  return createHash('sha256')
    .update(`${PREFIX_HASH_VERSION}\0${id.layout ?? KV_LAYOUT}\0${id.blockTokens}\0${id.model}`)
    .digest('hex')
    .slice(0, 16);
}

/** Hash of one full block given its parent's hash and its token ids. */
export function blockHash(parent: BlockHash, tokens: ArrayLike<number>, start: number, blockTokens: number): BlockHash {
  const buf = Buffer.allocUnsafe(8 + 4 * blockTokens);
  buf.write(parent, 0, 8, 'hex');
  for (let i = 0; i < blockTokens; i++) buf.writeUInt32LE(tokens[start + i] >>> 0, 8 + 4 * i);
  return createHash('sha256').update(buf).digest('hex').slice(0, 16);
}

/**
 * Extends `hashes` (the chain of `tokens`' first hashes.length blocks) to cover `blocks` full blocks
 * (at most those `tokens` fills), in place; returns it.
 */
export function extendBlockHashes(root: BlockHash, hashes: BlockHash[], tokens: ArrayLike<number>, blockTokens: number, blocks = Math.floor(tokens.length / blockTokens)): BlockHash[] {
  const upTo = Math.min(blocks, Math.floor(tokens.length / blockTokens));
  for (let b = hashes.length; b < upTo; b++) hashes.push(blockHash(b === 0 ? root : hashes[b - 1], tokens, b * blockTokens, blockTokens));
  return hashes;
}

/** The chain of hashes of `tokens`' full blocks (at most `maxBlocks`). */
export function blockHashChain(root: BlockHash, tokens: ArrayLike<number>, blockTokens: number, maxBlocks?: number): BlockHash[] {
  return extendBlockHashes(root, [], tokens, blockTokens, maxBlocks);
}
