// Turns one row of logits into the next token: greedy (temperature 0, exactly run.c's argmax) or
// a seeded draw from softmax(logits / temperature) restricted by top-k and then top-p, as vLLM
// does. Optionally reports log-probabilities of the raw logits (temperature 1, as OpenAI and vLLM
// report them). Built for vocabularies of ~50k: top-k uses a bounded heap, top-p sorts only the
// ids near its boundary, plain sampling sorts nothing, and scratch buffers are reused across calls.
// Every sample() with temperature > 0 takes exactly one random number (see skip()).
import { createRng, type Rng } from './rng.ts';

export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  /** Keep the k most likely ids; 0 or -1 = off. */
  topK: number;
  /** Keep the smallest set of most likely ids whose probability reaches topP; 1 = off. */
  topP: number;
  /** Same seed, same draws; none = a random seed (see Sampler.seed). */
  seed?: number;
  /** Top-N alternatives to report; 0 = the chosen id's logprob only; undefined = none. */
  logprobs?: number;
}

export interface SampledToken {
  id: number;
  /** log-softmax of the raw logits at `id`, when logprobs were asked for. */
  logprob?: number;
  /** The N most likely ids (best first, ties by lower id), when logprobs > 0. */
  topLogprobs?: Array<{ id: number; logprob: number }>;
}

/** Bad sampling parameters: the message names the parameter (the router and workers answer 400 / INVALID_ARGUMENT). */
export class InvalidSamplingParamsError extends RangeError {
  override name = 'InvalidSamplingParamsError';
}

/** Throws an InvalidSamplingParamsError that names the first bad parameter. */
export function validateSamplingParams(p: SamplingParams): void {
  const bad = (m: string): never => { throw new InvalidSamplingParamsError(m); };
  if (!Number.isFinite(p.temperature) || p.temperature < 0) bad(`temperature must be a finite number >= 0, got ${p.temperature}`);
  if (!Number.isSafeInteger(p.topK) || p.topK < -1) bad(`top_k must be an integer >= -1, got ${p.topK}`);
  if (!(p.topP > 0 && p.topP <= 1)) bad(`top_p must be in (0, 1], got ${p.topP}`);
  if (p.seed !== undefined && !Number.isSafeInteger(p.seed)) bad(`seed must be a safe integer, got ${p.seed}`);
  if (p.logprobs !== undefined && (!Number.isInteger(p.logprobs) || p.logprobs < 0)) bad(`logprobs must be an integer >= 0, got ${p.logprobs}`);
}

/** selectTop keeps up to this many best in a heap; more use quickselect. */
const HEAP_SELECTION = 1024;
/** Top-p buckets: 16 per nat of log-probability, 512 of them (32 nats); the last takes the rest. */
const BUCKETS_PER_NAT = 16;
const BUCKETS = 512;

export class Sampler {
  readonly params: Readonly<SamplingParams>;
  /** The seed in use (the request's, or a random one); undefined for greedy sampling. */
  readonly seed: number | undefined;
  private readonly rng: Rng | undefined;
  // Scratch, grown to the vocabulary size on first use.
  private weights = new Float64Array(0);
  private order = new Int32Array(0);
  private clean = new Float32Array(0);
  private bucketOf = new Uint16Array(0);
  private readonly bucketMass = new Float64Array(BUCKETS);

  constructor(params: SamplingParams) {
    validateSamplingParams(params);
    this.params = { ...params };
    if (params.temperature > 0) {
      this.rng = createRng(params.seed);
      this.seed = this.rng.seed;
    }
  }

  /**
   * Advances the random stream past `tokens` samples (one draw each), so a worker that continues a
   * sequence another worker started draws exactly what one uninterrupted sampler would have.
   * Relies on sample() taking exactly one random number per call when temperature > 0.
   */
  skip(tokens: number): void {
    if (!this.rng) return;
    for (let i = 0; i < tokens; i++) this.rng.nextFloat();
  }

  /** Samples from logits[offset, offset + vocab) (a row of a larger batch buffer, say). */
  sample(logits: Float32Array, offset = 0, vocab = logits.length - offset): SampledToken {
    if (!Number.isInteger(offset) || !Number.isInteger(vocab) || offset < 0 || vocab <= 0 || offset + vocab > logits.length) {
      throw new RangeError(`logits row [${offset}, ${offset + vocab}) is outside a buffer of ${logits.length}`);
    }
    this.grow(vocab);
    const row = this.sanitize(logits.subarray(offset, offset + vocab));
    const best = argmax(row);
    const max = row[best];
    let id: number;
    let sumAtT1: number | undefined;
    if (this.rng === undefined) {
      id = best;
    } else if (max === Infinity || max === -Infinity) {
      // Nothing to draw from (+inf dominates; all -inf means nothing is allowed). The random
      // number is still taken: every sample uses exactly one, which keeps skip() exact.
      this.rng.nextFloat();
      id = best;
    } else {
      const drawn = this.draw(row, max, this.rng);
      id = drawn.id;
      if (this.params.temperature === 1) sumAtT1 = drawn.sum;
    }
    const out: SampledToken = { id };
    const n = this.params.logprobs;
    if (n !== undefined) {
      // log-softmax at temperature 1: x - (max + log sum exp(x - max)).
      const lse = max + Math.log(sumAtT1 ?? sumExp(row, max, 1));
      out.logprob = row[id] - lse;
      if (n > 0) {
        const k = selectTop(row, Math.min(n, vocab), this.order);
        out.topLogprobs = [];
        for (let i = 0; i < k; i++) out.topLogprobs.push({ id: this.order[i], logprob: row[this.order[i]] - lse });
      }
    }
    return out;
  }

