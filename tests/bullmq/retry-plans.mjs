#!/usr/bin/env node
// Reference retry path of the differential tests: BullMQ's own
// job.retry(state, { resetAttemptsMade, resetAttemptsStarted }) for every id of every plan
// that scenario.mjs made (plans marked "unavailable" are skipped).
//
//   node retry-plans.mjs --redis redis://127.0.0.1:6379/2 --queue diff --plans FILE [--cases A,B] [--bullmq PKG]
//     [--log-lines FILE]   (JSON {case: {id: line}}: each such job then gets job.log(line),
//                           BullMQ's own log append, after its retry)
//   (--queue is required by the shared CLI but unused: each plan names its queue)
//
// Opening a Queue writes its meta hash (opts.maxLenEvents, version) on most releases, which
// would change the very state under test. So the queue is opened with skipMetasUpdate (the
// releases that know it) and its meta hash is put back exactly as it was before any retry;
// the script fails if opening the queue changed anything else.
//
// stdout: { "bullmq": "<version>", "results": { "<case>": [ { id, result } ] } } where result
// is "ok", "missing" or the error BullMQ threw. Per-id errors are results, not failures.

import { readFileSync } from 'node:fs';
import IORedis from 'ioredis';
import { UsageError, connectionOpts, loadBullmq, log, parseCli, preflight, runMain, sleep } from './lib.mjs';

const USAGE = 'usage: retry-plans.mjs --redis URL --queue NAME --plans FILE [--cases A,B] [--log-lines FILE] [--prefix bull] [--bullmq PKG]';

/** Every key of `queues` with its type and a content digest, to prove nothing moved. */
async function snapshot(raw, prefix, queues) {
  const out = {};
  for (const q of queues) {
    for (const k of await raw.keys(`${prefix}:${q}:*`)) {
      const dump = await raw.dump(k);
      out[k] = dump ? dump.toString('base64') : null;
    }
  }
  return out;
}

async function restoreMeta(raw, key, fields) {
  await raw.del(key);
  if (Object.keys(fields).length > 0) await raw.hset(key, fields);
}

runMain('retry-plans.mjs', async (onCleanup) => {
  const v = parseCli({ plans: { type: 'string' }, cases: { type: 'string' }, 'log-lines': { type: 'string' } }, USAGE);
  if (!v.plans) throw new UsageError(`--plans FILE is required\n${USAGE}`);
  const lines = v['log-lines'] ? JSON.parse(readFileSync(v['log-lines'], 'utf8')) : {};
  await preflight(v.redis);
  const only = v.cases ? new Set(v.cases.split(',')) : null;
  const plans = JSON.parse(readFileSync(v.plans, 'utf8')).plans.filter(
    (p) => !p.unavailable && (!only || only.has(p.case)),
  );
  const { mod: bullmq, version } = await loadBullmq(v.bullmq);
  const raw = new IORedis(v.redis, { maxRetriesPerRequest: null });
  onCleanup(() => raw.quit());
  const results = {};
  for (const plan of plans) {
    const metaKey = `${v.prefix}:${plan.queue}:meta`;
    const meta = await raw.hgetall(metaKey);
    const before = await snapshot(raw, v.prefix, plan.queues);
    const queue = new bullmq.Queue(plan.queue, {
      connection: connectionOpts(v.redis),
      prefix: v.prefix,
      skipMetasUpdate: true,
    });
    queue.on('error', (err) => log(`queue error: ${err.message}`));
    await queue.waitUntilReady();
    await sleep(50); // releases without skipMetasUpdate write meta right after connecting
    await restoreMeta(raw, metaKey, meta);
    const after = await snapshot(raw, v.prefix, plan.queues);
    const moved = Object.keys({ ...before, ...after }).filter((k) => before[k] !== after[k]);
    if (moved.length > 0) throw new Error(`case ${plan.case}: opening the Queue changed ${moved.join(', ')}`);
    const opts = { resetAttemptsMade: plan.resetAttemptsMade, resetAttemptsStarted: plan.resetAttemptsStarted };
    const jobs = [];
    for (const id of plan.ids) {
      let job;
      try {
        job = await bullmq.Job.fromId(queue, id);
      } catch (err) {
        jobs.push({ id, result: `cannot load: ${err && err.message}` });
        continue;
      }
      if (!job) {
        jobs.push({ id, result: 'missing' });
        continue;
      }
      try {
        await job.retry(plan.state, opts);
        jobs.push({ id, result: 'ok' });
        const line = (lines[plan.case] || {})[id];
        if (line !== undefined) await job.log(line);
      } catch (err) {
        jobs.push({ id, result: err && err.message ? err.message : String(err) });
      }
    }
    await queue.close();
    results[plan.case] = jobs;
  }
  return { bullmq: version, results };
});
