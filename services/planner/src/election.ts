// One planner per cluster: a lease on `{prefix}:planner:lock` (SET NX PX), renewed while held.
// The lock's value is this candidate's random token; renewal and release are Lua scripts that
// act only while the value is still ours (a candidate whose lease expired can neither extend nor
// delete its successor's), and every planner write goes through `fenced()` below, which checks
// the token inside the same script, so a paused ex-leader cannot write after losing the lease.
// `{prefix}:planner:epoch` counts elections; the leader's epoch goes into every record it writes.
import { randomBytes } from 'node:crypto';
import type { RedisClient as Redis } from '@pdserve/common';
import type { ClusterKeys } from '@pdserve/common';

const ACQUIRE = `
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
return 0`;

const RENEW = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

export class LeaderLease {
  readonly token: string;
  #epoch = 0;

  constructor(private readonly redis: Redis, private readonly keys: ClusterKeys, readonly candidateId: string, readonly ttlMs: number) {
    this.token = `${candidateId}:${randomBytes(6).toString('hex')}`;
  }

  /** The election count when this candidate won (0 while it does not lead). */
  get epoch(): number {
    return this.#epoch;
  }

  /** Takes the lease if it is free (or extends it if ours). Resolves the epoch, 0 when another leads. Throws on Redis errors. */
  async acquire(): Promise<number> {
    const epoch = Number(await this.redis.eval(ACQUIRE, 2, this.keys.plannerLock, this.keys.plannerEpoch, this.token, String(this.ttlMs)));
    this.#epoch = epoch;
    return epoch;
  }

  /** Extends the lease; false when it is no longer ours. Throws on Redis errors. */
  async renew(): Promise<boolean> {
    const ok = Number(await this.redis.eval(RENEW, 1, this.keys.plannerLock, this.token, String(this.ttlMs))) === 1;
    if (!ok) this.#epoch = 0;
    return ok;
  }

  /** Gives the lease up if it is still ours (a fenced delete). Never throws. */
  async release(): Promise<void> {
    this.#epoch = 0;
    try {
      await this.redis.eval(RELEASE, 1, this.keys.plannerLock, this.token);
    } catch {
      // Unreachable Redis: the lease simply expires.
    }
  }

  /** Who holds the lease now (its token), or null. */
  holder(): Promise<string | null> {
    return this.redis.get(this.keys.plannerLock);
  }

  /**
   * Runs a Lua body only while this candidate holds the lease: KEYS[1] is the lock and ARGV[1]
   * the token, the body's own keys and arguments follow. Resolves undefined when the lease is not
   * ours (nothing was written).
   */
  async fenced(body: string, keys: string[], args: string[]): Promise<unknown> {
    const script = `if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end\n${body}`;
    const r = await this.redis.eval(script, 1 + keys.length, this.keys.plannerLock, ...keys, this.token, ...args);
    return r === null ? undefined : r;
  }
}