  /**
   * softmax(row / T), top-k, then top-p over what top-k kept (renormalized), then one draw.
   * Returns the id, and the sum of exp((x - max) / T) over the whole row when it was computed.
   */
  private draw(row: Float32Array, max: number, rng: Rng): { id: number; sum?: number } {
    const vocab = row.length;
    const invT = 1 / this.params.temperature;
    const topK = this.params.topK > 0 && this.params.topK < vocab ? this.params.topK : 0;
    const topP = this.params.topP;
    const w = this.weights;
    if (topK > 0) {
      // Only the k candidates need weights; they come sorted, best first, and are drawn in that
      // order. w is indexed by rank here.
      const order = this.order;
      let count = selectTop(row, topK, order);
      let mass = 0;
      for (let r = 0; r < count; r++) mass += w[r] = Math.exp((row[order[r]] - max) * invT);
      if (topP < 1) {
        // Smallest prefix (at least one id) whose probability reaches topP.
        const target = topP * mass;
        let cum = 0;
        let keep = 0;
        while (keep < count) {
          cum += w[keep++];
          if (cum >= target) break;
        }
        count = keep;
        mass = cum;
      }
      const u = rng.nextFloat() * mass;
      let cum = 0;
      let last = order[0];
      for (let r = 0; r < count; r++) {
        if (w[r] === 0) continue;
        cum += w[r];
        last = order[r];
        if (u < cum) return { id: last };
      }
      return { id: last }; // u fell past the end through rounding
    }
    let sum = 0;
    for (let i = 0; i < vocab; i++) sum += w[i] = Math.exp((row[i] - max) * invT);
    if (topP >= 1) return { id: drawInIdOrder(w, vocab, rng.nextFloat() * sum, -Infinity, vocab, row), sum };
    const { x, id, mass } = this.nucleusBoundary(row, max, invT, topP * sum);
    return { id: drawInIdOrder(w, vocab, rng.nextFloat() * mass, x, id, row), sum };
  }

  /**
   * The last id of the nucleus in (logit desc, id asc) order, found without sorting the
   * vocabulary: ids are bucketed by log-probability (BUCKETS_PER_NAT buckets per nat below the
   * best), the bucket where the cumulative mass reaches `target` is the only one sorted, and every
   * id in a better bucket is in. The nucleus is then {i : x_i > x or (x_i == x and i <= id)}.
   */
  private nucleusBoundary(row: Float32Array, max: number, invT: number, target: number): { x: number; id: number; mass: number } {
    const vocab = row.length;
    const w = this.weights;
    const bucketOf = this.bucketOf;
    const bucketMass = this.bucketMass.fill(0);
    const scale = invT * BUCKETS_PER_NAT;
    for (let i = 0; i < vocab; i++) {
      const b = Math.min(BUCKETS - 1, Math.floor((max - row[i]) * scale));
      bucketOf[i] = b;
      bucketMass[b] += w[i];
    }
    let cum = 0;
    let cross = 0;
    for (; cross < BUCKETS - 1; cross++) {
      if (cum + bucketMass[cross] >= target) break;
      cum += bucketMass[cross];
    }
    const order = this.order;
    let count = 0;
    for (let i = 0; i < vocab; i++) if (bucketOf[i] === cross) order[count++] = i;
    // Rounding can leave the target unreached with the last bucket empty: then everything is in.
    if (count === 0) return { x: -Infinity, id: vocab, mass: cum };
    const members = order.subarray(0, count).sort((a, b) => compareDesc(row, a, b));
    let last = members[0];
    for (let r = 0; r < count; r++) {
      last = members[r];
      cum += w[last];
      if (cum >= target) break;
    }
    return { x: row[last], id: last, mass: cum };
  }

  private grow(vocab: number): void {
    if (this.order.length >= vocab) return;
    this.weights = new Float64Array(vocab);
    this.order = new Int32Array(vocab);
    this.clean = new Float32Array(vocab);
    this.bucketOf = new Uint16Array(vocab);
  }

  /** NaN logits count as -inf (never chosen), so comparisons below form a total order. */
  private sanitize(row: Float32Array): Float32Array {
    let nan = false;
    for (let i = 0; i < row.length && !nan; i++) nan = row[i] !== row[i];
    if (!nan) return row;
    const clean = this.clean.subarray(0, row.length);
    for (let i = 0; i < row.length; i++) clean[i] = row[i] !== row[i] ? -Infinity : row[i];
    return clean;
  }
}

