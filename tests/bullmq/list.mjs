#!/usr/bin/env node
// Lists every job of one state with BullMQ's own Queue.getJobs, oldest finishedOn first:
// what a user would look at to decide which jobs a selector should take.
//
//   node list.mjs --redis redis://127.0.0.1:6379/0 --queue q [--state failed|completed] \
//     [--prefix bull] [--bullmq bullmq|bullmq-<version>]
//
// stdout: { "jobs": [ { id, name, failedReason, finishedOn } ] }

import { TOPOLOGY_OPTIONS, UsageError, loadBullmq, nn, openQueue, parseCli, preflight, runMain } from './lib.mjs';

const USAGE =
  'usage: list.mjs --redis URL --queue NAME [--state failed|completed] [--prefix bull] ' +
  '[--bullmq bullmq|bullmq-<version>] [--cluster | --sentinel NAME]';

runMain('list.mjs', async (onCleanup) => {
  const values = parseCli({ ...TOPOLOGY_OPTIONS, state: { type: 'string', default: 'failed' } }, USAGE);
  if (values.state !== 'failed' && values.state !== 'completed') {
    throw new UsageError(`--state must be "failed" or "completed"\n${USAGE}`);
  }
  await preflight(values);
  const { mod: bullmq } = await loadBullmq(values.bullmq);
  const queue = await openQueue(bullmq, values, onCleanup, { skipMetasUpdate: true });
  const jobs = await queue.getJobs([values.state], 0, -1, true);
  return {
    jobs: jobs.map((j) => ({ id: String(j.id), name: j.name, failedReason: nn(j.failedReason), finishedOn: nn(j.finishedOn) })),
  };
});
