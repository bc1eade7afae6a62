import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InFlightByWorker } from '../src/lost-workers.ts';

test('a lost worker fails each watching call once, naming itself; released calls are not called', () => {
  const w = new InFlightByWorker();
  const seen: string[] = [];
  w.watch(['d1', 'p1'], (id) => seen.push(`a:${id}`));
  const releaseB = w.watch(['d1', 'd1'], (id) => seen.push(`b:${id}`));
  w.watch(['d2', 'p1'], (id) => seen.push(`c:${id}`));
  releaseB();
  assert.equal(w.lost('p1'), 2);
  assert.deepEqual(seen.sort(), ['a:p1', 'c:p1']);
  assert.equal(w.lost('d1'), 1, 'a is still watching d1 but has fired already');
  assert.deepEqual(seen.sort(), ['a:p1', 'c:p1']);
  assert.equal(w.lost('d9'), 0);
});
