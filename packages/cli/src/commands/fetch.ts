// `pdserve fetch MODEL`: a Hugging Face repository id (owner/name) or stories260K, downloaded and
// converted into the model cache that `pdserve up` looks in (or --out). See ../fetch-model.ts.
import type { Command } from 'commander';
import { fetchModel, LLAMA2C_MODELS } from '../fetch-model.ts';
import { DEFAULT_HUB_ENDPOINT } from '../hf-hub.ts';
import type { WeightDtype } from '@pdserve/engine';
import { positiveInt, weightDtype } from './options.ts';

export function register(program: Command): void {
  program
    .command('fetch')
    .description(`download a model from the Hugging Face Hub and convert it into the model cache: a repository id (owner/name) or ${Object.keys(LLAMA2C_MODELS).join(', ')}`)
    .argument('<model>', 'Hugging Face repository id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct, or stories260K')
    .option('--revision <rev>', 'branch, tag or commit of the repository', 'main')
    .option('--out <dir>', 'model directory to write (default: $PDSERVE_CACHE_DIR or ~/.cache/pdserve/models, then owner--name)')
    .option('--dtype <dtype>', 'weight storage of the converted model: fp32, q8 or q4 (as for convert)', weightDtype, 'fp32')
    .option('--block-size <n>', 'q8/q4 quantization block length (as for convert)', positiveInt)
    .option('--keep-download', 'keep the downloaded Hugging Face files (in the cache\'s .downloads folder) after converting')
    .addHelpText('after', `
Downloads resume where an interrupted run stopped (HTTP Range) and every file is checked against
the hub's sha256 (LFS files) or git blob id before it is used. Environment: HF_ENDPOINT (default
${DEFAULT_HUB_ENDPOINT}) for a mirror, HF_TOKEN for gated or private repositories.`)
    .action(async (name: string, o: { out?: string; revision: string; keepDownload?: boolean; dtype: WeightDtype; blockSize?: number }) => {
      const { out, config } = await fetchModel(name, { out: o.out, revision: o.revision, keepDownload: o.keepDownload, dtype: o.dtype, blockSize: o.blockSize, log: (l) => process.stderr.write(`${l}\n`) });
      process.stdout.write(`wrote ${out}: ${config.n_layers} layers, dim ${config.dim}, vocab ${config.vocab_size}, context ${config.max_seq_len}, ${config.dtype}\n`);
    });
}
