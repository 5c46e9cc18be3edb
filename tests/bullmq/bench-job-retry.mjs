#!/usr/bin/env node
// Benchmark path (b): BullMQ's per-job job.retry(state), `--inflight` calls at a time
// (a Promise pool over one Queue connection).
//
// The Job objects are loaded first, untimed, with queue.getJobs([state]) in pages of
// `--page` (what an application that retries "all failed jobs" does); the clock then
// times only the job.retry() calls. Emits `READY` on stderr before the clock starts;
// waits for a line on stdin if --wait-stdin is given (so the caller can snapshot
// Redis CPU between the load and the timed part).
//
//   node bench-job-retry.mjs --redis URL --queue bench [--inflight 50] [--page 10000] [--wait-stdin]
//
// stdout: { "ms": wall-clock ms of the retry calls, "loadMs": ms of getJobs, "retried": N, "errors": N }

import { createInterface } from 'node:readline';
import { intOpt, loadBullmq, log, openQueue, parseCli, preflight, runMain } from './lib.mjs';

const USAGE =
  'usage: bench-job-retry.mjs --redis URL --queue NAME [--state failed] [--inflight 50] [--page 10000] [--wait-stdin]';

runMain(
  'bench-job-retry.mjs',
  async (onCleanup) => {
    const values = parseCli(
      {
        state: { type: 'string', default: 'failed' },
        inflight: { type: 'string' },
        page: { type: 'string' },
        'wait-stdin': { type: 'boolean', default: false },
      },
      USAGE,
    );
    const inflight = Math.max(1, intOpt(values, 'inflight', 50));
    const page = Math.max(1, intOpt(values, 'page', 10000));
    await preflight(values);
    const { mod: bullmq } = await loadBullmq(values.bullmq);
    const queue = await openQueue(bullmq, values, onCleanup);

    const l0 = process.hrtime.bigint();
    const total = await queue.getJobCountByTypes(values.state);
    const jobs = [];
    for (let start = 0; start < total; start += page) {
      const part = await queue.getJobs([values.state], start, start + page - 1, true);
      for (const j of part) if (j) jobs.push(j);
    }
    const loadMs = Number(process.hrtime.bigint() - l0) / 1e6;
    log(`loaded ${jobs.length} job(s) in ${loadMs.toFixed(0)} ms`);

    if (values['wait-stdin']) {
      process.stderr.write('READY\n');
      const rl = createInterface({ input: process.stdin });
      await new Promise((resolve) => rl.once('line', resolve));
      rl.close();
    }

    let next = 0;
    let retried = 0;
    const errors = [];
    const t0 = process.hrtime.bigint();
    const lane = async () => {
      while (next < jobs.length) {
        const job = jobs[next++];
        try {
          await job.retry(values.state);
          retried++;
        } catch (err) {
          errors.push(`${job.id}: ${err.message}`);
        }
      }
    };
    await Promise.all(Array.from({ length: inflight }, lane));
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (errors.length) log(`first errors: ${errors.slice(0, 5).join('; ')}`);
    return { ms, loadMs, retried, errors: errors.length };
  },
  { hardTimeoutMs: 1800000 },
);
