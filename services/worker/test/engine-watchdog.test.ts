// Issue 12 defect 6 (worker side): a busy engine thread that stops reporting makes the worker
// unhealthy; an idle one, or one that reports, does not.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { engineStall } from '../src/engine-watchdog.ts';

test('stalled only while busy and silent past the bound, recovering when progress resumes', () => {
  const limit = 1000;
  assert.equal(engineStall({ busy: true, lastProgressAt: 0 }, 999, limit), undefined, 'within the bound');
  assert.equal(engineStall({ busy: true, lastProgressAt: 0 }, 1500, limit), 1500, 'busy and silent too long');
  assert.equal(engineStall({ busy: false, lastProgressAt: 0 }, 10_000, limit), undefined, 'idle: nothing owed');
  assert.equal(engineStall({ busy: true, lastProgressAt: 9_800 }, 10_000, limit), undefined, 'progress resumed');
});
