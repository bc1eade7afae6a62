// The TPOT budgets the router keeps per worker (decode-budget.ts), on a fake clock.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { DecodeBudgets, expectedOutputTokens } from '../src/decode-budget.ts';

describe('decode budgets', () => {
  test("a running request's slack: its SLO over its expected tokens, less what it spent and what its remaining steps will take", () => {
    let now = 0;
    const b = new DecodeBudgets(() => now);
    const r = b.track('w', 100, 11); // 10 gaps of at most 100 ms
    const near = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-9, `${a} != ${b}`);
    near(b.slack('w', 45, 0, 0.9)!.slackMs, 1000 - (10 * 45) / 0.9);
    r.tokens(1); // first token at t = 0
    now = 200;
    r.tokens(2); // 3 of 11 after 200 ms (a stall of ~100 ms among them)
    const s = b.slack('w', 45, 0, 0.9)!;
    assert.equal(s.requests, 1);
    near(s.slackMs, 1000 - 200 - (8 * 45) / 0.9); // the time spent is measured: no margin on it
    // Prompts already queued there stall it before this one would.
    near(b.slack('w', 45, 90, 0.9)!.slackMs, s.slackMs - 100);
    assert.equal(b.slack('other', 50, 0, 0.9), undefined, 'nothing followed there');
  });

  test('the tightest request sets the slack; a queued one does not pay for the prompts ahead of it', () => {
    let now = 0;
    const b = new DecodeBudgets(() => now);
    const old = b.track('w', 100, 11);
    old.tokens(1);
    now = 600;
    old.tokens(5); // 6 of 11 after 600 ms: 300 ms left of 900 for 5 more
    b.track('w', 100, 101); // queued, long: plenty
    const s = b.slack('w', 50, 200, 1)!;
    assert.deepEqual(s, { slackMs: 1000 - 600 - 5 * 50 - 200, requests: 2 });
  });

  test('a burst: each queued prompt stalls the requests admitted before it, and all of them stall the one decoding', () => {
    let now = 0;
    const b = new DecodeBudgets(() => now);
    const running = b.track('w', 100, 11, 0);
    running.tokens(1);
    const q = [b.track('w', 100, 11, 300), b.track('w', 100, 11, 300), b.track('w', 100, 11, 300)];
    // Step 0 to isolate the stalls: the running request pays 900 ms (all three prompts), more
    // than the 100 ms the worker reports queued; the first queued one pays 600, the last none.
    assert.equal(b.slack('w', 0, 100, 1)!.slackMs, 1000 - 900);
    q[0]!.tokens(1); // the first queued prompt is done: it now pays for the two behind it
    running.ended();
    assert.equal(b.slack('w', 0, 0, 1)!.slackMs, 1000 - 600);
    for (const r of q) r.ended();
  });

  test('a request running past its expected length expects one more token; ended requests are forgotten', () => {
    let now = 0;
    const b = new DecodeBudgets(() => now);
    const r = b.track('w', 100, 4);
    r.tokens(1);
    now = 300;
    r.tokens(5); // 6 tokens, 4 expected
    assert.equal(b.slack('w', 50, 0, 1)!.slackMs, 100 * 6 - 300 - 1 * 50);
    r.ended();
    r.ended();
    assert.equal(b.count('w'), 0);
    assert.equal(b.workers, 0);
  });

  test('expected output: the limit when EOS is ignored, else capped by the typical length', () => {
    assert.equal(expectedOutputTokens(256, true, 40), 256);
    assert.equal(expectedOutputTokens(4000, false, 40), 40);
    assert.equal(expectedOutputTokens(16, false, 40), 16);
    assert.equal(expectedOutputTokens(4000, false, undefined), 4000);
    assert.equal(expectedOutputTokens(0, true, undefined), 2);
  });
});
