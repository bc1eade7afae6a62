// Model-directory commands: `convert` (llama2.c checkpoint -> model dir) and `dummy` (random
// weights of a realistic shape, for benchmarks).
import type { Command } from 'commander';
import { convertLlama2c, DUMMY_PRESETS, writeDummyModel } from '@pdserve/engine';
import { positiveInt } from './options.ts';

export function register(program: Command): void {
  program
    .command('convert')
    .description('convert a model into a pdserve model directory')
    .requiredOption('--from <format>', 'source format (llama2c)')
    .requiredOption('--checkpoint <file>', 'llama2.c checkpoint (legacy fp32 layout)')
    .requiredOption('--tokenizer <file>', "llama2.c tokenizer (tok*.bin)")
    .requiredOption('--out <dir>', 'model directory to write')
    .option('--name <name>', 'served model name (default: the directory name)')
    .action((o: { from: string; checkpoint: string; tokenizer: string; out: string; name?: string }) => {
      if (o.from !== 'llama2c') throw new Error(`unsupported --from ${o.from}: only llama2c is supported`);
      const cfg = convertLlama2c({ checkpoint: o.checkpoint, tokenizer: o.tokenizer, out: o.out, name: o.name });
      process.stdout.write(`wrote ${o.out}: ${cfg.n_layers} layers, dim ${cfg.dim}, vocab ${cfg.vocab_size}, context ${cfg.max_seq_len}\n`);
    });

  program
    .command('dummy')
    .description(`write a model with seeded random weights (presets: ${Object.keys(DUMMY_PRESETS).join(', ')})`)
    .requiredOption('--preset <name>', 'shape preset')
    .requiredOption('--out <dir>', 'model directory to write')
    .option('--seed <n>', 'weight seed', positiveInt, 0)
    .option('--max-seq-len <n>', 'context length written to config.json (default 4096 or the preset\'s, whichever is smaller)', positiveInt)
    .action((o: { preset: string; out: string; seed: number; maxSeqLen?: number }) => {
      const cfg = writeDummyModel(o.preset, o.out, { seed: o.seed, maxSeqLen: o.maxSeqLen });
      process.stdout.write(`wrote ${o.out}: dummy ${o.preset} (${cfg.n_layers} layers, dim ${cfg.dim}, vocab ${cfg.vocab_size})\n`);
    });
}
