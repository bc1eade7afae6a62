// Long-running service commands: `pdserve worker` and `pdserve router`.
import type { Command } from 'commander';
import type pino from 'pino';
import { createLogger, exitWhenParentDies, WORKER_ROLES, type WorkerRole } from '@pdserve/common';
import { DEFAULT_KV_SHM_MIB, ENGINE_NICE, ENGINE_STALL_MS, startWorker } from '@pdserve/worker';
import { PLACEMENT_MODES, startRouter } from '@pdserve/router';
import { KV_WIRE_DTYPES } from '@pdserve/engine';
import { collect, resolveApiKeys } from './api-key.ts';
import { addClusterAuthOptions, applyClusterAuth } from './cluster-auth.ts';
import { device, kvWireDtype, niceValue, oneOf, positiveInt, positiveNumber } from './options.ts';

function role(value: string): WorkerRole {
  if (!(WORKER_ROLES as readonly string[]).includes(value)) throw new Error(`--role must be one of ${WORKER_ROLES.join(', ')}`);
  return value as WorkerRole;
}

/** Stops on SIGINT/SIGTERM (and when a supervising `pdserve up` dies), then exits. */
function runUntilSignalled(stop: () => Promise<void>, log: pino.Logger): void {
  let stopping = false;
  const shutdown = (why: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ why }, 'shutting down');
    stop().then(() => process.exit(0), (err: Error) => { log.error({ err: err.message }, 'shutdown failed'); process.exit(1); });
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  exitWhenParentDies({ onParentDeath: () => stop(), logger: log });
}

