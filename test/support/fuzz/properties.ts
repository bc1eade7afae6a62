// The fuzz properties, and the runner shared by test/fuzz.test.ts (a few seconds each) and
// scripts/fuzz.ts (minutes). A property holds when every generated input gets a valid answer and
// no process of the cluster exits; after each property the runner also checks that the cluster
// still serves the golden request and that every worker's KV blocks are all free again.
//
// Reproducible: the inputs are a function of the seed (PDSERVE_FUZZ_SEED), the time limit only
// decides how many of them run. A failure names its seed and fast-check path; replaying them
// (PDSERVE_FUZZ_SEED, PDSERVE_FUZZ_PATH) sends the same input first.
import fc from 'fast-check';
import { extremeInput, httpInput } from './http-inputs.ts';
import { httpProbe } from './http-probe.ts';
import { decodeScenario, garbageCalls, prefillScenario } from './grpc-inputs.ts';
import { decodeProbe, garbageProbe, prefillProbe } from './grpc-probes.ts';
import { clusterProblems, deadProcesses, liveKvLeak, type FuzzTarget } from './target.ts';

export interface FuzzProperty {
  name: string;
  make(t: FuzzTarget): LiveProperty<any>;
}

const SKIP = Symbol('time is up');

/**
 * Wraps a probe as a property. Time-bounded without cutting a run short (fast-check's interrupt
 * would abandon a run mid-flight, leaving its calls to the next property): once the time is up the
 * remaining runs pass without generating or sending anything. After the first failure, shrinking gets its own
 * time. Once the cluster is dead, runs are skipped: shrinking would otherwise "reproduce" the crash
 * with any input, so a crash is reported with the input that caused it.
 */
class LiveProperty<T> {
  executed = 0;
  private dead: string | undefined;
  private stopAt = Infinity;
  private failedAt: number | undefined;

  constructor(private readonly t: FuzzTarget, private readonly arb: fc.Arbitrary<T>, private readonly probe: (input: T) => Promise<void>) {}

  property(limits: { runMs: number; shrinkMs: number }): fc.IAsyncProperty<[T | typeof SKIP]> {
    this.stopAt = performance.now() + limits.runMs;
    const expired = () => performance.now() > (this.failedAt === undefined ? this.stopAt : this.failedAt + limits.shrinkMs);
    // Past the time limit, inputs are not even generated: the remaining runs cost microseconds.
    const arb = fc.constant(null).chain((): fc.Arbitrary<T | typeof SKIP> => (expired() ? fc.constant(SKIP) : this.arb));
    return fc.asyncProperty(arb, async (input) => {
      fc.pre(this.dead === undefined);
      if (input === SKIP || expired()) return;
      this.executed++;
      let failure: unknown;
      try {
        await this.probe(input as T);
        const leak = await liveKvLeak(this.t);
        if (leak) throw new Error(leak);
      } catch (err) {
        failure = err;
      }
      this.dead = await deadProcesses(this.t);
      if (failure || this.dead) this.failedAt ??= performance.now();
      if (this.dead) throw new Error(`${this.dead}${failure ? `; the probe saw: ${(failure as Error).message}` : ''}`);
      if (failure) throw failure;
    });
  }
}

export const properties: FuzzProperty[] = [
  {
    name: 'HTTP /v1/completions and /v1/chat/completions bodies, streamed and not, 1-3 at once',
    make: (t) => new LiveProperty(t, fc.array(httpInput({ modelName: t.modelName, vocab: t.vocab }), { minLength: 1, maxLength: 3 }),
      async (inputs) => { await Promise.all(inputs.map((i) => httpProbe(t, i))); }),
  },
  {
    name: 'HTTP bodies the schema accepts, with every sampling field at an extreme',
    make: (t) => new LiveProperty(t, fc.array(extremeInput({ modelName: t.modelName, vocab: t.vocab }), { minLength: 1, maxLength: 2 }),
      async (inputs) => { await Promise.all(inputs.map((i) => httpProbe(t, i))); }),
  },
  {
    name: 'gRPC Decode.Generate + Decode.PushKv + Cancel scenarios',
    make: (t) => new LiveProperty(t, decodeScenario, (s) => decodeProbe(t, s)),
  },
  {
    name: 'gRPC Prefill.Prefill, after a reservation or not, with cancels racing it',
    make: (t) => new LiveProperty(t, prefillScenario(t.vocab), (s) => prefillProbe(t, s)),
  },
  {
    name: 'gRPC garbage bytes and unknown ids to every method',
    make: (t) => new LiveProperty(t, garbageCalls, (c) => garbageProbe(t, c)),
  },
];

