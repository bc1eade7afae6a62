import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { paramFromPath, toApiError } from '../src/errors.ts';
import { BackendError } from '../src/backend.ts';
import { checkContextLength, resolveSlo } from '../src/sampling-params.ts';
import { TextStream, chatLogprobs, legacyLogprobs } from '../src/text-stream.ts';
import { FakeTokenizer } from './fakes.ts';

const tok = new FakeTokenizer();

/** A decoder that holds every other piece back until the next push (like a split UTF-8 character). */
class HoldingTokenizer extends FakeTokenizer {
  override createStreamDecoder() {
    let held = '';
    let n = 0;
    return {
      push: (id: number) => {
        held += this.decode([id]);
        if (++n % 2 === 1) return '';
        const out = held;
        held = '';
        return out;
      },
      flush: () => {
        const out = held;
        held = '';
        return out;
      },
    };
  }
}

function run(ts: TextStream, ids: number[]): string[] {
  const out: string[] = [];
  for (const id of ids) {
    if (ts.stopped) break;
    out.push(ts.push({ type: 'token', id }).text);
  }
  out.push(ts.finish());
  return out;
}

describe('TextStream', () => {
  test('without stop strings it passes the decoder text through, tail on finish', () => {
    const ts = new TextStream(new HoldingTokenizer(), [], [], false);
    const out = run(ts, tok.ids('abcde'));
    assert.deepEqual(out, ['', 'ab', '', 'cd', '', 'e']);
    assert.equal(ts.stopped, false);
  });

  test('a stop string split across tokens and decoder hold-backs is cut out', () => {
    const ids = [...tok.ids('xyS'), tok.id('T'), tok.id('O'), tok.id('P'), ...tok.ids('zz')];
    for (const t of [tok, new HoldingTokenizer()]) {
      const ts = new TextStream(t, [], ['STOP'], false);
      assert.equal(run(ts, ids).join(''), 'xy');
      assert.equal(ts.stopped, true);
    }
  });

  test('a stop string completed by the decoder flush still stops', () => {
    const ts = new TextStream(new HoldingTokenizer(), [], ['cd'], false);
    const out = run(ts, tok.ids('abc'));
    // 'c' is held by the decoder; flush gives 'c' which is a prefix of 'cd', so it is released.
    assert.equal(out.join(''), 'abc');
    const ts2 = new TextStream(new HoldingTokenizer(), [], ['c'], false);
    assert.equal(run(ts2, tok.ids('abc')).join(''), 'ab');
    assert.equal(ts2.stopped, true);
  });

  test('logprob entries carry token texts and alternatives', () => {
    const ts = new TextStream(tok, tok.encode('Once'), [], true);
    const d = ts.push({ type: 'token', id: tok.id('a'), logprob: -0.1, topLogprobs: [{ id: tok.id('b'), logprob: -2 }] });
    assert.deepEqual(d.logprob, { id: tok.id('a'), text: 'a', logprob: -0.1, top: [{ id: tok.id('b'), text: 'b', logprob: -2 }] });
    const none = ts.push({ type: 'token', id: tok.id('c') });
    assert.equal(none.logprob?.logprob, null);
  });
});

describe('logprob formats', () => {
  const entries = [
    { id: 1, text: 'ab', logprob: -1, top: [{ id: 2, text: 'x', logprob: -0.5 }, { id: 3, text: 'y', logprob: -2 }] },
    { id: 4, text: 'c', logprob: -0.25, top: [{ id: 4, text: 'c', logprob: -0.25 }] },
  ];

  test('legacy: top N plus the chosen token, offsets from the start offset', () => {
    const { logprobs, next } = legacyLogprobs(entries, 1, 10);
    assert.deepEqual(logprobs, {
      tokens: ['ab', 'c'],
      token_logprobs: [-1, -0.25],
      top_logprobs: [{ x: -0.5, ab: -1 }, { c: -0.25 }],
      text_offset: [10, 12],
    });
    assert.equal(next, 13);
  });

  test('chat: token, logprob, bytes, top_logprobs', () => {
    const out = chatLogprobs([{ id: 9, text: 'é', logprob: -1, top: entries[0]!.top }], 1);
    assert.deepEqual(out, [{ token: 'é', logprob: -1, bytes: [0xc3, 0xa9], top_logprobs: [{ token: 'x', logprob: -0.5, bytes: [120] }] }]);
  });
});

describe('helpers', () => {
  test('paramFromPath', () => {
    assert.equal(paramFromPath(''), '');
    assert.equal(paramFromPath('/max_tokens'), 'max_tokens');
    assert.equal(paramFromPath('/messages/0/content/1/type'), 'messages[0].content[1].type');
  });

  test('toApiError maps BackendError and hides unknown errors', () => {
    const e = toApiError(new BackendError('busy', 503, 'slo_ttft', 2.2));
    assert.equal(e.status, 503);
    assert.equal(e.headers['retry-after'], '3');
    assert.equal(e.code, 'slo_ttft');
    const u = toApiError(new TypeError('x is undefined'));
    assert.equal(u.status, 500);
    assert.equal(u.message, 'Internal server error.');
  });

  test('context length rules', () => {
    assert.doesNotThrow(() => checkContextLength(10, 54, 64, 'prompt'));
    assert.throws(() => checkContextLength(65, 1, 64, 'prompt'), (e: any) => e.status === 413);
    assert.throws(() => checkContextLength(10, 55, 64, 'prompt'), (e: any) => e.status === 400 && e.code === 'context_length_exceeded');
    assert.throws(() => checkContextLength(64, 0, 64, 'messages'), (e: any) => e.status === 400);
  });

  test('resolveSlo: request fields override defaults field by field', () => {
    assert.equal(resolveSlo(undefined, undefined), undefined);
    assert.deepEqual(resolveSlo({ tpot_ms: 5 }, { ttftMs: 100, tpotMs: 50 }), { ttftMs: 100, tpotMs: 5 });
    assert.deepEqual(resolveSlo(null, { ttftMs: 100 }), { ttftMs: 100 });
  });
});