export function register(program: Command): void {
  const worker = program
    .command('worker')
    .description('run a prefill, decode or unified worker')
    .requiredOption('--role <role>', 'prefill, decode or unified', role)
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--redis-url <url>', 'Redis for the worker registry (default: $PDSERVE_REDIS_URL; a password belongs there, not in `ps`)', process.env.PDSERVE_REDIS_URL)
    .option('--host <host>', 'interface to bind', '127.0.0.1')
    .option('--grpc-port <n>', 'gRPC port (0 = any free one)', positiveInt, 0)
    .option('--metrics-port <n>', 'Prometheus /metrics and /health port (0 = any free one)', positiveInt, 0)
    .option('--advertise-host <host>', "address others use to reach this worker ('auto' = first non-loopback IPv4)", '127.0.0.1')
    .option('--device <name>', 'cpu, webgpu or cuda', device, 'cpu')
    .option('--threads <n>', 'ONNX Runtime intra-op threads (0 = one per core)', positiveInt, Number(process.env.PDSERVE_THREADS ?? 0))
    .option('--ort-spinning <on|off>', "ONNX Runtime's idle intra-op threads spin (on, its default: fastest when this worker's threads have cores to themselves) or sleep (off: for workers that share cores)", oneOf('--ort-spinning', ['on', 'off'] as const), 'on')
    .option('--kv-budget-mb <n>', 'KV cache budget in MiB', positiveInt)
    .option('--max-sequences <n>', 'sequences held at once (decode batch limit)', positiveInt, 16)
    .option('--max-model-len <n>', 'longest sequence served (default: the model\'s)', positiveInt)
    .option('--block-tokens <n>', 'tokens per KV block', positiveInt, 16)
    .option('--prefill-chunk <n>', 'prompt tokens per prefill pass', positiveInt, 256)
    .option('--prefix-cache <on|off>', "automatic prefix caching: an idle KV slot keeps its prompt's blocks for the next prompt that starts the same way (no extra memory)", oneOf('--prefix-cache', ['on', 'off'] as const), 'on')
    .option('--kv-wire-dtype <dtype>', `how KV blocks travel to decode workers: ${KV_WIRE_DTYPES.join(', ')} (fp32 is exact)`, kvWireDtype, 'fp32')
    .option('--kv-transport <tcp|grpc>', 'how KV blocks go to decode workers: tcp = the peer\'s raw-TCP data channel when it advertises one (else gRPC), grpc = always gRPC; also whether this worker offers the data channel', oneOf('--kv-transport', ['tcp', 'grpc'] as const), 'tcp')
    .option('--kv-data-port <n>', 'port of the TCP KV data channel, bound to --host (0 = any free one)', positiveInt, 0)
    .option('--kv-shm-mib <n>', 'MiB of the shared-memory ring (/dev/shm) a data connection to a decode worker on the same host carries KV payloads in (0 = off, as sender and receiver)', positiveInt, DEFAULT_KV_SHM_MIB)
    .option('--id <id>', 'worker id (default: role-host-pid-random)')
    .option('--drain-timeout-s <s>', 'on SIGTERM, how long to finish the requests held before exiting', positiveInt, 30)
    .option('--pin-role', 'keep --role: ignore role-change commands (the planner leaves this worker alone)')
    .option('--role-grace-ms <ms>', 'after a role change, old-kind calls already routed here are still taken this long', positiveInt, 10_000)
    .option('--engine-nice <n>', 'nice value (0-19) of the engine thread, so forward passes yield to I/O on a busy machine (0 = as the process)', niceValue, ENGINE_NICE)
    .option('--engine-stall-s <s>', 'report unhealthy (heartbeat state and /health 503) while the engine thread is silent this long with work pending', positiveNumber, ENGINE_STALL_MS / 1000);
  addClusterAuthOptions(worker)
    .action(async (o) => {
      const log = createLogger('pdserve-worker');
      applyClusterAuth(o, log);
      const { clusterToken: _t, clusterTokenFile: _tf, insecureCluster: _i, tlsCert: _c, tlsKey: _k, tlsCa: _a, drainTimeoutS, engineStallS, prefixCache, ortSpinning, ...rest } = o;
      const w = await startWorker({ ...rest, prefixCache: prefixCache === 'on', ortSpinning: ortSpinning === 'on', drainTimeoutMs: drainTimeoutS * 1000, engineStallMs: engineStallS * 1000, logger: log });
      runUntilSignalled(w.stop, log);
    });

  const router = program
    .command('router')
    .description('run the OpenAI-compatible router')
    .requiredOption('--model <dir>', 'model directory (tokenizer, context length, served name)')
    .requiredOption('--redis-url <url>', 'Redis with the worker registry (default: $PDSERVE_REDIS_URL)', process.env.PDSERVE_REDIS_URL)
    .option('--host <host>', 'interface to bind', '127.0.0.1')
    .option('--port <n>', 'HTTP port', positiveInt, 8000)
    .option('--served-model-name <name>', 'name clients use in `model` (default: the model directory name)')
    .option('--api-key <keys>', 'require `Authorization: Bearer <key>`; repeat it or give a comma list for several keys (visible in `ps`: prefer $PDSERVE_API_KEY or --api-key-file)', collect)
    .option('--api-key-file <path>', 'read the API keys from this file (one per line; e.g. a Docker secret)')
    .option('--generate-timeout-s <s>', 'deadline of a whole decode stream', positiveInt, 1800)
    .option('--prefill-timeout-s <s>', 'deadline of a prefill call (prompt and KV push)', positiveInt, 300)
    .option('--token-timeout-s <s>', 'a decode stream silent this long (after its prefill answered) ends with 504', positiveInt, 60)
    .option('--request-timeout-s <s>', 'time a client has to send its whole request (0 = none)', positiveInt, 30)
    .option('--connection-timeout-s <s>', 'close connections idle this long (0 = none)', positiveInt, 600)
    .option('--max-model-len <n>', 'context limit (default: the model\'s)', positiveInt)
    .option('--slo-ttft-ms <ms>', 'default time-to-first-token SLO for admission and metrics', positiveInt)
    .option('--slo-tpot-ms <ms>', 'default time-per-output-token SLO for admission and metrics', positiveInt)
    .option('--admission <mode>', "slo: refuse (503) requests the estimates say would miss their SLO; off: never", oneOf('--admission', ['slo', 'off'] as const), 'slo')
    .option('--ttft-correction <on|off>', "on: admission scales each TTFT estimate by the measured/estimated TTFT of the recent admitted requests; off: the estimate as it is", oneOf('--ttft-correction', ['on', 'off'] as const), 'on')
    .option('--prefill-placement <mode>', 'auto: decide per request; remote: always a prefill worker; local: always the decode worker', oneOf('--prefill-placement', PLACEMENT_MODES), 'auto')
    .option('--local-prefill-max-tokens <n>', 'auto placement: prompts longer than this always go to a prefill worker', positiveInt)
    .option('--max-migrations <n>', 'times a request is moved to other workers after its worker fails mid-request (0 = never)', positiveInt, 3)
    .option('--prefix-routing <on|off>', "on: weigh the workers' cached prompt prefixes (their block-hash events in Redis) against load; off: load only", oneOf('--prefix-routing', ['on', 'off'] as const), 'on');
  addClusterAuthOptions(router)
    .action(async (o) => {
      const log = createLogger('pdserve-router');
      applyClusterAuth(o, log);
      const { clusterToken: _t, clusterTokenFile: _tf, insecureCluster: _i, tlsCert: _c, tlsKey: _k, tlsCa: _a, apiKeyFile: _file, prefixRouting, generateTimeoutS, prefillTimeoutS, tokenTimeoutS, requestTimeoutS, connectionTimeoutS, ...rest } = o;
      const r = await startRouter({
        ...rest,
        prefixRouting: prefixRouting === 'on',
        apiKey: resolveApiKeys(o),
        generateTimeoutMs: generateTimeoutS * 1000, prefillTimeoutMs: prefillTimeoutS * 1000, tokenIdleTimeoutMs: tokenTimeoutS * 1000,
        requestTimeoutMs: requestTimeoutS * 1000, connectionTimeoutMs: connectionTimeoutS * 1000,
        logger: log,
      });
      runUntilSignalled(r.stop, log);
    });
}
