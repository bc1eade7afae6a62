import type { Command } from 'commander';
import * as bench from './bench.ts';
import * as generate from './generate.ts';
import * as model from './model.ts';
import * as serve from './serve.ts';
import * as up from './up.ts';
import * as fetchCmd from './fetch.ts';
import * as planner from './planner.ts';

// One line per subcommand module; each exports `register(program)`.
const modules: Array<{ register(program: Command): void }> = [model, generate, serve, up, planner, fetchCmd, bench];

export function registerCommands(program: Command): void {
  for (const m of modules) m.register(program);
}
