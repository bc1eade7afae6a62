// Human-readable summaries (in the style of vLLM's "Serving Benchmark Result" block) and the JSON
// layout of result files: pretty-printed, but short objects and arrays of numbers stay on one
// line and each per-request record is one line, so large runs stay greppable.
import type { BenchmarkResult } from './runner.ts';
import type { Stats } from './metrics.ts';
import { sloDescription, type SweepResult } from './sweep.ts';

const WIDTH = 50;

function num(x: number | null | undefined, digits = 2): string {
  return x === null || x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(digits);
}

function row(label: string, value: string | number): string {
  return `${label.padEnd(40)} ${String(value)}`;
}

function title(text: string, fill: string): string {
  const pad = Math.max(0, WIDTH - text.length - 2);
  const left = Math.floor(pad / 2);
  return `${fill.repeat(left)} ${text} ${fill.repeat(pad - left)}`.slice(0, WIDTH + 2);
}

function statRows(lines: string[], heading: string, abbrev: string, s: Stats): void {
  lines.push(title(heading, '-'));
  lines.push(row(`Mean ${abbrev} (ms):`, num(s.mean)));
  lines.push(row(`Median ${abbrev} (ms):`, num(s.p50)));
  lines.push(row(`P90 ${abbrev} (ms):`, num(s.p90)));
  lines.push(row(`P99 ${abbrev} (ms):`, num(s.p99)));
  lines.push(row(`Max ${abbrev} (ms):`, num(s.max)));
}

export function formatSummary(r: BenchmarkResult): string {
  const lines: string[] = [];
  lines.push(title('Serving Benchmark Result', '='));
  lines.push(row('Model:', r.model));
  lines.push(row('Workload / endpoint:', `${r.workload} / ${r.endpoint}`));
  lines.push(row('Request rate (req/s):', r.rate === 'inf' ? 'inf' : r.rate));
  if (r.burstiness !== 1) lines.push(row('Burstiness:', r.burstiness));
  if (r.max_concurrency !== null) lines.push(row('Max concurrency:', r.max_concurrency));
  lines.push(row('Successful requests:', r.completed));
  lines.push(row('Failed requests:', r.failed));
  if (r.interrupted) lines.push(row('Interrupted (in flight / not sent):', `${r.interrupted_requests} / ${r.not_sent}`));
  lines.push(row('Benchmark duration (s):', num(r.duration_s)));
  lines.push(row('Total input tokens:', r.total_input_tokens));
  lines.push(row('Total generated tokens:', r.total_output_tokens));
  lines.push(row('Request throughput (req/s):', num(r.request_throughput)));
  lines.push(row('Request goodput (req/s):', num(r.goodput)));
  lines.push(row('SLO attainment:', `${num(r.slo_attainment * 100, 1)}%  (${sloDescription(r.slo)})`));
  lines.push(row('Output token throughput (tok/s):', num(r.output_token_throughput)));
  lines.push(row('Total token throughput (tok/s):', num(r.total_token_throughput)));
  statRows(lines, 'Time to First Token', 'TTFT', r.ttft_ms);
  statRows(lines, 'Time per Output Token (excl. 1st token)', 'TPOT', r.tpot_ms);
  statRows(lines, 'Inter-token Latency', 'ITL', r.itl_ms);
  statRows(lines, 'End-to-end Latency', 'E2EL', r.e2el_ms);
  if (r.phases) {
    lines.push(title('Phases (shifting workload)', '-'));
    for (const ph of r.phases) {
      lines.push(row(`Phase ${ph.phase + 1} ${ph.workload} (${ph.requests} req):`, `${num(ph.slo_attainment * 100, 1)}% attained, goodput ${num(ph.goodput)} req/s, ${ph.failed} failed`));
    }
  }
  if (r.turns) {
    lines.push(title('Turns (multiturn workload)', '-'));
    for (const t of r.turns) {
      lines.push(row(`Turn ${t.turn + 1} (${t.requests} req, ~${num(t.prompt_tokens_mean ?? 0, 0)} prompt tok):`, `${num(t.slo_attainment * 100, 1)}% attained, TTFT p50 ${num(t.ttft_ms_p50 ?? 0)} ms, ${num(t.prefix_cache_hit_rate * 100, 1)}% cached`));
    }
  }
  lines.push('='.repeat(WIDTH));
  if (r.output_len_mismatches > 0) lines.push(`warning: ${r.output_len_mismatches} completed requests returned a different number of tokens than requested (server ignores min_tokens/ignore_eos?)`);
  if (r.clipped_requests > 0) lines.push(`note: ${r.clipped_requests} requests were clipped to max_model_len ${r.server.max_model_len}`);
  const errors = new Map<string, number>();
  for (const q of r.requests) if (!q.ok && q.error && q.error !== 'interrupted') errors.set(q.error, (errors.get(q.error) ?? 0) + 1);
  const top = [...errors.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5);
  for (const [e, n] of top) lines.push(`failed x${n}: ${e}`);
  return lines.join('\n');
}

