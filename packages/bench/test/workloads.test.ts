import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MULTITURN_FIRST_INPUT, WORDS, WORKLOAD_SPECS, clipLengths, generateLengths, generateRequests, parsePhases, phaseOf } from '../src/index.ts';

const base = { n: 200, seed: 5, endpoint: 'completions' as const, vocabSize: 1000, minTokenId: 3 };

test('workload lengths are deterministic in the seed and inside the documented ranges', () => {
  for (const workload of ['chat', 'summarize'] as const) {
    const a = generateLengths({ ...base, workload });
    assert.deepEqual(a, generateLengths({ ...base, workload }));
    assert.notDeepEqual(a, generateLengths({ ...base, workload, seed: 6 }));
    const spec = WORKLOAD_SPECS[workload];
    for (const l of a) {
      assert.equal(l.kind, workload);
      assert.ok(l.promptLen >= spec.input.min && l.promptLen <= spec.input.max);
      assert.ok(l.outputLen >= spec.output.min && l.outputLen <= spec.output.max);
    }
    // Spread over the range, not a constant.
    assert.ok(new Set(a.map((l) => l.promptLen)).size > 50);
  }
});

test('mixed draws both kinds, deterministically', () => {
  const a = generateLengths({ ...base, workload: 'mixed' });
  assert.deepEqual(a, generateLengths({ ...base, workload: 'mixed' }));
  const chats = a.filter((l) => l.kind === 'chat').length;
  assert.ok(chats > 60 && chats < 140, `chat share ${chats}/200`);
});

test('scales, overrides and max_model_len clipping', () => {
  const plain = generateLengths({ ...base, workload: 'chat' });
  const scaled = generateLengths({ ...base, workload: 'chat', inputLenScale: 0.25, outputLenScale: 0.1 });
  for (let i = 0; i < plain.length; i++) {
    assert.equal(scaled[i].promptLen, Math.max(1, Math.round(plain[i].promptLen * 0.25)));
    assert.equal(scaled[i].outputLen, Math.max(1, Math.round(plain[i].outputLen * 0.1)));
  }
  const fixed = generateLengths({ ...base, workload: 'summarize', inputLen: 17, outputLen: 3 });
  assert.ok(fixed.every((l) => l.promptLen === 17 && l.outputLen === 3));
  // Overriding one length leaves the other's sequence unchanged.
  const onlyOut = generateLengths({ ...base, workload: 'chat', outputLen: 9 });
  assert.deepEqual(onlyOut.map((l) => l.promptLen), plain.map((l) => l.promptLen));

  const clipped = generateLengths({ ...base, workload: 'summarize', maxModelLen: 256 });
  for (const l of clipped) {
    assert.ok(l.promptLen + l.outputLen <= 256);
    assert.ok(l.promptLen >= 1 && l.outputLen >= 1);
    assert.equal(l.clipped, true);
    assert.ok(l.promptLen > l.outputLen); // keeps the summarize balance
  }
  assert.deepEqual(clipLengths(100, 50, 150), [100, 50, false]);
  assert.deepEqual(clipLengths(300, 100, 200), [150, 50, true]);
  assert.deepEqual(clipLengths(1000, 1, 10), [9, 1, true]);
  assert.throws(() => generateLengths({ ...base, workload: 'chat', inputLen: 0 }));
  assert.throws(() => generateLengths({ ...base, workload: 'nope' as 'chat' }));
});

test('completions prompts are token ids in [minTokenId, vocab); chat prompts are words', () => {
  const reqs = generateRequests({ ...base, workload: 'chat', vocabSize: 32, minTokenId: 5 });
  assert.deepEqual(reqs, generateRequests({ ...base, workload: 'chat', vocabSize: 32, minTokenId: 5 }));
  const seen = new Set<number>();
  for (const r of reqs) {
    assert.equal(r.promptTokenIds!.length, r.promptLen);
    for (const id of r.promptTokenIds!) {
      assert.ok(Number.isInteger(id) && id >= 5 && id < 32);
      seen.add(id);
    }
  }
  assert.equal(seen.size, 27);
  const chat = generateRequests({ ...base, n: 5, workload: 'chat', endpoint: 'chat' });
  for (const r of chat) {
    const words = r.promptText!.split(' ');
    assert.equal(words.length, r.promptLen);
    assert.ok(words.every((w) => WORDS.includes(w)));
  }
  assert.throws(() => generateRequests({ ...base, workload: 'chat', vocabSize: 3, minTokenId: 3 }));
});

test('shifting: equal phases in order (summarize, chat, summarize by default), each drawn from its own workload', () => {
  const base = { n: 10, seed: 3 };
  const a = generateLengths({ ...base, workload: 'shifting' });
  assert.deepEqual(a.map((l) => l.phase), [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]);
  assert.deepEqual(a.map((l) => l.kind), ['summarize', 'summarize', 'summarize', 'summarize', 'chat', 'chat', 'chat', 'summarize', 'summarize', 'summarize']);
  for (const l of a) {
    const spec = WORKLOAD_SPECS[l.kind];
    assert.ok(l.promptLen >= spec.input.min && l.promptLen <= spec.input.max);
  }
  assert.deepEqual(a, generateLengths({ ...base, workload: 'shifting' }));
  const custom = generateLengths({ ...base, workload: 'shifting', phases: parsePhases('chat, summarize') });
  assert.deepEqual(custom.map((l) => `${l.phase}${l.kind[0]}`), ['0c', '0c', '0c', '0c', '0c', '1s', '1s', '1s', '1s', '1s']);
  // Other workloads carry no phase, and their draws are unchanged by the phase machinery.
  assert.equal(generateLengths({ ...base, workload: 'chat' })[0]!.phase, undefined);
  assert.throws(() => parsePhases('chat,shifting'), /invalid phases/);
  assert.throws(() => parsePhases(''), /invalid phases/);
  assert.equal(phaseOf(99, 100, 3), 2);
});

