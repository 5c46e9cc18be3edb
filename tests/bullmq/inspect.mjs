#!/usr/bin/env node
// Reads jobs with bullmq's Job.fromId + job.getState().
//
//   node inspect.mjs --redis redis://127.0.0.1:6379/0 --queue q --ids 1,2,3 \
//     [--prefix bull] [--bullmq bullmq|bullmq-<version>]
//
// stdout: { "jobs": [ { id, exists, state, attemptsMade, attemptsStarted,
//                       finishedOn, processedOn, failedReason, returnvalue, priority } ] }
// A missing job is { id, exists: false, everything else null }.

import {
  TOPOLOGY_OPTIONS,
  describeJob,
  idsOpt,
  loadBullmq,
  openQueue,
  parseCli,
  preflight,
  runMain,
} from './lib.mjs';

const USAGE =
  'usage: inspect.mjs --redis URL --queue NAME --ids ID[,ID...] [--prefix bull] ' +
  '[--bullmq bullmq|bullmq-<version>] [--cluster | --sentinel NAME]';

runMain('inspect.mjs', async (onCleanup) => {
  const values = parseCli({ ...TOPOLOGY_OPTIONS, ids: { type: 'string' } }, USAGE);
  const ids = idsOpt(values);
  await preflight(values);
  const { mod: bullmq } = await loadBullmq(values.bullmq);
  const queue = await openQueue(bullmq, values, onCleanup);
  const jobs = [];
  for (const id of ids) {
    jobs.push(await describeJob(bullmq, queue, id));
  }
  return { jobs };
});
