import type { Command } from 'commander';

// One line per subcommand module; each exports `register(program)`.
const modules: Array<{ register(program: Command): void }> = [];

export function registerCommands(program: Command): void {
  for (const m of modules) m.register(program);
}
