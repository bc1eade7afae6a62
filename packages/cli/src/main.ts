#!/usr/bin/env node
// `pdserve`: one command-line entry point for every role. Each subcommand lives in its own module
// under ./commands and registers itself on the program.
import { Command } from 'commander';
import { registerCommands } from './commands/index.ts';

const program = new Command('pdserve')
  .description('Disaggregated prefill/decode LLM serving on ONNX Runtime')
  .showHelpAfterError();
registerCommands(program);
program.parseAsync(process.argv).catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`pdserve: ${message}\n`);
  process.exit(1);
});
