import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SseParser, sseEvents } from '../src/index.ts';

function feed(pieces: string[]): string[] {
  const p = new SseParser();
  const out: string[] = [];
  for (const s of pieces) out.push(...p.push(s));
  out.push(...p.end());
  return out;
}

const stream = 'data: {"a":1}\n\n: keep-alive comment\n\ndata: {"b":2}\r\n\r\nevent: x\nid: 7\ndata:{"c":3}\n\ndata: [DONE]\n\n';
const expected = ['{"a":1}', '{"b":2}', '{"c":3}', '[DONE]'];

test('SSE parser: whole stream, and split at every possible position', () => {
  assert.deepEqual(feed([stream]), expected);
  for (let i = 0; i <= stream.length; i++) {
    assert.deepEqual(feed([stream.slice(0, i), stream.slice(i)]), expected, `split at ${i}`);
  }
  assert.deepEqual(feed(stream.split('')), expected, 'one character per read');
});

test('SSE parser: CR line endings split between reads, multi-line data, unterminated last event', () => {
  assert.deepEqual(feed(['data: x\r', '\n\r', '\ndata: y\r\r']), ['x', 'y']);
  assert.deepEqual(feed(['data: line1\ndata: line2\n\n']), ['line1\nline2']);
  assert.deepEqual(feed(['data: tail']), ['tail']);
  assert.deepEqual(feed(['\n\n:only comments\n\n']), []);
});

test('sseEvents decodes bytes split inside a multi-byte character', async () => {
  const bytes = new TextEncoder().encode('data: {"text":"héllo 🙂"}\n\ndata: [DONE]\n\n');
  async function* chunks() {
    for (let i = 0; i < bytes.length; i += 3) yield bytes.subarray(i, i + 3);
  }
  const got: string[] = [];
  for await (const ev of sseEvents(chunks())) got.push(ev);
  assert.deepEqual(got, ['{"text":"héllo 🙂"}', '[DONE]']);
});
