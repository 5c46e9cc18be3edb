#!/usr/bin/env node
// Processes (and successfully completes) whatever jobs become available in a
// queue, with a real bullmq Worker, while a real bullmq QueueEvents replays the
// queue's event stream from the very beginning ("0-0") and collects every
// "waiting" event that carries a "prev" field (i.e. a job that was moved back
// to wait: a retry of a finished job, an automatic retry, a stalled job, a
// promoted delayed job, ...).
//
//   node process.mjs --redis redis://127.0.0.1:6379/0 --queue q [--prefix bull] \
//     [--bullmq bullmq|bullmq-<version>] [--expect 0] [--timeout-ms 30000] \
//     [--settle-ms 2000]
//
// Stops once --expect jobs were processed AND then --settle-ms passed without
// another job starting, or when --timeout-ms elapsed (timedOut: true; still
// exit 0: the caller decides).
//
// stdout: { "processed": [ { id, name, attemptsMade, attemptsStarted, data } ],
//           "waitingEvents": [ { jobId, prev } ], "timedOut": bool }

import {
  TOPOLOGY_OPTIONS,
  bullmqConnection,
  createClient,
  intOpt,
  loadBullmq,
  log,
  nn,
  parseCli,
  preflight,
  runMain,
  sleep,
} from './lib.mjs';

const USAGE =
  'usage: process.mjs --redis URL --queue NAME [--prefix bull] ' +
  '[--bullmq bullmq|bullmq-<version>] [--expect N] [--timeout-ms 30000] [--settle-ms 2000] ' +
  '[--cluster | --sentinel NAME]';

/** Compares two stream ids "ms-seq". */
function cmpStreamId(a, b) {
  const [am, as] = a.split('-').map(BigInt);
  const [bm, bs] = b.split('-').map(BigInt);
  if (am !== bm) return am < bm ? -1 : 1;
  if (as !== bs) return as < bs ? -1 : 1;
  return 0;
}

runMain(
  'process.mjs',
  async (onCleanup) => {
    const values = parseCli(
      {
        ...TOPOLOGY_OPTIONS,
        expect: { type: 'string' },
        'timeout-ms': { type: 'string' },
        'settle-ms': { type: 'string' },
      },
      USAGE,
    );
    const expect = intOpt(values, 'expect', 0);
    const timeoutMs = intOpt(values, 'timeout-ms', 30000);
    const settleMs = intOpt(values, 'settle-ms', 2000);

    await preflight(values);
    const { mod: bullmq } = await loadBullmq(values.bullmq);
    const start = Date.now();

    // A plain client, only to find the stream's last id at the end so that we
    // can wait for QueueEvents to have read everything up to there.
    const probe = createClient(values, { maxRetriesPerRequest: 1 });
    probe.on('error', (err) => log(`probe error: ${err.message}`));
    onCleanup(() => probe.quit());

    // --- QueueEvents: replay the whole events stream from "0-0". ---
    const queueEvents = new bullmq.QueueEvents(values.queue, {
      connection: bullmqConnection(values, onCleanup),
      prefix: values.prefix,
      lastEventId: '0-0',
      blockingTimeout: 1000,
      autorun: true,
    });
    onCleanup(() => queueEvents.close());
    queueEvents.on('error', (err) => log(`queueEvents error: ${err.message}`));

    // Record the id of every event QueueEvents emits (whatever its name), to
    // know how far it has read. emit(event, args, id) / emit('drained', id).
    let lastSeenId = null;
    let eventsSeen = 0;
    const origEmit = queueEvents.emit.bind(queueEvents);
    queueEvents.emit = (event, ...args) => {
      const id = event === 'drained' ? args[0] : args[1];
      if (typeof id === 'string' && /^\d+-\d+$/.test(id) && !String(event).includes(':')) {
        lastSeenId = id;
        eventsSeen++;
      }
      return origEmit(event, ...args);
    };
    const waitingEvents = [];
    queueEvents.on('waiting', (args, id) => {
      if (args && args.prev !== undefined && args.prev !== null && args.prev !== '') {
        waitingEvents.push({ jobId: String(args.jobId), prev: String(args.prev) });
        log(`waiting event ${id}: job ${args.jobId} prev=${args.prev}`);
      }
    });
    await queueEvents.waitUntilReady();

    // --- Worker: record each job as seen at the start of processing. ---
    const processed = [];
    let lastActivity = Date.now();
    let finished = 0;
    const worker = new bullmq.Worker(
      values.queue,
      async (job) => {
        lastActivity = Date.now();
        processed.push({
          id: String(job.id),
          name: job.name,
          attemptsMade: nn(job.attemptsMade),
          attemptsStarted: nn(job.attemptsStarted),
          data: nn(job.data),
        });
        log(
          `processing job ${job.id} (${job.name}) attemptsMade=${job.attemptsMade} attemptsStarted=${job.attemptsStarted}`,
        );
        return { reprocessed: true };
      },
      {
        connection: bullmqConnection(values, onCleanup),
        prefix: values.prefix,
        concurrency: 1,
        autorun: true,
      },
    );
    worker.on('error', (err) => log(`worker error: ${err.message}`));
    worker.on('completed', () => {
      finished++;
      lastActivity = Date.now();
    });
    worker.on('failed', (job, err) => {
      finished++;
      lastActivity = Date.now();
      log(`job ${job && job.id} failed in process.mjs: ${err && err.message}`);
    });
    let workerClosed = false;
    const closeWorker = async () => {
      if (!workerClosed) {
        workerClosed = true;
        await worker.close();
      }
    };
    onCleanup(closeWorker);

    let timedOut = false;
    for (;;) {
      const now = Date.now();
      if (now - start >= timeoutMs) {
        timedOut = true;
        log(`timed out after ${timeoutMs} ms with ${processed.length}/${expect} processed`);
        break;
      }
      if (
        processed.length >= expect &&
        finished >= processed.length &&
        now - lastActivity >= settleMs &&
        now - start >= settleMs
      ) {
        break;
      }
      await sleep(25);
    }
    await closeWorker();

    // Make sure QueueEvents has read the stream at least up to its current end
    // (it replays history asynchronously), bounded by 5 s.
    const tail = await probe.xrevrange(`${values.prefix}:${values.queue}:events`, '+', '-', 'COUNT', 1);
    if (tail.length > 0) {
      const tailId = tail[0][0];
      const until = Date.now() + 5000;
      while ((lastSeenId === null || cmpStreamId(lastSeenId, tailId) < 0) && Date.now() < until) {
        await sleep(20);
      }
      if (lastSeenId === null || cmpStreamId(lastSeenId, tailId) < 0) {
        log(`warning: QueueEvents read up to ${lastSeenId}, stream tail is ${tailId}`);
      }
    }
    log(
      `done: ${processed.length} processed, ${eventsSeen} events replayed/read, ` +
        `${waitingEvents.length} waiting events with prev, ${Date.now() - start} ms`,
    );
    return { processed, waitingEvents, timedOut };
  },
  { hardTimeoutMs: 600000 },
);
