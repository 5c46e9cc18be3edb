#!/usr/bin/env node
// A queue in production while a retry runs: keeps adding jobs (named --name, "new" by
// default: give it the selector's name, so that only the run's snapshot keeps them out) that
// its Worker fails on their first processing (new failures, after any run's snapshot), and
// processes every other job (the ones a retry moved back to wait: a new job processed a
// second time was retried), completing it and recording its id. Survives Redis outages (an
// add that fails is logged and tried again later).
//
//   node churn.mjs --redis redis://127.0.0.1:6379/0 --queue q --stop-file PATH \
//     [--name new] [--events-max-len N] [--lock-ms N] [--add-every-ms 20] [--expect N] [--settle-ms 3000] [--timeout-ms 600000] \
//     [--sentinel NAME]
//
// Stops adding when PATH exists; then waits until N retried jobs were processed (or PATH.now
// exists), settle-ms passed without another one and the queue has nothing left to process
// (or timeout-ms), and prints
// { "processed": [ids of retried jobs, in processing order, repeats included],
//   "added": n, "addedIds": [ids of the new jobs],
//   "newFailures": [{ id, finishedOn }: each new job's failure, as BullMQ stored it],
//   "timedOut": bool }.

import { existsSync } from 'node:fs';
import { TOPOLOGY_OPTIONS, bullmqConnection, intOpt, loadBullmq, log, openQueue, parseCli, preflight, runMain, sleep } from './lib.mjs';

const USAGE =
  'usage: churn.mjs --redis URL --queue NAME --stop-file PATH [--add-every-ms 20] [--expect N] ' +
  '[--settle-ms 3000] [--timeout-ms 600000]';

runMain('churn.mjs', async (onCleanup) => {
  const values = parseCli(
    {
      ...TOPOLOGY_OPTIONS,
      name: { type: 'string', default: 'new' },
      'events-max-len': { type: 'string' },
      'lock-ms': { type: 'string' },
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
  // The queue's events stream keeps this many entries (BullMQ's default 10,000 trims a long
  // run's history; a test that reads every event of a run raises it).
  const maxLen = intOpt(values, 'events-max-len', 0);
  const queue = await openQueue(bullmq, values, onCleanup, maxLen ? { streams: { events: { maxLen } } } : {});
  const processed = [];
  const failedOnce = new Set();
  let last = Date.now();
  const worker = new bullmq.Worker(
    values.queue,
    async (job) => {
      const id = String(job.id);
      if (job.data && job.data.churn === true && !failedOnce.has(id)) {
        failedOnce.add(id);
        throw new Error('ECONNRESET (new failure)');
      }
      processed.push(id);
      last = Date.now();
      return { reprocessed: true };
    },
    {
      connection: bullmqConnection(values, onCleanup),
      prefix: values.prefix,
      concurrency: 50,
      // A short lock: a job whose completion a Redis fault lost is handed out again soon.
      ...(intOpt(values, 'lock-ms', 0) ? { lockDuration: intOpt(values, 'lock-ms', 0), stalledInterval: intOpt(values, 'lock-ms', 0) } : {}),
    },
  );
  worker.on('error', (err) => log(`worker error: ${err.message}`));
  const newFailures = [];
  worker.on('failed', (job) => {
    if (job && job.data && job.data.churn === true) {
      newFailures.push({ id: String(job.id), finishedOn: job.finishedOn ?? null });
    }
  });
  let added = 0;
  const addedIds = [];
  while (!existsSync(values['stop-file']) && Date.now() < deadline) {
    try {
      const job = await queue.add(values.name, { n: added, churn: true });
      addedIds.push(String(job.id));
      added += 1;
    } catch (err) {
      log(`add failed (Redis unavailable?): ${err.message}`);
    }
    await sleep(every);
  }
  log(`stopped adding after ${added} jobs; waiting for ${expect} retried jobs`);
  let timedOut = false;
  // PATH.now: stop waiting for N (a run that stopped early), only for the settle time.
  const giveUp = `${values['stop-file']}.now`;
  // Idle: nothing left to process (a job whose hand-out a Redis fault lost sits in active
  // until BullMQ's stalled check gives it back; wait for that too).
  const idle = async () => {
    try {
      const counts = await queue.getJobCounts('wait', 'active', 'prioritized', 'delayed');
      return Object.values(counts).every((n) => n === 0);
    } catch (err) {
      log(`counts failed: ${err.message}`);
      return false;
    }
  };
  for (;;) {
    const enough = processed.length >= expect || existsSync(giveUp);
    if (enough && Date.now() - last >= settle && (await idle())) break;
    if (Date.now() > deadline) {
      timedOut = true;
      break;
    }
    await sleep(100);
  }
  await worker.close();
  return { processed, added, addedIds, newFailures, timedOut };
});
