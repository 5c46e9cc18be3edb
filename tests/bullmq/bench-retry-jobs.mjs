#!/usr/bin/env node
// Benchmark path (a): BullMQ's own bulk retry, queue.retryJobs({ state, count }).
// Times only the retryJobs call (the Queue is opened and ready before the clock starts).
// With --wait-stdin it prints READY on stderr and waits for a line on stdin first, so the
// caller can snapshot Redis CPU right before the timed part.
//
//   node bench-retry-jobs.mjs --redis redis://127.0.0.1:6411/2 --queue bench [--count 1000] [--state failed] [--wait-stdin]
//
// stdout: { "ms": wall-clock milliseconds of retryJobs }

import { createInterface } from 'node:readline';
import { intOpt, loadBullmq, openQueue, parseCli, preflight, runMain } from './lib.mjs';

const USAGE =
  'usage: bench-retry-jobs.mjs --redis URL --queue NAME [--count 1000] [--state failed] [--wait-stdin]';

runMain(
  'bench-retry-jobs.mjs',
  async (onCleanup) => {
    const values = parseCli(
      {
        count: { type: 'string' },
        state: { type: 'string', default: 'failed' },
        'wait-stdin': { type: 'boolean', default: false },
      },
      USAGE,
    );
    const count = intOpt(values, 'count', 1000);
    await preflight(values);
    const { mod: bullmq } = await loadBullmq(values.bullmq);
    const queue = await openQueue(bullmq, values, onCleanup);
    if (values['wait-stdin']) {
      process.stderr.write('READY\n');
      const rl = createInterface({ input: process.stdin });
      await new Promise((resolve) => rl.once('line', resolve));
      rl.close();
    }
    const t0 = process.hrtime.bigint();
    await queue.retryJobs({ state: values.state, count });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    return { ms };
  },
  { hardTimeoutMs: 900000 },
);
