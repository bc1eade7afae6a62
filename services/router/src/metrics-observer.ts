// Plugs the router's Prometheus metrics (packages/common/src/metrics) into the HTTP layer's hooks.
import type { RouterMetrics, WorkerStateLabel } from '@pdserve/common';
import type { RouterObserver } from './observer.ts';
import type { WorkerSummary } from './backend.ts';

export function metricsObserver(m: RouterMetrics): RouterObserver {
  // Inter-token gaps are collected per request and observed once it ends, with the request.
  const gaps = new Map<string, number[]>();
  return {
    onRequestStart(info) {
      m.numRequestsRunning.inc();
      gaps.set(info.requestId, []);
    },
    onToken(itlMs, requestId) {
      gaps.get(requestId)?.push(itlMs / 1000);
    },
    onRequestEnd(info) {
      m.numRequestsRunning.dec();
      const t = info.timings;
      const s = (ms: number | undefined) => (ms === undefined ? undefined : ms / 1000);
      m.observeRequest({
        finishedReason: info.finishReason,
        promptTokens: info.promptTokens,
        generationTokens: info.completionTokens,
        e2eSeconds: info.e2eMs / 1000,
        queueSeconds: s(t.queue),
        ttftSeconds: s(info.ttftMs),
        interTokenSeconds: gaps.get(info.requestId) ?? [],
        ttftBreakdown: { queue: s(t.queue), prefill: s(t.prefill), kv_transfer: s(t.kv_transfer), first_decode: s(t.first_decode) },
      });
      gaps.delete(info.requestId);
      if (info.cachedTokens > 0) m.promptCachedTokens.inc(info.cachedTokens);
    },
    onError(status, code, info) {
      if (info.started) {
        m.numRequestsRunning.dec();
        gaps.delete(info.requestId);
      }
      m.observeError(status >= 500 ? code : status, { sloMissed: status >= 500 });
    },
    onAdmissionRejected(reason) {
      m.admissionRejected.inc({ reason });
    },
  };
}

export function workerStateLabel(w: WorkerSummary): WorkerStateLabel {
  if (!w.healthy) return 'stale';
  return w.state === 'draining' ? 'draining' : 'healthy';
}
