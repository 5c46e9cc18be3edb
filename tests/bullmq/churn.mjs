#!/usr/bin/env node
// A queue in production while a retry runs: keeps adding jobs named "new" that its Worker
// fails (new failures, after any run's snapshot), and processes every other job (the ones a
// retry moved back to wait), completing it and recording its id.
//
//   node churn.mjs --redis redis://127.0.0.1:6379/0 --queue q --stop-file PATH \
//     [--add-every-ms 20] [--expect N] [--settle-ms 3000] [--timeout-ms 600000]
//
// Stops adding when PATH exists; then waits until N retried jobs were processed and
// settle-ms passed without another one (or timeout-ms), and prints
// { "processed": [ids of retried jobs, in processing order, repeats included],
//   "added": n, "timedOut": bool }.

import { existsSync } from 'node:fs';
import { bullmqConnection, intOpt, loadBullmq, log, openQueue, parseCli, preflight, runMain, sleep } from './lib.mjs';

const USAGE =
  'usage: churn.mjs --redis URL --queue NAME --stop-file PATH [--add-every-ms 20] [--expect N] ' +
  '[--settle-ms 3000] [--timeout-ms 600000]';

runMain('churn.mjs', async (onCleanup) => {
  const values = parseCli(
    {
      'stop-file': { type: 'string' },
      'add-every-ms': { type: 'string' },
      expect: { type: 'string' },
      'settle-ms': { type: 'string' },
      'timeout-ms': { type: 'string' },
    },
    USAGE,
  );
  const every = intOpt(values, 'add-every-ms', 20);
  const expect = intOpt(values, 'expect', 0);
  const settle = intOpt(values, 'settle-ms', 3000);
  const deadline = Date.now() + intOpt(values, 'timeout-ms', 600000);
  await preflight(values);
  const { mod: bullmq } = await loadBullmq(values.bullmq);
  const queue = await openQueue(bullmq, values, onCleanup);
  const processed = [];
  let last = Date.now();
  const worker = new bullmq.Worker(
    values.queue,
    async (job) => {
      if (job.name === 'new') throw new Error('ECONNRESET (new failure)');
      processed.push(String(job.id));
      last = Date.now();
      return { reprocessed: true };
    },
    { connection: bullmqConnection(values, onCleanup), prefix: values.prefix, concurrency: 50 },
  );
  worker.on('error', (err) => log(`worker error: ${err.message}`));
  let added = 0;
  while (!existsSync(values['stop-file']) && Date.now() < deadline) {
    await queue.add('new', { n: added });
    added += 1;
    await sleep(every);
  }
  log(`stopped adding after ${added} jobs; waiting for ${expect} retried jobs`);
  let timedOut = false;
  for (;;) {
    if (processed.length >= expect && Date.now() - last >= settle) break;
    if (Date.now() > deadline) {
      timedOut = true;
      break;
    }
    await sleep(100);
  }
  await worker.close();
  return { processed, added, timedOut };
});
