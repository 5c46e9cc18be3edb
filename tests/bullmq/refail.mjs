#!/usr/bin/env node
// A queue whose jobs keep failing: a real bullmq Worker fails every job it takes (the
// incident is not over), until PATH exists; each failure is recorded with the finishedOn
// BullMQ stored for it, so a test can tell which run's snapshot each failure belongs to.
//
//   node refail.mjs --redis redis://127.0.0.1:6379/0 --queue q --stop-file PATH \
//     [--timeout-ms 300000]
//
// stdout: { "failures": [ { id, finishedOn } ], "timedOut": bool }

import { existsSync } from 'node:fs';
import { TOPOLOGY_OPTIONS, bullmqConnection, intOpt, loadBullmq, log, parseCli, preflight, runMain, sleep } from './lib.mjs';

const USAGE = 'usage: refail.mjs --redis URL --queue NAME --stop-file PATH [--timeout-ms 300000]';

runMain('refail.mjs', async (onCleanup) => {
  const values = parseCli({ ...TOPOLOGY_OPTIONS, 'stop-file': { type: 'string' }, 'timeout-ms': { type: 'string' } }, USAGE);
  const stopFile = values['stop-file'];
  const timeoutMs = intOpt(values, 'timeout-ms', 300000);
  await preflight(values);
  const { mod: bullmq } = await loadBullmq(values.bullmq);
  const failures = [];
  const worker = new bullmq.Worker(
    values.queue,
    async () => {
      throw new Error('still down');
    },
    { connection: bullmqConnection(values, onCleanup), prefix: values.prefix, concurrency: 20 },
  );
  onCleanup(() => worker.close());
  worker.on('failed', (job) => {
    if (job) failures.push({ id: String(job.id), finishedOn: job.finishedOn ?? null });
  });
  worker.on('error', (err) => log(`worker error: ${err.message}`));
  const start = Date.now();
  while (!existsSync(stopFile) && Date.now() - start < timeoutMs) await sleep(50);
  await worker.close();
  return { failures, timedOut: !existsSync(stopFile) };
});
