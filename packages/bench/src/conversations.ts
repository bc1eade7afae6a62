// The multiturn workload's closed loop: each conversation starts on the arrival schedule, and each
// later turn is sent only when the previous answer has arrived (plus a think time), the way a chat
// user waits for the reply before typing the next message. On the chat endpoint the history is
// the real conversation (earlier user messages and the server's replies); on completions the
// prompts were built whole in advance (workloads.ts).
import type { RequestRecord } from './client.ts';
import { sleepUntil } from './pacing.ts';
import type { BenchRequest, ChatMessage } from './workloads.ts';

/** Sends one request (paced and counted by the caller); undefined when the run was aborted first. */
export type SendTurn = (req: BenchRequest, scheduledS: number) => Promise<RequestRecord | undefined>;

export interface ConversationOptions {
  /** performance.now() of the run's start; offsets are seconds from it. */
  t0: number;
  /** Start offset (s) of each conversation, in order. */
  starts: readonly number[];
  /** Pause between an answer and the next turn. Default 0. */
  thinkTimeMs?: number;
  endpoint: 'completions' | 'chat';
  signal?: AbortSignal;
}

export interface ConversationOutcome {
  /** Records of every turn sent, plus a failed record for each turn cut off by an earlier failure. */
  records: RequestRecord[];
  /** Scheduled send time (s from t0) of each request, by index. */
  offsets: number[];
  /** Turns never sent because the run was aborted. */
  notSent: number;
  /** Turns not sent because an earlier turn of their conversation failed (each has a failed record). */
  cutOff: number;
}

/** Groups the requests by conversation, turns in order. */
export function conversationsOf(requests: readonly BenchRequest[]): BenchRequest[][] {
  const byId = new Map<number, BenchRequest[]>();
  for (const r of requests) {
    const id = r.conversation ?? r.index;
    let list = byId.get(id);
    if (!list) byId.set(id, (list = []));
    list.push(r);
  }
  return [...byId.keys()].sort((a, b) => a - b).map((id) => byId.get(id)!.sort((a, b) => (a.turn ?? 0) - (b.turn ?? 0)));
}

/** The request as sent: on chat, its user message after the conversation so far. */
export function withHistory(req: BenchRequest, history: readonly ChatMessage[], endpoint: 'completions' | 'chat'): BenchRequest {
  if (endpoint !== 'chat') return req;
  return { ...req, messages: [...history, { role: 'user', content: req.userText ?? req.promptText ?? '' }] };
}

function cutOff(req: BenchRequest, failedTurn: number): RequestRecord {
  const now = performance.now();
  return {
    index: req.index, kind: req.kind, ok: false, error: `not sent: turn ${failedTurn} of its conversation failed`,
    startMs: now, endMs: now, itlMs: [], promptTokens: req.promptLen, outputTokens: 0, targetOutputTokens: req.outputLen, chunks: 0,
  };
}

/** Runs every conversation to its end (or the abort); turns of one conversation never overlap. */
export async function runConversations(requests: readonly BenchRequest[], opts: ConversationOptions, send: SendTurn): Promise<ConversationOutcome> {
  const conversations = conversationsOf(requests);
  const records: RequestRecord[] = [];
  const offsets: number[] = [];
  let notSent = 0;
  let cutOffs = 0;
  const think = opts.thinkTimeMs ?? 0;
  const one = async (turns: BenchRequest[], start: number) => {
    let scheduled = opts.t0 + start * 1000;
    const history: ChatMessage[] = [];
    for (let k = 0; k < turns.length; k++) {
      const req = turns[k];
      await sleepUntil(scheduled, opts.signal);
      if (opts.signal?.aborted) { notSent += turns.length - k; return; }
      offsets[req.index] = (scheduled - opts.t0) / 1000;
      const sent = withHistory(req, history, opts.endpoint);
      const rec = await send(sent, offsets[req.index]);
      if (!rec) { notSent += turns.length - k; return; }
      records.push(rec);
      if (!rec.ok) {
        if (rec.interrupted) { notSent += turns.length - k - 1; return; }
        // The next turns would quote an answer that never came: they count as failed, not as unsent.
        for (const later of turns.slice(k + 1)) {
          offsets[later.index] = offsets[req.index];
          records.push(cutOff(later, req.turn ?? k));
          cutOffs++;
        }
        return;
      }
      if (opts.endpoint === 'chat') history.push(sent.messages![sent.messages!.length - 1], { role: 'assistant', content: rec.text ?? '' });
      scheduled = performance.now() + think;
    }
  };
  await Promise.all(conversations.map((turns, c) => one(turns, opts.starts[c] ?? 0)));
  records.sort((a, b) => a.index - b.index);
  return { records, offsets, notSent, cutOff: cutOffs };
}
