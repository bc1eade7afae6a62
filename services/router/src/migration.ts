// Request migration (Dynamo's migration, vLLM's recompute-on-failure), the policy half: whether a
// failed attempt is re-placed, and what the next attempt asks for. cluster-backend.ts does the
// mechanism (one attempt = one decode stream plus its prefill).
//
// A request whose worker died or whose stream broke continues on other workers: the prompt plus the
// tokens already handed to the client become the new prompt (prefilled wherever placement says),
// max_tokens and min_tokens shrink by what was already generated, and the sampler skips one random
// draw per generated token (proto SamplingParams.sample_offset), so a seeded or greedy request
// yields exactly the tokens one uninterrupted run would have. The text layer (generation.ts,
// text-stream.ts) sees one continuous token stream and never re-sends anything.
import { BackendError, type SamplingRequest } from './backend.ts';

/** Labels of pdserve_request_migrations_total{reason}. */
export const MIGRATION_REASONS = ['decode_unavailable', 'decode_stream_broken', 'decode_timeout', 'prefill_unavailable', 'prefill_failed', 'prefill_timeout'] as const;
export type MigrationReason = (typeof MIGRATION_REASONS)[number];

export const DEFAULT_MAX_MIGRATIONS = 3;

/** Which call of an attempt failed, as the attempt saw it. */
export type FailedPhase = 'prefill' | 'decode';

export interface MigrationInput {
  err: unknown;
  /** The call that failed; undefined when the attempt failed before any worker call (e.g. pick). */
  phase: FailedPhase | undefined;
  /** Migrations this request already had. */
  migrations: number;
  maxMigrations: number;
  /** The client went away: nothing to continue for. */
  aborted: boolean;
}

export type MigrationDecision = { migrate: true; reason: MigrationReason } | { migrate: false; error: unknown };

/**
 * Worker failures (UNAVAILABLE, a stream that ended or was reset early, a worker gone silent) are
 * migrated; anything about the request itself (400), capacity refusals (503 no_capacity, SLO) and
 * router errors are not, because another worker would answer the same.
 */
export function decideMigration(i: MigrationInput): MigrationDecision {
  if (i.aborted || !(i.err instanceof BackendError) || i.phase === undefined) return { migrate: false, error: i.err };
  const kind = i.err.code === 'worker_unavailable' ? 'unavailable' : i.err.code === 'worker_failed' ? 'broken' : i.err.code === 'worker_timeout' ? 'timeout' : undefined;
  if (kind === undefined) return { migrate: false, error: i.err };
  if (i.migrations >= i.maxMigrations) {
    return {
      migrate: false,
      error: new BackendError(
        `The request's workers failed ${i.migrations + 1} times (${i.maxMigrations} migrations allowed); retry the request.`,
        i.err.status, i.err.code, i.err.retryAfterS ?? 1, i.err.detail,
      ),
    };
  }
  const reason: MigrationReason = i.phase === 'decode'
    ? (kind === 'unavailable' ? 'decode_unavailable' : kind === 'broken' ? 'decode_stream_broken' : 'decode_timeout')
    : (kind === 'unavailable' ? 'prefill_unavailable' : kind === 'broken' ? 'prefill_failed' : 'prefill_timeout');
  return { migrate: true, reason };
}

export interface Continuation {
  promptIds: number[];
  sampling: SamplingRequest;
  /** Random draws the workers' samplers skip (one per generated token). */
  sampleOffset: number;
  /** Nothing is left to generate: the request ends with finish_reason 'length' without a new attempt. */
  exhausted: boolean;
}

/** The next attempt of a request that already generated `generated` (handed to the client). */
export function continuation(promptIds: readonly number[], sampling: SamplingRequest, generated: readonly number[]): Continuation {
  const n = generated.length;
  return {
    promptIds: [...promptIds, ...generated],
    sampling: { ...sampling, maxTokens: Math.max(0, sampling.maxTokens - n), minTokens: Math.max(0, sampling.minTokens - n) },
    sampleOffset: n,
    exhausted: sampling.maxTokens - n <= 0,
  };
}
