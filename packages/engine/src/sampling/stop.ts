// Stop strings for streamed text. Text goes out as soon as it cannot be part of a stop string;
// a tail that could still grow into one is held back. On a match the text before the stop string
// goes out and the stream is over; the stop string itself is never emitted (as OpenAI does).
//
// Which stop string wins: the first one to be complete, reading the text left to right (and of
// those completing at the same character, the longest). That depends only on the text, not on
// how it was split into deltas, so streaming and non-streaming requests agree.

export interface StopResult {
  /** Text that is final and may be sent. */
  emit: string;
  /** A stop string was found; nothing more will be emitted. */
  stopped: boolean;
  /** The stop string that matched, when stopped. */
  matched?: string;
}

export class StopMatcher {
  private readonly stops: string[];
  private held = '';
  private done = false;

  constructor(stop: readonly string[]) {
    // An empty stop string would match everywhere; it means nothing, so it is ignored.
    this.stops = [...new Set(stop.filter((s) => s.length > 0))];
  }

  get stopped(): boolean {
    return this.done;
  }

  push(textDelta: string): StopResult {
    if (this.done) return { emit: '', stopped: true };
    if (this.stops.length === 0) return { emit: textDelta, stopped: false };
    const text = this.held + textDelta;
    // Earliest end wins; for one stop string the first occurrence also ends first. `held` holds
    // no complete stop string, so every match found here ends inside the new delta.
    let bestStart = -1;
    let bestEnd = Infinity;
    let matched: string | undefined;
    for (const s of this.stops) {
      const at = text.indexOf(s);
      if (at < 0) continue;
      const end = at + s.length;
      if (end < bestEnd || (end === bestEnd && at < bestStart)) {
        bestStart = at;
        bestEnd = end;
        matched = s;
      }
    }
    if (matched !== undefined) {
      this.done = true;
      this.held = '';
      return { emit: text.slice(0, bestStart), stopped: true, matched };
    }
    const keep = this.partialMatchLength(text);
    this.held = text.slice(text.length - keep);
    return { emit: text.slice(0, text.length - keep), stopped: false };
  }

  /** What is still held back (it turned out not to be a stop string): call when the text ends. */
  flush(): string {
    const rest = this.held;
    this.held = '';
    return this.done ? '' : rest;
  }

  /** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
  private partialMatchLength(text: string): number {
    let best = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, text.length); k > best; k--) {
        if (text.endsWith(s.slice(0, k))) {
          best = k;
          break;
        }
      }
    }
    return best;
  }
}