test('prefix workload: every request starts with its group\'s shared system prompt, then its own turn', () => {
  const reqs = generateRequests({ ...base, workload: 'prefix', n: 9, prefixLen: 100, prefixGroups: 3 });
  const spec = WORKLOAD_SPECS.prefix;
  for (const r of reqs) {
    assert.equal(r.kind, 'prefix');
    assert.equal(r.prefixGroup, r.index % 3);
    assert.equal(r.prefixLen, 100);
    assert.ok(r.promptLen >= 100 + spec.input.min && r.promptLen <= 100 + spec.input.max);
    assert.equal(r.promptTokenIds!.length, r.promptLen);
    assert.deepEqual(r.promptTokenIds!.slice(0, 100), reqs[r.index % 3].promptTokenIds!.slice(0, 100), 'same group, same prefix');
  }
  assert.notDeepEqual(reqs[0].promptTokenIds!.slice(0, 100), reqs[1].promptTokenIds!.slice(0, 100), 'groups differ');
  assert.notDeepEqual(reqs[0].promptTokenIds!.slice(100, 116), reqs[3].promptTokenIds!.slice(100, 116), 'turns differ');
  // --input-len fixes the turn: the 1024 + 32 shape of the TTFT benchmark.
  const fixed = generateRequests({ ...base, workload: 'prefix', n: 2, inputLen: 32, vocabSize: 49152 });
  assert.deepEqual(fixed.map((r) => r.promptLen), [1056, 1056]);
  const chat = generateRequests({ ...base, workload: 'prefix', n: 2, prefixLen: 20, endpoint: 'chat' });
  assert.equal(chat[0].promptText!.split(' ').slice(0, 20).join(' '), chat[1].promptText!.split(' ').slice(0, 20).join(' '));
  assert.throws(() => parsePhases('chat,prefix'));
});

test('multiturn: each turn\'s prompt is the conversation so far plus its own turn; an outgrown conversation ends early', () => {
  const reqs = generateRequests({ ...base, workload: 'multiturn', n: 8, turns: 4 });
  assert.deepEqual(reqs.map((r) => [r.conversation, r.turn]), [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0], [1, 1], [1, 2], [1, 3]]);
  for (const r of reqs) {
    assert.equal(r.kind, 'multiturn');
    assert.equal(r.promptTokenIds!.length, r.promptLen);
    const spec = r.turn === 0 ? MULTITURN_FIRST_INPUT : WORKLOAD_SPECS.multiturn.input;
    assert.ok(r.userLen! >= spec.min && r.userLen! <= spec.max, `user turn ${r.userLen}`);
    assert.ok(r.outputLen >= WORKLOAD_SPECS.multiturn.output.min && r.outputLen <= WORKLOAD_SPECS.multiturn.output.max);
    if (r.turn! > 0) {
      const prev = reqs[r.index - 1];
      // The previous prompt, then a stand-in for its answer (outputLen ids), then this turn.
      assert.deepEqual(r.promptTokenIds!.slice(0, prev.promptLen), prev.promptTokenIds);
      assert.equal(r.promptLen, prev.promptLen + prev.outputLen + r.userLen!);
    } else assert.equal(r.promptLen, r.userLen);
  }
  assert.notDeepEqual(reqs[4].promptTokenIds!.slice(0, 16), reqs[0].promptTokenIds!.slice(0, 16), 'conversations differ');
  // Deterministic in the seed.
  assert.deepEqual(generateRequests({ ...base, workload: 'multiturn', n: 8, turns: 4 }).map((r) => r.promptTokenIds), reqs.map((r) => r.promptTokenIds));
  // A small context: later turns that would not fit are dropped, never clipped mid-history.
  const small = generateRequests({ ...base, workload: 'multiturn', n: 8, turns: 4, maxModelLen: 400 });
  assert.ok(small.length < 8 && small.length >= 2, `kept ${small.length}`);
  for (const r of small) assert.ok(r.promptLen + r.outputLen <= 400);
  assert.deepEqual(small.map((r) => r.index), small.map((_, i) => i), 'indices stay consecutive');
  // Chat: each request carries only its own user message; the runner adds the history.
  const chat = generateRequests({ ...base, workload: 'multiturn', n: 2, turns: 2, endpoint: 'chat' });
  assert.equal(chat[1].userText!.split(' ').length, chat[1].userLen);
  assert.equal(chat[1].promptText, undefined);
  assert.throws(() => generateRequests({ ...base, workload: 'multiturn', n: 2, turns: 0 }), /turns/);
  assert.throws(() => parsePhases('chat,multiturn'));
});
