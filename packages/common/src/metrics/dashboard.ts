// Helpers to check the Grafana dashboard (deploy/grafana/dashboards/pdserve.json) against what
// the registries export: pull out every PromQL expression with Grafana's interval variables made
// concrete, find the metric names an expression reads, and list the series names a registry
// exports (histograms as _bucket/_sum/_count).
import type { Registry } from 'prom-client';

export interface DashboardExpressionOptions {
  /** Window substituted for $__rate_interval, $__interval and $__range (default "1m"). */
  window?: string;
}

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000, y: 31_536_000_000 };

function durationMs(window: string): number {
  let total = 0;
  const re = /(\d+)(ms|s|m|h|d|w|y)/g;
  let matched = '';
  for (const m of window.matchAll(re)) {
    total += Number(m[1]) * DURATION_UNITS_MS[m[2]!]!;
    matched += m[0];
  }
  if (matched !== window || total === 0) throw new Error(`not a PromQL duration: ${window}`);
  return total;
}

/** Replaces Grafana's built-in interval variables by concrete values derived from `window`. */
export function substituteGrafanaVariables(expr: string, window = '1m'): string {
  const ms = durationMs(window);
  return expr
    .replace(/\$\{?__(interval|range)_ms\}?/g, String(ms))
    .replace(/\$\{?__range_s\}?/g, String(Math.round(ms / 1000)))
    .replace(/\$\{?__(rate_interval|interval|range)\}?/g, window);
}

/**
 * Every `targets[].expr` of every panel (rows and nested panels included), in document order,
 * with Grafana's interval variables replaced (see {@link substituteGrafanaVariables}). Hidden
 * targets are included; empty expressions are skipped.
 */
export function dashboardExpressions(json: unknown, options: DashboardExpressionOptions = {}): string[] {
  const window = options.window ?? '1m';
  const out: string[] = [];
  const visitPanels = (panels: unknown): void => {
    if (!Array.isArray(panels)) return;
    for (const panel of panels) {
      if (panel === null || typeof panel !== 'object') continue;
      const p = panel as { targets?: unknown; panels?: unknown };
      if (Array.isArray(p.targets)) {
        for (const t of p.targets) {
          const expr = (t as { expr?: unknown } | null)?.expr;
          if (typeof expr === 'string' && expr.trim() !== '') out.push(substituteGrafanaVariables(expr, window));
        }
      }
      visitPanels(p.panels);
    }
  };
  const root = (json ?? {}) as { panels?: unknown; dashboard?: { panels?: unknown } };
  visitPanels(root.panels ?? root.dashboard?.panels);
  return out;
}

const PROMQL_KEYWORDS = new Set([
  'and', 'or', 'unless', 'bool', 'offset', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right',
  'inf', 'nan', 'atan2', 'start', 'end',
]);

/**
 * Metric names an expression selects. A small lexer, not a parser: it drops string literals,
 * label matchers, grouping clauses and range brackets, then keeps identifiers that are not
 * function calls or keywords. Good enough for dashboard checks.
 */
export function metricNamesInExpr(expr: string): string[] {
  const s = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/gi, ' ')
    .replace(/\[[^\]]*\]/g, ' ');
  const names = new Set<string>();
  for (const m of s.matchAll(/(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?/g)) {
    const [, name, call] = m;
    if (call) continue;
    if (PROMQL_KEYWORDS.has(name!.toLowerCase())) continue;
    names.add(name!);
  }
  return [...names];
}

/**
 * Series names the registries export: counters and gauges by name, histograms as
 * `<name>_bucket`, `<name>_sum`, `<name>_count`, summaries as `<name>`, `<name>_sum`, `<name>_count`.
 * Labelled metrics are included even when no child exists yet.
 */
export function exportedMetricNames(...registries: Registry[]): Set<string> {
  const names = new Set<string>();
  for (const registry of registries) {
    for (const metric of registry.getMetricsAsArray()) {
      const { name, type } = metric as unknown as { name: string; type: string };
      if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(name + suffix);
      else if (type === 'summary') for (const suffix of ['', '_sum', '_count']) names.add(name + suffix);
      else names.add(name);
    }
  }
  return names;
}
