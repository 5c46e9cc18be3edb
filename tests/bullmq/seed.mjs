#!/usr/bin/env node
// Seeds a queue with real bullmq jobs and drives every one of them to its final
// state (completed / failed) with a real bullmq Worker.
//
//   node seed.mjs --redis redis://127.0.0.1:6379/0 --queue q --spec spec.json \
//     [--prefix bull] [--bullmq bullmq|bullmq-<version>] [--concurrency 1] \
//     [--timeout-ms 60000]
//
// spec.json: { "jobs": [ { "key": "a", "name": "charge", "data": {...},
//                          "opts": {...JobsOptions...}, "outcome": "fail"|"complete" } ] }
// data.reason is the failed job's error message; data.logs (a number) makes the processor
// write that many log lines with Job.log first.
//
// stdout: { "jobs": [ { key, id, name, state, attemptsMade, priority,
//                       finishedOn, failedReason, returnvalue } ] }

import { readFile } from 'node:fs/promises';
import {
  TOPOLOGY_OPTIONS,
  UsageError,
  bullmqConnection,
  describeJob,
  intOpt,
  loadBullmq,
  log,
  nn,
  openQueue,
  parseCli,
  preflight,
  runMain,
  sleep,
} from './lib.mjs';

const USAGE =
  'usage: seed.mjs --redis URL --queue NAME --spec FILE [--prefix bull] ' +
  '[--bullmq bullmq|bullmq-<version>] [--concurrency 1] [--timeout-ms 60000] ' +
  '[--cluster | --sentinel NAME]';

const UNFINISHED = ['wait', 'active', 'delayed', 'prioritized', 'paused', 'waiting-children'];

function validateSpec(spec, file) {
  if (!spec || !Array.isArray(spec.jobs)) {
    throw new UsageError(`${file}: expected an object with a "jobs" array`);
  }
  const keys = new Set();
  return spec.jobs.map((j, i) => {
    if (!j || typeof j !== 'object') throw new UsageError(`${file}: jobs[${i}] is not an object`);
    const key = j.key === undefined ? String(i) : String(j.key);
    if (keys.has(key)) throw new UsageError(`${file}: duplicate key ${JSON.stringify(key)}`);
    keys.add(key);
    if (j.outcome !== 'fail' && j.outcome !== 'complete') {
      throw new UsageError(
        `${file}: jobs[${i}] (key ${key}): outcome must be "fail" or "complete", got ${JSON.stringify(j.outcome)}`,
      );
    }
    if (j.opts !== undefined && (typeof j.opts !== 'object' || j.opts === null)) {
      throw new UsageError(`${file}: jobs[${i}] (key ${key}): opts must be an object`);
    }
    return {
      key,
      name: j.name === undefined ? 'job' : String(j.name),
      data: j.data === undefined ? {} : j.data,
      opts: { ...(j.opts || {}) },
      outcome: j.outcome,
    };
  });
}

runMain('seed.mjs', async (onCleanup) => {
  const values = parseCli(
    {
      ...TOPOLOGY_OPTIONS,
      spec: { type: 'string' },
      concurrency: { type: 'string' },
      'timeout-ms': { type: 'string' },
    },
    USAGE,
  );
  if (!values.spec) throw new UsageError(`--spec FILE is required\n${USAGE}`);
  const concurrency = Math.max(1, intOpt(values, 'concurrency', 1));
  const timeoutMs = intOpt(values, 'timeout-ms', 60000);

  let spec;
  try {
    spec = JSON.parse(await readFile(values.spec, 'utf8'));
  } catch (err) {
    throw new UsageError(`cannot read spec ${values.spec}: ${err.message}`);
  }
  const jobs = validateSpec(spec, values.spec);

  await preflight(values);
  const { mod: bullmq } = await loadBullmq(values.bullmq);
  const queue = await openQueue(bullmq, values, onCleanup);

  // The worker below processes whatever is waiting in the queue, so refuse to
  // run on a queue that still has unfinished jobs we did not add.
  const before = await queue.getJobCounts(...UNFINISHED);
  const pending = Object.entries(before).filter(([, n]) => n > 0);
  if (pending.length > 0) {
    throw new Error(
      `queue ${values.prefix}:${values.queue} already has unfinished jobs ` +
        `(${pending.map(([s, n]) => `${s}=${n}`).join(', ')}); seed needs a queue without them`,
    );
  }

  const t0 = Date.now();
  const added = await queue.addBulk(jobs.map((j) => ({ name: j.name, data: j.data, opts: j.opts })));
  const tAdded = Date.now();
  log(`added ${added.length} job(s) in ${tAdded - t0} ms`);

  // Outcome lookup by job id: the job data stays exactly as given in the spec.
  const outcomeById = new Map();
  added.forEach((job, i) => {
    const id = String(job.id);
    if (outcomeById.has(id)) {
      throw new Error(`two spec entries resolved to the same job id ${id} (duplicate jobId?)`);
    }
    outcomeById.set(id, { outcome: jobs[i].outcome, key: jobs[i].key });
  });

  const unexpected = [];
  const worker = new bullmq.Worker(
    values.queue,
    async (job) => {
      const entry = outcomeById.get(String(job.id));
      if (!entry) {
        unexpected.push(String(job.id));
        throw new Error(`seed.mjs: unexpected job ${job.id} not in the spec`);
      }
      // data.logs: that many lines in the job's log first, through the job's own Job.log
      // (which trims to opts.keepLogs).
      const lines = job.data && typeof job.data === 'object' ? Number(job.data.logs) || 0 : 0;
      for (let i = 1; i <= lines; i++) await job.log(`seed line ${i}`);
      if (entry.outcome === 'fail') {
        const reason = job.data && typeof job.data === 'object' && job.data.reason;
        throw new Error(reason || 'boom');
      }
      return { ok: true, key: entry.key };
    },
    {
      connection: bullmqConnection(values, onCleanup),
      prefix: values.prefix,
      concurrency,
      autorun: true,
    },
  );
  worker.on('error', (err) => log(`worker error: ${err.message}`));
  let workerClosed = false;
  const closeWorker = async () => {
    if (!workerClosed) {
      workerClosed = true;
      await worker.close();
    }
  };
  onCleanup(closeWorker);

  // Poll until nothing is left waiting / active / delayed / prioritized.
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const counts = await queue.getJobCounts(...UNFINISHED);
    const left = Object.values(counts).reduce((a, b) => a + b, 0);
    if (left === 0) break;
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for jobs to finish: ${JSON.stringify(counts)}`,
      );
    }
    await sleep(20);
  }
  const tDone = Date.now();
  await closeWorker();
  log(`all jobs final after ${tDone - tAdded} ms of processing (total ${tDone - t0} ms)`);
  if (unexpected.length > 0) {
    throw new Error(`worker saw job(s) not in the spec: ${unexpected.join(', ')}`);
  }

  const out = [];
  for (let i = 0; i < added.length; i++) {
    const d = await describeJob(bullmq, queue, String(added[i].id));
    if (!d.exists) throw new Error(`job ${added[i].id} (key ${jobs[i].key}) vanished after processing`);
    if (d.state !== 'completed' && d.state !== 'failed') {
      throw new Error(`job ${d.id} (key ${jobs[i].key}) ended in state ${d.state}`);
    }
    out.push({
      key: jobs[i].key,
      id: d.id,
      name: added[i].name,
      state: d.state,
      attemptsMade: d.attemptsMade,
      priority: nn(d.priority),
      finishedOn: d.finishedOn,
      failedReason: d.failedReason,
      returnvalue: d.returnvalue,
    });
  }
  return { jobs: out };
});
