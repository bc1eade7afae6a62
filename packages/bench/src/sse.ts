// Minimal server-sent-events parser for OpenAI-style streams (`data: {...}` ... `data: [DONE]`).
// It follows the WHATWG event-stream rules that matter here: lines end in \n, \r\n or \r (also
// when the \r and \n arrive in different reads), `:` lines are comments, `data:` lines of one event
// are joined with \n, an empty line dispatches the event, other fields (event, id, retry) are
// ignored. Input may be split anywhere, including inside a multi-byte UTF-8 character.

export class SseParser {
  private buf = '';
  private data: string[] = [];
  private hasData = false;
  private skipLF = false;

  /** Feeds decoded text; returns the data payloads of the events completed by it. */
  push(text: string): string[] {
    const events: string[] = [];
    if (text.length === 0) return events;
    let s = this.buf + text;
    if (this.skipLF && s.startsWith('\n')) s = s.slice(1);
    this.skipLF = false;
    let start = 0;
    for (let i = 0; i < s.length; i++) {
      const ch = s.charCodeAt(i);
      if (ch !== 10 && ch !== 13) continue;
      this.line(s.slice(start, i), events);
      if (ch === 13) {
        if (i + 1 < s.length) {
          if (s.charCodeAt(i + 1) === 10) i++;
        } else {
          this.skipLF = true;
        }
      }
      start = i + 1;
    }
    this.buf = s.slice(start);
    return events;
  }

  /** End of stream: an unterminated last event is still delivered (lenient). */
  end(): string[] {
    const events: string[] = [];
    if (this.buf.length > 0) this.line(this.buf, events);
    this.buf = '';
    if (this.hasData) events.push(this.data.join('\n'));
    this.data = [];
    this.hasData = false;
    return events;
  }

  private line(line: string, events: string[]): void {
    if (line === '') {
      if (this.hasData) events.push(this.data.join('\n'));
      this.data = [];
      this.hasData = false;
      return;
    }
    if (line.charCodeAt(0) === 58 /* ':' */) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    if (field !== 'data') return;
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    this.data.push(value);
    this.hasData = true;
  }
}

/** Data payloads of the events in a byte stream (e.g. a fetch Response body), as they arrive. */
export async function* sseEvents(body: AsyncIterable<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  const parser = new SseParser();
  for await (const chunk of body) {
    for (const ev of parser.push(decoder.decode(chunk, { stream: true }))) yield ev;
  }
  for (const ev of parser.push(decoder.decode())) yield ev;
  for (const ev of parser.end()) yield ev;
}
