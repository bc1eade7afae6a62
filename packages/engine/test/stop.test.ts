import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StopMatcher } from '../src/sampling/stop.ts';

/** Streams `deltas` through a matcher; returns what was emitted (flushed at the end) and the stop. */
function run(stop: string[], deltas: string[]): { text: string; stopped: boolean; matched?: string; emits: string[] } {
  const m = new StopMatcher(stop);
  const emits: string[] = [];
  for (const d of deltas) {
    const r = m.push(d);
    emits.push(r.emit);
    if (r.stopped) return { text: emits.join(''), stopped: true, matched: r.matched, emits };
  }
  const rest = m.flush();
  emits.push(rest);
  return { text: emits.join(''), stopped: false, emits };
}

/** Every way of cutting `text` into deltas of 1..3 characters, for a few patterns. */
function splits(text: string): string[][] {
  const out: string[][] = [[text], [...text]];
  for (const size of [2, 3]) {
    const parts: string[] = [];
    for (let i = 0; i < text.length; i += size) parts.push(text.slice(i, i + size));
    out.push(parts);
  }
  return out;
}

test('a stop string split across deltas is found and not emitted', () => {
  const r = run(['</end>'], ['Hello </', 'en', 'd> and more']);
  assert.equal(r.text, 'Hello ');
  assert.equal(r.stopped, true);
  assert.equal(r.matched, '</end>');
  // The possible start is held back while it could still be the stop string.
  assert.deepEqual(r.emits, ['Hello ', '', '']);
});

test('text goes out as soon as it cannot start a stop string (no false hold)', () => {
  const m = new StopMatcher(['STOP']);
  assert.deepEqual(m.push('abc'), { emit: 'abc', stopped: false });
  assert.deepEqual(m.push('xS'), { emit: 'x', stopped: false });
  assert.deepEqual(m.push('T'), { emit: '', stopped: false });
  assert.deepEqual(m.push('x'), { emit: 'STx', stopped: false }); // "STx" is no prefix of STOP
  assert.deepEqual(m.push('SSTO'), { emit: 'S', stopped: false }); // only "STO" can still grow
  assert.equal(m.flush(), 'STO');
  assert.equal(m.stopped, false);
  // A held prefix that turns out to be followed by a restart of the stop string.
  assert.equal(run(['abc'], ['a', 'a', 'b', 'a', 'b', 'c']).text, 'aab');
});

test('multiple stop strings: the first to complete wins, whatever the delta boundaries', () => {
  const cases: Array<[string[], string, string, string | undefined]> = [
    [['\n\n', 'User:'], 'Sure.\nUser: hi', 'Sure.\n', 'User:'],
    [['abcd', 'bc'], 'xxabcd', 'xxa', 'bc'], // "bc" completes first
    [['bcd', 'abcd'], 'xabcd', 'x', 'abcd'], // same end: the longer (earlier start) wins
    [['aa'], 'baaa', 'b', 'aa'],
    [['the end', 'end.'], 'in the end.', 'in ', 'the end'],
    [['😀'], 'smile 😀 now', 'smile ', '😀'],
    [['x'], 'no match here', 'no match here', undefined],
  ];
  for (const [stops, text, want, matched] of cases) {
    for (const deltas of splits(text)) {
      const r = run(stops, deltas);
      assert.equal(r.text, want, `${JSON.stringify(stops)} over ${JSON.stringify(deltas)}`);
      assert.equal(r.matched, matched);
      assert.equal(r.stopped, matched !== undefined);
    }
  }
});

test('after a stop nothing more comes out; without stops everything passes through', () => {
  const m = new StopMatcher(['.']);
  assert.deepEqual(m.push('one. two'), { emit: 'one', stopped: true, matched: '.' });
  assert.deepEqual(m.push('three'), { emit: '', stopped: true });
  assert.equal(m.flush(), '');
  assert.equal(m.stopped, true);
  const none = new StopMatcher([]);
  assert.deepEqual(none.push('a.b'), { emit: 'a.b', stopped: false });
  assert.equal(none.flush(), '');
  // Empty stop strings are ignored rather than matching everywhere.
  assert.equal(run(['', 'zz'], ['a', 'b']).text, 'ab');
  // A stop string at the very start gives empty text.
  assert.deepEqual(run(['Hi'], ['Hi there']), { text: '', stopped: true, matched: 'Hi', emits: [''] });
});

test('empty deltas and a held tail flushed at the end', () => {
  const m = new StopMatcher(['###']);
  assert.deepEqual(m.push(''), { emit: '', stopped: false });
  assert.deepEqual(m.push('a#'), { emit: 'a', stopped: false });
  assert.deepEqual(m.push('#'), { emit: '', stopped: false });
  assert.deepEqual(m.push(''), { emit: '', stopped: false });
  assert.equal(m.flush(), '##');
  assert.equal(m.flush(), '');
});
