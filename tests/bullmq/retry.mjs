#!/usr/bin/env node
// Reference retry path: BullMQ's own job.retry(state, { resetAttemptsMade,
// resetAttemptsStarted }) for each id (Job.fromId first).
//
//   node retry.mjs --redis redis://127.0.0.1:6379/0 --queue q --ids 1,2 \
//     --state failed|completed [--reset-attempts-made] [--reset-attempts-started] \
//     [--prefix bull] [--bullmq bullmq|bullmq-<version>]
//
// stdout: { "jobs": [ { id, result } ] } with result "ok", "missing" (no such
// job) or the error message bullmq threw (e.g. the job is not in that state).
// Per-id errors are results, not failures: the exit code is still 0.
// The reset options only have an effect on bullmq >= 5.66; the options object
// is passed unchanged to older versions too.

import {
  TOPOLOGY_OPTIONS,
  UsageError,
  idsOpt,
  loadBullmq,
  log,
  openQueue,
  parseCli,
  preflight,
  runMain,
} from './lib.mjs';

const USAGE =
  'usage: retry.mjs --redis URL --queue NAME --ids ID[,ID...] --state failed|completed ' +
  '[--reset-attempts-made] [--reset-attempts-started] [--events-max-len N] [--prefix bull] ' +
  '[--bullmq bullmq|bullmq-<version>] [--cluster | --sentinel NAME]';

runMain('retry.mjs', async (onCleanup) => {
  const values = parseCli(
    {
      ...TOPOLOGY_OPTIONS,
      ids: { type: 'string' },
      state: { type: 'string' },
      'reset-attempts-made': { type: 'boolean', default: false },
      'reset-attempts-started': { type: 'boolean', default: false },
      'events-max-len': { type: 'string' },
    },
    USAGE,
  );
  const ids = idsOpt(values);
  if (values.state !== 'failed' && values.state !== 'completed') {
    throw new UsageError(`--state must be "failed" or "completed", got ${JSON.stringify(values.state)}\n${USAGE}`);
  }
  const opts = {
    resetAttemptsMade: values['reset-attempts-made'],
    resetAttemptsStarted: values['reset-attempts-started'],
  };
  await preflight(values);
  const { mod: bullmq } = await loadBullmq(values.bullmq);
  // A Queue writes its events max length into the queue's meta when it opens: open it with
  // the queue owner's setting (--events-max-len), as the owner's own code would.
  const maxLen = values['events-max-len'];
  const extra = maxLen ? { streams: { events: { maxLen: Number(maxLen) } } } : {};
  const queue = await openQueue(bullmq, values, onCleanup, extra);
  const jobs = [];
  for (const id of ids) {
    const job = await bullmq.Job.fromId(queue, id);
    if (!job) {
      jobs.push({ id, result: 'missing' });
      continue;
    }
    try {
      await job.retry(values.state, opts);
      jobs.push({ id, result: 'ok' });
      log(`job ${id}: retried from ${values.state} with ${JSON.stringify(opts)}`);
    } catch (err) {
      jobs.push({ id, result: err && err.message ? err.message : String(err) });
      log(`job ${id}: retry failed: ${err && err.message}`);
    }
  }
  return { jobs };
});
