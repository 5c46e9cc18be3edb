#!/usr/bin/env node
// Benchmark seeding: adds N jobs with Queue.addBulk (in chunks) and lets a real
// Worker with high concurrency fail every one of them, so that N jobs end in
// `failed` exactly as production failures do.
//
//   node bench-seed.mjs --redis redis://127.0.0.1:6411/1 --queue bench \
//     [--jobs 100000] [--chunk 5000] [--concurrency 500] [--timeout-ms 900000]
//     [--reason-every 100 --reason-text ECONNRESET]
//
// With --reason-every N, every N-th job (data.i % N == 0) fails with a message that also
// contains --reason-text, so that a failedReasonContains filter selects 1/N of the jobs.
//
// stdout: { "failed": N, "ms": total milliseconds }

import {
  TOPOLOGY_OPTIONS,
  intOpt,
  loadBullmq,
  log,
  openQueue,
  openWorker,
  parseCli,
  preflight,
  runMain,
  sleep,
} from './lib.mjs';

const USAGE =
  'usage: bench-seed.mjs --redis URL --queue NAME [--jobs 100000] [--chunk 5000] ' +
  '[--concurrency 500] [--timeout-ms 900000] [--reason-every N --reason-text TEXT]';

const timeoutMs = (() => {
  const i = process.argv.indexOf('--timeout-ms');
  return i > 0 ? Number(process.argv[i + 1]) : 900000;
})();

runMain(
  'bench-seed.mjs',
  async (onCleanup) => {
    const values = parseCli(
      {
        ...TOPOLOGY_OPTIONS,
        jobs: { type: 'string' },
        chunk: { type: 'string' },
        concurrency: { type: 'string' },
        'timeout-ms': { type: 'string' },
        'reason-every': { type: 'string' },
        'reason-text': { type: 'string', default: 'ECONNRESET' },
      },
      USAGE,
    );
    const total = intOpt(values, 'jobs', 100000);
    const chunk = Math.max(1, intOpt(values, 'chunk', 5000));
    const concurrency = Math.max(1, intOpt(values, 'concurrency', 500));
    const every = intOpt(values, 'reason-every', 0);
    const rare = values['reason-text'];
    await preflight(values);
    const { mod: bullmq } = await loadBullmq(values.bullmq);
    const queue = await openQueue(bullmq, values, onCleanup);

    const t0 = Date.now();
    const worker = openWorker(
      bullmq,
      values,
      onCleanup,
      async (job) => {
        const i = job.data.i;
        if (every > 0 && i % every === 0) throw new Error(`bench failure ${i}: read ${rare}`);
        throw new Error(`bench failure ${i}`);
      },
      { concurrency },
    );

    for (let from = 0; from < total; from += chunk) {
      const n = Math.min(chunk, total - from);
      await queue.addBulk(
        Array.from({ length: n }, (_, k) => ({
          name: 'bench',
          data: { i: from + k, payload: 'x'.repeat(64) },
        })),
      );
      log(`added ${from + n}/${total}`);
    }
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const c = await queue.getJobCounts('failed', 'wait', 'active', 'prioritized', 'delayed');
      if (c.failed === total) break;
      if (Date.now() > deadline) throw new Error(`timed out: ${JSON.stringify(c)}`);
      await sleep(500);
    }
    await worker.close();
    const ms = Date.now() - t0;
    log(`${total} jobs failed in ${ms} ms`);
    return { failed: total, ms };
  },
  { hardTimeoutMs: timeoutMs + 60000 },
);
