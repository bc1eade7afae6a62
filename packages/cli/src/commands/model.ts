// Model-directory commands: `convert` (llama2.c checkpoint -> model dir) and `dummy` (random
// weights of a realistic shape, for benchmarks).
import type { Command } from 'commander';
import { convertLlama2c, DEFAULT_QUANT_BLOCK_SIZE, DUMMY_PRESETS, QUANT_BLOCK_SIZES, WEIGHT_DTYPES, writeDummyModel, type WeightDtype } from '@pdserve/engine';
import { positiveInt, weightDtype } from './options.ts';

const DTYPE_HELP = `weight storage: ${WEIGHT_DTYPES.join(', ')} (q8/q4: block-wise int8/int4 via ONNX Runtime MatMulNBits)`;
const BLOCK_HELP = `q8/q4 quantization block length along the input dimension: ${QUANT_BLOCK_SIZES.join(', ')} (default ${DEFAULT_QUANT_BLOCK_SIZE})`;

export function register(program: Command): void {
  program
    .command('convert')
    .description('convert a model into a pdserve model directory')
    .requiredOption('--from <format>', 'source format (llama2c)')
    .requiredOption('--checkpoint <file>', 'llama2.c checkpoint (legacy fp32 layout)')
    .requiredOption('--tokenizer <file>', "llama2.c tokenizer (tok*.bin)")
    .requiredOption('--out <dir>', 'model directory to write')
    .option('--name <name>', 'served model name (default: the directory name)')
    .option('--dtype <dtype>', DTYPE_HELP, weightDtype, 'fp32')
    .option('--block-size <n>', BLOCK_HELP, positiveInt)
    .action((o: { from: string; checkpoint: string; tokenizer: string; out: string; name?: string; dtype: WeightDtype; blockSize?: number }) => {
      if (o.from !== 'llama2c') throw new Error(`unsupported --from ${o.from}: only llama2c is supported`);
      const cfg = convertLlama2c({ checkpoint: o.checkpoint, tokenizer: o.tokenizer, out: o.out, name: o.name, dtype: o.dtype, blockSize: o.blockSize });
      process.stdout.write(`wrote ${o.out}: ${cfg.n_layers} layers, dim ${cfg.dim}, vocab ${cfg.vocab_size}, context ${cfg.max_seq_len}, ${cfg.dtype}\n`);
    });

  program
    .command('dummy')
    .description(`write a model with seeded random weights (presets: ${Object.keys(DUMMY_PRESETS).join(', ')})`)
    .requiredOption('--preset <name>', 'shape preset')
    .requiredOption('--out <dir>', 'model directory to write')
    .option('--seed <n>', 'weight seed', positiveInt, 0)
    .option('--max-seq-len <n>', 'context length written to config.json (default 4096 or the preset\'s, whichever is smaller)', positiveInt)
    .option('--dtype <dtype>', DTYPE_HELP, weightDtype, 'fp32')
    .option('--block-size <n>', BLOCK_HELP, positiveInt)
    .action((o: { preset: string; out: string; seed: number; maxSeqLen?: number; dtype: WeightDtype; blockSize?: number }) => {
      const cfg = writeDummyModel(o.preset, o.out, { seed: o.seed, maxSeqLen: o.maxSeqLen, dtype: o.dtype, blockSize: o.blockSize });
      process.stdout.write(`wrote ${o.out}: dummy ${o.preset} (${cfg.n_layers} layers, dim ${cfg.dim}, vocab ${cfg.vocab_size}, ${cfg.dtype})\n`);
    });
}
