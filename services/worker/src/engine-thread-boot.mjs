// Entry point of the engine thread: worker threads do not inherit the `--import tsx` loader, so the
// thread registers it before loading the TypeScript module.
import { register } from 'tsx/esm/api';

register();
await import('./engine-thread.ts');
