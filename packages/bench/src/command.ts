// `pdserve bench` behind the command-line parsing: runs one rate or a sweep, shows a progress bar
// on an interactive stderr, prints the summary, writes the JSON (and the sweep's SVG beside it),
// and on Ctrl-C stops sending, interrupts what is in flight and still writes what it measured
// (a second Ctrl-C exits at once).
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { SingleBar } from 'cli-progress';
import { formatSummary, formatSweepSummary, toJson } from './report.ts';
import { runBenchmark, type BenchmarkOptions, type BenchmarkResult, type Progress } from './runner.ts';
import { renderSweepSvg, runSweep, type SweepResult } from './sweep.ts';

/** The benchmark's options as flags: the SLO is three flat numbers, plus output and sweep settings. */
export interface BenchCommandOptions extends Omit<BenchmarkOptions, 'slo' | 'temperature'> {
  sloTtftMs?: number;
  sloTpotMs?: number;
  sloE2elMs?: number;
  temperature?: number;
  out: string;
  sweep?: number[];
  quiet?: boolean;
  /** Legend name of the sweep's series in the SVG. */
  seriesName?: string;
}

export interface BenchCommandIo {
  /** Summary output; default process.stdout. */
  write?: (text: string) => void;
  /** Notes and warnings; default process.stderr. */
  log?: (text: string) => void;
  /** External interruption (tests); the CLI uses Ctrl-C. */
  signal?: AbortSignal;
  /** Install the SIGINT handler (the CLI does). */
  handleSigint?: boolean;
  /** Force the progress bar on or off (default: stderr is a TTY and not quiet). */
  progress?: boolean;
}

/** Parses a rate: a positive number, or "inf" for all at once. */
export function parseRate(text: string): number {
  const t = text.trim().toLowerCase();
  if (t === 'inf' || t === 'infinity') return Infinity;
  const v = Number(t);
  if (t === '' || !Number.isFinite(v) || v <= 0) throw new Error(`invalid rate '${text}' (a number > 0 or 'inf')`);
  return v;
}

export function parseRateList(text: string): number[] {
  const rates = text.split(',').filter((s) => s.trim() !== '').map(parseRate);
  if (rates.length === 0) throw new Error(`invalid rate list '${text}'`);
  return rates;
}

/** The sweep chart's path: the JSON path with its extension replaced by .svg. */
export function svgPathFor(out: string): string {
  return /\.json$/i.test(out) ? out.replace(/\.json$/i, '.svg') : `${out}.svg`;
}

function settingsOf(o: BenchCommandOptions): Record<string, unknown> {
  const s: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    if (v === undefined) continue;
    if (typeof v === 'number' && !Number.isFinite(v)) s[k] = 'inf';
    else if (Array.isArray(v)) s[k] = v.map((x) => (typeof x === 'number' && !Number.isFinite(x) ? 'inf' : x));
    else s[k] = v;
  }
  return s;
}

function writeFile(path: string, text: string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

export async function runBenchCommand(o: BenchCommandOptions, io: BenchCommandIo = {}): Promise<BenchmarkResult | SweepResult> {
  const write = io.write ?? ((t: string) => void process.stdout.write(t));
  const log = io.log ?? ((t: string) => void process.stderr.write(`${t}\n`));
  const controller = new AbortController();
  const signal = io.signal ? AbortSignal.any([io.signal, controller.signal]) : controller.signal;
  let sigints = 0;
  const onSigint = () => {
    sigints++;
    if (sigints > 1) process.exit(130);
    log('\ninterrupted: stopping, writing what was measured (Ctrl-C again to quit at once)');
    controller.abort();
  };
  if (io.handleSigint) process.on('SIGINT', onSigint);

  const showBar = io.progress ?? (Boolean(process.stderr.isTTY) && !o.quiet);
  let bar: SingleBar | undefined;
  let barLabel = '';
  // The bar starts with the first progress report of a load run (after the warmup's notes).
  const newBar = (label: string) => {
    bar?.stop();
    bar = undefined;
    barLabel = label;
  };
  const onProgress = (p: Progress) => {
    if (!showBar) return;
    if (!bar) {
      bar = new SingleBar({
        stream: process.stderr,
        format: '{label} |{bar}| {value}/{total} done | {failed} failed | {inflight} in flight | {duration_formatted} (eta {eta_formatted})',
        barsize: 30,
        hideCursor: true,
        clearOnComplete: false,
        etaBuffer: 50,
        fps: 5,
      });
      bar.start(p.total, 0, { label: barLabel, failed: 0, inflight: 0 });
    }
    bar.update(p.completed + p.failed, { label: barLabel, failed: p.failed, inflight: p.inFlight });
  };

  const base: Omit<BenchmarkOptions, 'rate'> = {
    url: o.url,
    workload: o.workload,
    phases: o.phases,
    requests: o.requests,
    slo: { ttftMs: o.sloTtftMs, tpotMs: o.sloTpotMs, e2elMs: o.sloE2elMs },
    burstiness: o.burstiness,
    seed: o.seed,
    maxConcurrency: o.maxConcurrency,
    model: o.model,
    endpoint: o.endpoint,
    warmup: o.warmup,
    inputLenScale: o.inputLenScale,
    outputLenScale: o.outputLenScale,
    inputLen: o.inputLen,
    prefixLen: o.prefixLen,
    prefixGroups: o.prefixGroups,
    turns: o.turns,
    thinkTimeMs: o.thinkTimeMs,
    outputLen: o.outputLen,
    vocabSize: o.vocabSize,
    minTokenId: o.minTokenId,
    maxModelLen: o.maxModelLen,
    requestTimeoutS: o.requestTimeoutS,
    temperature: o.temperature,
    signal,
    onProgress,
    log,
    settings: settingsOf(o),
  };
  try {
    if (o.sweep && o.sweep.length > 0) {
      const sweep = await runSweep({
        ...base,
        rates: o.sweep,
        onRateStart: (rate, k, n) => newBar(`rate ${Number.isFinite(rate) ? rate : 'inf'} (${k + 1}/${n})`),
      });
      bar?.stop();
      const svgPath = svgPathFor(o.out);
      sweep.svg = svgPath;
      writeFile(o.out, toJson(sweep));
      writeFile(svgPath, renderSweepSvg(sweep, { seriesName: o.seriesName }));
      for (const r of sweep.results) write(`${formatSummary(r)}\n\n`);
      write(`${formatSweepSummary(sweep)}\n`);
      write(`wrote ${o.out} and ${svgPath}\n`);
      if (sweep.interrupted && io.handleSigint) process.exitCode = 130;
      return sweep;
    }
    newBar(`rate ${Number.isFinite(o.rate) ? o.rate : 'inf'}`);
    const result = await runBenchmark({ ...base, rate: o.rate });
    bar?.stop();
    writeFile(o.out, toJson(result));
    write(`${formatSummary(result)}\n`);
    write(`wrote ${o.out}\n`);
    if (result.interrupted && io.handleSigint) process.exitCode = 130;
    return result;
  } finally {
    bar?.stop();
    if (io.handleSigint) process.off('SIGINT', onSigint);
  }
}
