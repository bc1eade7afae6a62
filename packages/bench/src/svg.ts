// Hand-written SVG line chart of SLO attainment (0..1) against request rate, one line per series
// (so two systems can be overlaid), with axes, ticks, grid, axis labels, a legend and the dashed
// target line (90% by default). No dependencies; the output is standalone, well-formed XML.

export interface AttainmentPoint {
  rate: number;
  attainment: number;
}

export interface AttainmentSeries {
  name: string;
  points: AttainmentPoint[];
}

export interface SvgOptions {
  title?: string;
  width?: number;
  height?: number;
  xLabel?: string;
  yLabel?: string;
  /** Dashed horizontal target line (fraction); default 0.9, null for none. */
  threshold?: number | null;
}

export const SERIES_COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** Tick values from 0 to a "nice" bound >= max (steps 1, 2, 2.5 or 5 times a power of ten). */
export function niceTicks(max: number, target = 6): number[] {
  if (!(max > 0) || !Number.isFinite(max)) return [0, 1];
  const raw = max / target;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = mag * 10;
  for (const m of [1, 2, 2.5, 5, 10]) {
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  const ticks: number[] = [];
  const n = Math.ceil(max / step - 1e-9);
  for (let i = 0; i <= n; i++) ticks.push(Number((i * step).toPrecision(12)));
  return ticks;
}

function fmt(x: number): string {
  return Number(x.toPrecision(6)).toString();
}

function px(x: number): string {
  return x.toFixed(1);
}

export function renderAttainmentSvg(series: readonly AttainmentSeries[], opts: SvgOptions = {}): string {
  const width = opts.width ?? 720;
  const height = opts.height ?? 440;
  const title = opts.title ?? 'SLO attainment vs request rate';
  const xLabel = opts.xLabel ?? 'Request rate (req/s)';
  const yLabel = opts.yLabel ?? 'SLO attainment';
  const threshold = opts.threshold === undefined ? 0.9 : opts.threshold;
  const m = { left: 72, right: 24, top: 48, bottom: 64 };
  const pw = width - m.left - m.right;
  const ph = height - m.top - m.bottom;

  const clean = series.map((s) => ({
    name: s.name,
    points: s.points.filter((p) => Number.isFinite(p.rate) && Number.isFinite(p.attainment)).sort((a, b) => a.rate - b.rate),
  }));
  const maxRate = Math.max(0, ...clean.flatMap((s) => s.points.map((p) => p.rate)));
  const xTicks = niceTicks(maxRate > 0 ? maxRate : 1);
  const xMax = xTicks[xTicks.length - 1];
  const X = (r: number) => m.left + (r / xMax) * pw;
  const Y = (a: number) => m.top + (1 - Math.min(1, Math.max(0, a))) * ph;

  const out: string[] = [];
  out.push('<?xml version="1.0" encoding="UTF-8"?>');
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<title>${escapeXml(title)}</title>`);
  out.push(`<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${px(width / 2)}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(title)}</text>`);

  // Grid and ticks.
  out.push('<g class="grid" stroke="#e5e5e5" stroke-width="1">');
  for (let i = 0; i <= 10; i++) out.push(`<line x1="${m.left}" y1="${px(Y(i / 10))}" x2="${m.left + pw}" y2="${px(Y(i / 10))}"/>`);
  for (const t of xTicks) out.push(`<line x1="${px(X(t))}" y1="${m.top}" x2="${px(X(t))}" y2="${m.top + ph}"/>`);
  out.push('</g>');
  out.push('<g class="y-ticks" text-anchor="end">');
  for (let i = 0; i <= 10; i += 2) {
    const y = Y(i / 10);
    out.push(`<line x1="${m.left - 5}" y1="${px(y)}" x2="${m.left}" y2="${px(y)}" stroke="#333"/>`);
    out.push(`<text x="${m.left - 8}" y="${px(y + 4)}">${i * 10}%</text>`);
  }
  out.push('</g>');
  out.push('<g class="x-ticks" text-anchor="middle">');
  for (const t of xTicks) {
    const x = X(t);
    out.push(`<line x1="${px(x)}" y1="${m.top + ph}" x2="${px(x)}" y2="${m.top + ph + 5}" stroke="#333"/>`);
    out.push(`<text x="${px(x)}" y="${m.top + ph + 19}">${fmt(t)}</text>`);
  }
  out.push('</g>');
  // Axes and labels.
  out.push(`<line class="axis" x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}" stroke="#333" stroke-width="1.5"/>`);
  out.push(`<line class="axis" x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="#333" stroke-width="1.5"/>`);
  out.push(`<text x="${px(m.left + pw / 2)}" y="${height - 18}" text-anchor="middle" font-size="13">${escapeXml(xLabel)}</text>`);
  out.push(`<text x="18" y="${px(m.top + ph / 2)}" text-anchor="middle" font-size="13" transform="rotate(-90 18 ${px(m.top + ph / 2)})">${escapeXml(yLabel)}</text>`);

  if (threshold !== null) {
    const y = Y(threshold);
    out.push(`<line class="threshold" x1="${m.left}" y1="${px(y)}" x2="${m.left + pw}" y2="${px(y)}" stroke="#555" stroke-width="1.2" stroke-dasharray="6 4"/>`);
    out.push(`<text x="${m.left + pw - 4}" y="${px(y - 5)}" text-anchor="end" fill="#555">${fmt(threshold * 100)}% target</text>`);
  }

  clean.forEach((s, k) => {
    const color = SERIES_COLORS[k % SERIES_COLORS.length];
    out.push(`<g class="series" data-name="${escapeXml(s.name)}" stroke="${color}" fill="${color}">`);
    if (s.points.length > 1) {
      const d = s.points.map((p, i) => `${i === 0 ? 'M' : 'L'}${px(X(p.rate))},${px(Y(p.attainment))}`).join(' ');
      out.push(`<path d="${d}" fill="none" stroke-width="2"/>`);
    }
    for (const p of s.points) {
      out.push(`<circle cx="${px(X(p.rate))}" cy="${px(Y(p.attainment))}" r="3.5"><title>${escapeXml(`${s.name}: rate ${fmt(p.rate)} req/s, attainment ${fmt(p.attainment * 100)}%`)}</title></circle>`);
    }
    out.push('</g>');
  });

  // Legend, bottom left inside the plot (attainment curves fall to the right, so it is usually free).
  const lh = 18;
  const lw = Math.max(80, ...clean.map((s) => s.name.length * 7 + 36));
  const lx = m.left + 10;
  const ly = m.top + ph - 10 - clean.length * lh;
  if (clean.length > 0) {
    out.push('<g class="legend">');
    out.push(`<rect x="${lx}" y="${ly - 4}" width="${lw}" height="${clean.length * lh + 8}" fill="#ffffff" fill-opacity="0.85" stroke="#ccc"/>`);
    clean.forEach((s, k) => {
      const color = SERIES_COLORS[k % SERIES_COLORS.length];
      const y = ly + k * lh + lh / 2;
      out.push(`<line x1="${lx + 8}" y1="${px(y)}" x2="${lx + 28}" y2="${px(y)}" stroke="${color}" stroke-width="2"/>`);
      out.push(`<circle cx="${lx + 18}" cy="${px(y)}" r="3" fill="${color}"/>`);
      out.push(`<text x="${lx + 34}" y="${px(y + 4)}">${escapeXml(s.name)}</text>`);
    });
    out.push('</g>');
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}