/** First index of the largest value: ties go to the lowest id, as run.c's argmax. */
export function argmax(row: Float32Array): number {
  let best = 0;
  let max = row[0];
  for (let i = 1; i < row.length; i++) {
    if (row[i] > max) {
      max = row[i];
      best = i;
    }
  }
  return best;
}

function sumExp(row: Float32Array, max: number, temperature: number): number {
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp((row[i] - max) / temperature);
  return sum;
}

/** a before b: larger value first, then lower id. */
function compareDesc(row: Float32Array, a: number, b: number): number {
  const d = row[b] - row[a];
  if (d !== 0 && d === d) return d;
  // Equal values (or inf - inf = NaN for two equal infinities): lower id first.
  return row[a] === row[b] ? a - b : row[a] > row[b] ? -1 : 1;
}

/**
 * The draw over a whole row in id order: the first id where the running sum of w passes u,
 * among the ids in {i : row[i] > x or (row[i] == x and i <= id)} (everything when x = -inf and
 * id = vocab). Ids of weight 0 are never returned.
 */
function drawInIdOrder(w: Float64Array, vocab: number, u: number, x: number, id: number, row: Float32Array): number {
  let cum = 0;
  let last = -1;
  for (let i = 0; i < vocab; i++) {
    if (w[i] === 0 || row[i] < x || (row[i] === x && i > id)) continue;
    cum += w[i];
    last = i;
    if (u < cum) return i;
  }
  return last < 0 ? id : last; // u fell past the end through rounding
}

/**
 * Puts the indices of the k largest values of `row` into out[0, k), best first (ties by lower
 * id), and returns k (capped at row.length). Up to HEAP_SELECTION: one pass keeping a min-heap of
 * the best k (O(n log k), and most ids are rejected by one comparison with the heap's worst);
 * beyond: quickselect. Then a sort of the k kept.
 */
export function selectTop(row: Float32Array, k: number, out: Int32Array): number {
  const n = row.length;
  k = Math.min(k, n);
  if (k <= 0) return 0;
  if (k < n && k <= HEAP_SELECTION) {
    // out[0, k) is a heap with the worst kept at the root. Ids come in increasing order, so a new
    // id ties with a kept one as the worse of the two: it must be strictly larger to get in.
    for (let i = 0; i < k; i++) {
      out[i] = i;
      siftUp(row, out, i);
    }
    for (let i = k; i < n; i++) {
      if (row[i] > row[out[0]]) {
        out[0] = i;
        siftDown(row, out, k);
      }
    }
  } else {
    for (let i = 0; i < n; i++) out[i] = i;
    if (k < n) quickselect(row, out, n, k);
  }
  out.subarray(0, k).sort((a, b) => compareDesc(row, a, b));
  return k;
}

/** a is worse than b: smaller value, or equal value and higher id. */
function worse(row: Float32Array, a: number, b: number): boolean {
  return row[a] < row[b] || (row[a] === row[b] && a > b);
}

function siftUp(row: Float32Array, heap: Int32Array, i: number): void {
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (!worse(row, heap[i], heap[parent])) return;
    const t = heap[i];
    heap[i] = heap[parent];
    heap[parent] = t;
    i = parent;
  }
}

function siftDown(row: Float32Array, heap: Int32Array, size: number): void {
  let i = 0;
  for (;;) {
    const l = 2 * i + 1;
    const r = l + 1;
    let m = i;
    if (l < size && worse(row, heap[l], heap[m])) m = l;
    if (r < size && worse(row, heap[r], heap[m])) m = r;
    if (m === i) return;
    const t = heap[i];
    heap[i] = heap[m];
    heap[m] = t;
    i = m;
  }
}

/** Rearranges out[0, n) so that its first k entries are the k best (in no particular order). */
function quickselect(row: Float32Array, out: Int32Array, n: number, k: number): void {
  const before = (a: number, b: number): boolean => compareDesc(row, a, b) < 0;
  const swap = (i: number, j: number): void => {
    const t = out[i];
    out[i] = out[j];
    out[j] = t;
  };
  let lo = 0;
  let hi = n - 1;
  while (hi > lo) {
    // Median of three as pivot, moved to hi; the order is strict (ties broken by id), so
    // Lomuto partitioning cannot degrade on runs of equal values.
    const mid = (lo + hi) >>> 1;
    if (before(out[mid], out[lo])) swap(mid, lo);
    if (before(out[hi], out[lo])) swap(hi, lo);
    if (before(out[mid], out[hi])) swap(mid, hi);
    const pivot = out[hi];
    let store = lo;
    for (let i = lo; i < hi; i++) {
      if (before(out[i], pivot)) swap(i, store++);
    }
    swap(store, hi);
    if (store === k - 1 || store === k) return;
    if (store > k) hi = store - 1;
    else lo = store + 1;
  }
}
