#!/usr/bin/env node
// A queue in an incident that is partly over: adds jobs, then a real bullmq Worker fails the
// jobs whose name is in --forever every time it takes them, and every other job only the
// first time (a transient failure). Says READY on stderr once every added job has failed
// once; keeps working until its stdin closes; then prints how often it processed each job.
//
//   node flaky.mjs --redis redis://127.0.0.1:6379/0 --queue q --add name1,name2,... \
//     --forever name1
//
// stdout: { "processed": { "<id>": { "name", "times", "completed" } } }

import { createInterface } from 'node:readline';
import { loadBullmq, log, openQueue, openWorker, parseCli, preflight, runMain, sleep } from './lib.mjs';

const USAGE = 'usage: flaky.mjs --redis URL --queue NAME --add NAMES --forever NAMES';

runMain('flaky.mjs', async (onCleanup) => {
  const values = parseCli(
    { add: { type: 'string' }, forever: { type: 'string', default: '' } },
    USAGE,
  );
  const names = (values.add || '').split(',').filter(Boolean);
  const forever = new Set(values.forever.split(',').filter(Boolean));
  await preflight(values);
  const { mod: bullmq } = await loadBullmq(values.bullmq);
  const queue = await openQueue(bullmq, values, onCleanup);
  const processed = {};
  const worker = openWorker(bullmq, values, onCleanup, async (job) => {
    const seen = (processed[job.id] ??= { name: job.name, times: 0, completed: false });
    seen.times += 1;
    if (forever.has(job.name) || seen.times === 1) throw new Error(`still down: ${job.name}`);
    seen.completed = true;
    return { ok: true };
  }, { concurrency: 10 });
  await worker.waitUntilReady();
  await queue.addBulk(names.map((name) => ({ name, data: {}, opts: { attempts: 1 } })));
  while ((await queue.getFailedCount()) < names.length) await sleep(20);
  process.stderr.write('READY\n');
  // Work until the test closes stdin.
  await new Promise((resolve) => createInterface({ input: process.stdin }).on('close', resolve));
  await worker.close();
  log(`processed ${Object.keys(processed).length} jobs`);
  return { processed };
}, { hardTimeoutMs: 900000 });
