// Model-directory commands: `convert` (llama2.c checkpoint or Hugging Face folder -> model dir) and
// `dummy` (random weights of a realistic shape, for benchmarks).
import type { Command } from 'commander';
import { convertHf, convertLlama2c, DEFAULT_QUANT_BLOCK_SIZE, DUMMY_PRESETS, QUANT_BLOCK_SIZES, WEIGHT_DTYPES, writeDummyModel, type ModelConfig, type WeightDtype } from '@pdserve/engine';
import { positiveInt, weightDtype } from './options.ts';

const DTYPE_HELP = `weight storage: ${WEIGHT_DTYPES.join(', ')} (q8/q4: block-wise int8/int4 via ONNX Runtime MatMulNBits)`;
const BLOCK_HELP = `q8/q4 quantization block length along the input dimension: ${QUANT_BLOCK_SIZES.join(', ')} (default ${DEFAULT_QUANT_BLOCK_SIZE})`;

interface ConvertFlags {
  from: string;
  checkpoint?: string;
  tokenizer?: string;
  out: string;
  name?: string;
  maxSeqLen?: number;
  dtype: WeightDtype;
  blockSize?: number;
}

function convert(dir: string | undefined, o: ConvertFlags): ModelConfig {
  if (o.from === 'llama2c') {
    if (!o.checkpoint || !o.tokenizer) throw new Error('--from llama2c needs --checkpoint FILE and --tokenizer FILE');
    if (dir) throw new Error('--from llama2c takes --checkpoint and --tokenizer, not a folder argument');
    return convertLlama2c({ checkpoint: o.checkpoint, tokenizer: o.tokenizer, out: o.out, name: o.name, dtype: o.dtype, blockSize: o.blockSize });
  }
  if (o.from === 'hf') {
    if (!dir) throw new Error('--from hf needs the Hugging Face model folder: pdserve convert --from hf DIR --out DIR');
    return convertHf({ dir, out: o.out, name: o.name, maxSeqLen: o.maxSeqLen, dtype: o.dtype, blockSize: o.blockSize });
  }
  throw new Error(`unsupported --from ${o.from}: expected llama2c or hf`);
}

export function register(program: Command): void {
  program
    .command('convert')
    .description('convert a model into a pdserve model directory')
    .argument('[dir]', '--from hf: the Hugging Face model folder (config.json, *.safetensors, tokenizer.json, ...)')
    .requiredOption('--from <format>', 'source format: llama2c, or hf (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM; F32/F16/BF16 safetensors, sharded or not)')
    .option('--checkpoint <file>', '--from llama2c: the checkpoint (legacy fp32 layout)')
    .option('--tokenizer <file>', '--from llama2c: the tokenizer (tok*.bin)')
    .requiredOption('--out <dir>', 'model directory to write (built beside it, then renamed into place)')
    .option('--name <name>', 'served model name (default: the directory name)')
    .option('--max-seq-len <n>', '--from hf: context length to build for (default: max_position_embeddings)', positiveInt)
    .option('--dtype <dtype>', DTYPE_HELP, weightDtype, 'fp32')
    .option('--block-size <n>', BLOCK_HELP, positiveInt)
    .addHelpText('after', `
Examples:
  pdserve convert --from llama2c --checkpoint stories260K.bin --tokenizer tok512.bin --out models/stories260K
  pdserve convert --from hf ~/hf/SmolLM2-135M-Instruct --out models/smollm2-135m --dtype q8`)
    .action((dir: string | undefined, o: ConvertFlags) => {
      const cfg = convert(dir, o);
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
