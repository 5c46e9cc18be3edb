#!/usr/bin/env node
// Reads jobs' logs the way a BullMQ user does: Queue.getJobLogs(id) of the chosen release.
//
//   node logs.mjs --redis redis://127.0.0.1:6379/0 --queue q --ids 1,2 \
//     [--prefix bull] [--bullmq bullmq|bullmq-<version>]
//
// stdout: { "jobs": { "<id>": { "logs": [ ... ], "count": N } } }

import { idsOpt, loadBullmq, openQueue, parseCli, preflight, runMain, TOPOLOGY_OPTIONS } from './lib.mjs';

const USAGE =
  'usage: logs.mjs --redis URL --queue NAME --ids ID[,ID...] [--prefix bull] ' +
  '[--bullmq bullmq|bullmq-<version>] [--cluster | --sentinel NAME]';

runMain('logs.mjs', async (onCleanup) => {
  const values = parseCli({ ...TOPOLOGY_OPTIONS, ids: { type: 'string' } }, USAGE);
  const ids = idsOpt(values);
  await preflight(values);
  const { mod: bullmq } = await loadBullmq(values.bullmq);
  const queue = await openQueue(bullmq, values, onCleanup);
  const jobs = {};
  for (const id of ids) {
    jobs[id] = await queue.getJobLogs(id);
  }
  return { jobs };
});