export function formatSweepSummary(s: SweepResult): string {
  const lines: string[] = [];
  lines.push(title('Rate Sweep Result', '='));
  lines.push(`SLO: ${sloDescription(s.slo)}`);
  const header = ['rate', 'attain', 'goodput', 'thruput', 'ok', 'failed', 'p99 TTFT', 'p99 TPOT'];
  const rows = s.points.map((p) => [
    String(p.rate),
    `${num(p.slo_attainment * 100, 1)}%`,
    num(p.goodput),
    num(p.request_throughput),
    String(p.completed),
    String(p.failed),
    num(p.ttft_p99_ms, 1),
    num(p.tpot_p99_ms, 1),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  lines.push(header.map((h, i) => h.padStart(widths[i])).join('  '));
  for (const r of rows) lines.push(r.map((c, i) => c.padStart(widths[i])).join('  '));
  lines.push(row('Max rate at >= 90% attainment (req/s):', s.max_rate_at_90pct_attainment ?? 'none'));
  lines.push(
    row(
      'Interpolated 90% crossing (req/s):',
      s.interpolated_rate_at_90pct === null ? 'n/a' : `${num(s.interpolated_rate_at_90pct)}${s.interpolated_is_lower_bound ? ' (lower bound: highest rate still met it)' : ''}`,
    ),
  );
  if (s.interrupted) lines.push('(interrupted: the sweep stopped early)');
  lines.push('='.repeat(WIDTH));
  return lines.join('\n');
}

function isPrimitive(v: unknown): boolean {
  return v === null || typeof v !== 'object';
}

/** JSON text: 2-space indentation, short flat values inline, `requests` one record per line. */
export function toJson(value: unknown): string {
  return `${format(value, '', undefined)}\n`;
}

function format(v: unknown, indent: string, key: string | undefined): string {
  if (isPrimitive(v)) return JSON.stringify(v) ?? 'null';
  const inner = indent + '  ';
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    if (v.every(isPrimitive) || key === 'requests') {
      if (key === 'requests') return `[\n${v.map((x) => inner + JSON.stringify(x)).join(',\n')}\n${indent}]`;
      return JSON.stringify(v);
    }
    return `[\n${v.map((x) => inner + format(x, inner, undefined)).join(',\n')}\n${indent}]`;
  }
  const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined);
  if (entries.length === 0) return '{}';
  if (indent !== '' && entries.every(([, x]) => isPrimitive(x))) {
    const flat = `{${entries.map(([k, x]) => `${JSON.stringify(k)}: ${JSON.stringify(x)}`).join(', ')}}`;
    if (flat.length <= 110) return flat;
  }
  return `{\n${entries.map(([k, x]) => `${inner}${JSON.stringify(k)}: ${format(x, inner, k)}`).join(',\n')}\n${indent}}`;
}
