// `pdserve generate`: one prompt through the engine in this process; with --json the last line is
// {"prompt_ids", "ids", "text", "finish_reason"}.
import type { Command } from 'commander';
import { Engine, generate } from '@pdserve/engine';
import { device, nonNegativeNumber, positiveInt } from './options.ts';

interface GenerateFlags {
  model: string;
  prompt: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed?: number;
  device: 'cpu' | 'webgpu' | 'cuda';
  threads: number;
  json?: boolean;
}

export function register(program: Command): void {
  program
    .command('generate')
    .description('generate text for one prompt in this process')
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--prompt <text>', 'prompt text')
    .option('--max-tokens <n>', 'tokens to generate at most', positiveInt, 256)
    .option('--temperature <t>', 'sampling temperature (0 = greedy)', nonNegativeNumber, 0)
    .option('--top-p <p>', 'nucleus sampling mass', nonNegativeNumber, 1)
    .option('--top-k <k>', 'keep the k most likely tokens (0 = off)', positiveInt, 0)
    .option('--seed <n>', 'sampling seed', positiveInt)
    .option('--device <name>', 'execution provider: cpu, webgpu or cuda', device, 'cpu')
    .option('--threads <n>', 'ONNX Runtime intra-op threads (0 = one per core)', positiveInt, 0)
    .option('--json', 'print one JSON object on the last line')
    .action(async (o: GenerateFlags) => {
      const engine = await Engine.load(o.model, { device: o.device, threads: o.threads, maxSequences: 1 });
      const promptIds = engine.tokenizer.encode(o.prompt);
      const result = await generate(engine, promptIds, {
        temperature: o.temperature, topP: o.topP, topK: o.topK, seed: o.seed, maxTokens: o.maxTokens,
      });
      const text = engine.tokenizer.decode(result.ids, promptIds);
      if (o.json) {
        process.stdout.write(JSON.stringify({ prompt_ids: promptIds, ids: result.ids, text, finish_reason: result.finishReason }) + '\n');
      } else {
        process.stdout.write(`${o.prompt}${text}\n`);
      }
    });
}
