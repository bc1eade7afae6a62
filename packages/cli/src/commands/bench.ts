// `pdserve bench`: load-test an OpenAI-compatible endpoint (the router) like `vllm bench serve`.
// The work is done by @pdserve/bench; this module only declares and parses the flags.
import { InvalidArgumentError, Option, type Command } from 'commander';
import { WORKLOADS, parsePhases, parseRate, parseRateList, runBenchCommand, type BenchCommandOptions } from '@pdserve/bench';

function int(min: number) {
  return (value: string): number => {
    const v = Number(value);
    if (!Number.isInteger(v) || v < min) throw new InvalidArgumentError(`expected an integer >= ${min}`);
    return v;
  };
}

function positive(value: string): number {
  const v = Number(value);
  if (!Number.isFinite(v) || v <= 0) throw new InvalidArgumentError('expected a number > 0');
  return v;
}

function nonNegative(value: string): number {
  const v = Number(value);
  if (!Number.isFinite(v) || v < 0) throw new InvalidArgumentError('expected a number >= 0');
  return v;
}

function wrap<T>(parse: (s: string) => T) {
  return (value: string): T => {
    try {
      return parse(value);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
  };
}

export function register(program: Command): void {
  program
    .command('bench')
    .description('benchmark an OpenAI-compatible endpoint with streamed requests: TTFT/TPOT/ITL/E2EL, goodput, SLO attainment')
    .requiredOption('--url <url>', 'server base URL, e.g. http://127.0.0.1:8000')
    .addOption(new Option('--workload <name>', 'chat (prompt 64-256, output 128-256), summarize (512-1024, 16-64), mixed (1:1), shifting (phases: summarize, chat, summarize) prefix (a shared --prefix-len system prompt + a 16-64 token turn, output 32-128) or multiturn (conversations of --turns turns: first turn 64-256, later turns 16-64, answers 32-128, each turn sent after the previous answer with the whole conversation as its prompt)').choices(WORKLOADS).makeOptionMandatory())
    .addOption(new Option('--rate <r>', "request rate in req/s (Poisson arrivals), or 'inf' for all at once").argParser(wrap(parseRate)).default(Infinity, 'inf'))
    .option('--requests <n>', 'number of measured requests', int(1), 100)
    .option('--phases <list>', "shifting workload: its phases in order, equal shares of the requests (default summarize,chat,summarize)", wrap(parsePhases))
    .requiredOption('--slo-ttft-ms <ms>', 'TTFT SLO: a good request has TTFT <= this', positive)
    .requiredOption('--slo-tpot-ms <ms>', 'TPOT SLO: a good request has TPOT <= this', positive)
    .option('--slo-e2el-ms <ms>', 'end-to-end latency SLO', positive)
    .option('--burstiness <b>', 'gamma shape of inter-arrival times (1 = Poisson, < 1 burstier)', positive, 1)
    .option('--seed <s>', 'seed for the workload and the arrivals', int(0), 0)
    .option('--max-concurrency <c>', 'cap on requests in flight', int(1))
    .option('--model <name>', 'model id (default: the first one /v1/models lists)')
    .addOption(new Option('--endpoint <kind>', "completions (token-id prompts) or chat (word prompts, approximate lengths)").choices(['completions', 'chat']).default('completions'))
    .option('--warmup <n>', 'unmeasured sequential requests sent first', int(0), 1)
    .option('--prefix-len <n>', 'prefix workload: tokens of the shared system prompt', int(0), 1024)
    .option('--prefix-groups <n>', 'prefix workload: distinct system prompts (request i uses number i mod n)', int(1), 1)
    .option('--turns <n>', 'multiturn workload: turns per conversation (conversations start at rate / turns per second)', int(1), 4)
    .option('--think-time-ms <ms>', 'multiturn workload: pause between an answer and the next turn', nonNegative, 0)
    .option('--input-len-scale <f>', 'multiply drawn prompt lengths by f', positive)
    .option('--output-len-scale <f>', 'multiply drawn output lengths by f', positive)
    .option('--input-len <n>', 'fixed prompt length (overrides the workload)', int(1))
    .option('--output-len <n>', 'fixed output length (overrides the workload)', int(1))
    .option('--vocab-size <n>', 'prompt token ids are drawn below this when /v1/models reports no vocab_size', int(2), 256)
    .option('--min-token-id <n>', 'lowest prompt token id (skips special tokens)', int(0), 3)
    .option('--max-model-len <n>', 'context length to clip prompt+output to when /v1/models reports none', int(2))
    .option('--request-timeout-s <s>', 'per-request timeout', positive, 300)
    .option('--temperature <t>', 'sampling temperature sent with each request', nonNegative, 0)
    .requiredOption('--out <file>', 'result JSON path (a sweep also writes FILE.svg)')
    .option('--sweep <r1,r2,...>', 'run each rate in turn (same seed); writes attainment per rate and an SVG chart', wrap(parseRateList))
    .option('--series-name <name>', 'legend name of the sweep chart series')
    .option('--quiet', 'no progress bar')
    .action(async (opts: BenchCommandOptions) => {
      await runBenchCommand(opts, { handleSigint: true });
    });
}
