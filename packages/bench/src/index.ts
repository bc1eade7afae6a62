// @pdserve/bench: a serving benchmark for OpenAI-compatible endpoints (like `vllm bench serve`):
// seeded workloads, Poisson/gamma arrivals, streamed TTFT/TPOT/ITL/E2EL, SLO goodput and
// attainment, rate sweeps with an SVG attainment chart.
export { Rng, STREAM } from './rng.ts';
export { arrivalOffsets, type ArrivalOptions } from './arrivals.ts';
export {
  DEFAULT_PHASES,
  DEFAULT_TURNS,
  MULTITURN_FIRST_INPUT,
  WORKLOADS,
  WORKLOAD_SPECS,
  parsePhases,
  phaseOf,
  type PhaseWorkload,
  WORDS,
  clipLengths,
  generateLengths,
  generateRequests,
  type BenchRequest,
  type ChatMessage,
  type Lengths,
  type LengthRange,
  type WorkloadName,
  type WorkloadOptions,
  type WorkloadSpec,
} from './workloads.ts';
export { SseParser, sseEvents } from './sse.ts';
export { conversationsOf, runConversations, withHistory, type ConversationOptions, type ConversationOutcome } from './conversations.ts';
export {
  buildBody,
  describeHttpError,
  endpointPath,
  normalizeBaseUrl,
  sendRequest,
  type ClientOptions,
  type Endpoint,
  type RequestRecord,
} from './client.ts';
export { computeMetrics, meetsSlo, percentile, percentileSorted, summarize, tpotMs, type Metrics, type Slo, type Stats } from './metrics.ts';
export { fetchServerInfo, type ServerInfo } from './server-info.ts';
export {
  buildResult,
  optionsAsSettings,
  prepareBenchmark,
  rateToJson,
  runBenchmark,
  runLoad,
  runWarmup,
  type BenchmarkOptions,
  type BenchmarkPlan,
  type BenchmarkResult,
  type CompactRequest,
  type LoadOutcome,
  type PhaseResult,
  type Progress,
  type TurnResult,
} from './runner.ts';
export {
  ATTAINMENT_TARGET,
  assembleSweep,
  rateAtAttainment,
  renderSweepSvg,
  runSweep,
  sloDescription,
  sweepPoint,
  sweepSeries,
  type CrossingEstimate,
  type SweepOptions,
  type SweepPoint,
  type SweepResult,
} from './sweep.ts';
export { SERIES_COLORS, escapeXml, niceTicks, renderAttainmentSvg, type AttainmentPoint, type AttainmentSeries, type SvgOptions } from './svg.ts';
export { formatSummary, formatSweepSummary, toJson } from './report.ts';
export { parseRate, parseRateList, runBenchCommand, svgPathFor, type BenchCommandIo, type BenchCommandOptions } from './command.ts';