export interface FuzzSettings {
  seed: number;
  numRuns: number;
  /** Per property: no new run starts after this. */
  timeLimitMs: number;
  /** After the first failure: time for shrinking it. */
  shrinkMs: number;
  path?: string;
}

export function settingsFromEnv(defaults: { seed: number; numRuns: number; timeLimitMs: number; shrinkMs: number }): FuzzSettings {
  const num = (name: string, d: number) => {
    const v = process.env[name];
    if (v === undefined || v === '') return d;
    const n = Number(v);
    if (!Number.isInteger(n)) throw new Error(`${name} must be an integer, got ${JSON.stringify(v)}`);
    return n;
  };
  return {
    seed: num('PDSERVE_FUZZ_SEED', defaults.seed),
    numRuns: num('PDSERVE_FUZZ_RUNS', defaults.numRuns),
    timeLimitMs: num('PDSERVE_FUZZ_MS', defaults.timeLimitMs),
    shrinkMs: num('PDSERVE_FUZZ_SHRINK_MS', defaults.shrinkMs),
    path: process.env.PDSERVE_FUZZ_PATH || undefined,
  };
}

export interface PropertyResult {
  property: string;
  seed: number;
  runs: number;
  ms: number;
  /** Empty when the property held and the cluster is whole afterwards. */
  failures: string[];
  /** The failing input, described (giant values abbreviated). */
  counterexample?: string;
  path?: string;
  /** Error lines the cluster logged meanwhile. */
  logs?: string[];
}

/** Runs one property (seeded), then checks the cluster's invariants. */
export async function runProperty(t: FuzzTarget, p: FuzzProperty, s: FuzzSettings): Promise<PropertyResult> {
  const t0 = performance.now();
  const live = p.make(t);
  const details = await fc.check(live.property({ runMs: s.timeLimitMs, shrinkMs: s.shrinkMs }), {
    seed: s.seed, numRuns: s.numRuns, path: s.path, endOnFailure: false, maxSkipsPerRun: 1_000,
  });
  const result: PropertyResult = { property: p.name, seed: s.seed, runs: live.executed, ms: Math.round(performance.now() - t0), failures: [] };
  if (details.failed) {
    result.failures.push(details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance ?? `fast-check: ${details.failed ? 'failed' : 'ok'} after ${details.numRuns} runs, ${details.numSkips} skipped`));
    result.counterexample = describe((details.counterexample as unknown[] | null)?.[0]);
    result.path = details.counterexamplePath ?? undefined;
  }
  for (const f of await clusterProblems(t)) if (!result.failures.some((x) => x.includes(f))) result.failures.push(f);
  return result;
}

/** JSON-ish text of an input with giant strings, arrays and byte buffers abbreviated. */
export function describe(v: unknown): string {
  const seen = (x: unknown, depth: number): unknown => {
    if (typeof x === 'bigint') return `${x}n`;
    if (typeof x === 'string') return x.length > 120 ? `${JSON.stringify(x.slice(0, 40)).slice(0, -1)}…" (${x.length} chars)` : x;
    if (x instanceof Uint8Array) return `bytes(${x.byteLength})[${Buffer.from(x.subarray(0, 24)).toString('hex')}${x.byteLength > 24 ? '…' : ''}]`;
    if (x && typeof x === 'object' && 'text' in x && x.constructor?.name === 'RawJson') return `raw JSON ${seen((x as { text: string }).text, depth)}`;
    if (depth > 12) return '…';
    if (Array.isArray(x)) {
      const items = x.slice(0, 12).map((e) => seen(e, depth + 1));
      return x.length > 12 ? [...items, `… (${x.length} items)`] : items;
    }
    if (x && typeof x === 'object') return Object.fromEntries(Object.entries(x).map(([k, e]) => [k.length > 60 ? `${k.slice(0, 20)}… (${k.length} chars)` : k, seen(e, depth + 1)]));
    if (typeof x === 'number' && !Number.isFinite(x)) return String(x);
    return x;
  };
  return JSON.stringify(seen(v, 0));
}

export function formatResult(r: PropertyResult): string {
  if (r.failures.length === 0) return `ok   ${r.property}: ${r.runs} runs in ${r.ms} ms (seed ${r.seed})`;
  const lines = [`FAIL ${r.property}: after ${r.runs} runs in ${r.ms} ms (seed ${r.seed}${r.path ? `, path ${r.path}` : ''})`];
  for (const f of r.failures) lines.push(`  - ${f}`);
  if (r.counterexample) lines.push(`  input: ${r.counterexample}`);
  for (const l of r.logs ?? []) lines.push(`  log: ${l}`);
  if (r.path) lines.push(`  replay: PDSERVE_FUZZ_SEED=${r.seed} PDSERVE_FUZZ_PATH=${r.path} (this property first)`);
  return lines.join('\n');
}
