#!/usr/bin/env node
// Benchmark probe: a real BullMQ Worker (and a Queue adding jobs to it at a steady rate) on
// its own queue, running next to the retry being measured, that times every Redis command
// its own ioredis clients send: from the moment the command is handed to ioredis to its
// reply. Blocking commands (the Worker's wait for a job) are left out: their time is
// waiting by design.
//
// Prints READY on stderr once the Worker has processed its first jobs; starts recording at
// the first line on stdin and stops at the second line (or at EOF).
//
//   node bench-probe.mjs --redis redis://127.0.0.1:6411/3 --queue probe [--rate 200]
//     [--concurrency 10]
//
// stdout: { "commands": n, "p50": ms, "p99": ms, "p999": ms, "max": ms, "maxCommand": name,
//           "jobs": processed while recording, "byCommand": { name: { n, p99, max } } }

import { createInterface } from 'node:readline';
import IORedis from 'ioredis';
import {
  intOpt,
  loadBullmq,
  openQueue,
  openWorker,
  parseCli,
  preflight,
  runMain,
  sleep,
} from './lib.mjs';

const USAGE =
  'usage: bench-probe.mjs --redis URL --queue NAME [--rate 200] [--concurrency 10]';

const BLOCKING = new Set(['bzpopmin', 'bzpopmax', 'brpoplpush', 'blmove', 'brpop', 'blpop', 'xread']);

// Every ioredis client of this process (bullmq's included: it uses the same module).
let recording = false;
const samples = [];
const seen = new WeakSet();
const original = IORedis.prototype.sendCommand;
IORedis.prototype.sendCommand = function timed(command, stream) {
  if (recording && !seen.has(command) && !BLOCKING.has(String(command.name).toLowerCase())) {
    seen.add(command);
    const t0 = process.hrtime.bigint();
    const done = () => samples.push([command.name, Number(process.hrtime.bigint() - t0) / 1e6]);
    command.promise.then(done, done);
  }
  return original.call(this, command, stream);
};

function pct(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

runMain(
  'bench-probe.mjs',
  async (onCleanup) => {
    const values = parseCli(
      { rate: { type: 'string' }, concurrency: { type: 'string' } },
      USAGE,
    );
    const rate = Math.max(1, intOpt(values, 'rate', 200));
    const concurrency = Math.max(1, intOpt(values, 'concurrency', 10));
    await preflight(values);
    const { mod: bullmq } = await loadBullmq(values.bullmq);
    const queue = await openQueue(bullmq, values, onCleanup);
    await queue.obliterate({ force: true });
    let processed = 0;
    openWorker(
      bullmq,
      values,
      onCleanup,
      async (job) => {
        processed += 1;
        return job.data.i;
      },
      { concurrency, removeOnComplete: { count: 1000 } },
    );
    let stop = false;
    let added = 0;
    const producer = (async () => {
      const every = 1000 / rate;
      const t0 = Date.now();
      while (!stop) {
        await queue.add('probe', { i: added });
        added += 1;
        const due = t0 + added * every - Date.now();
        if (due > 0) await sleep(due);
      }
    })();
    while (processed < 20) await sleep(20);
    process.stderr.write('READY\n');
    const rl = createInterface({ input: process.stdin });
    const lines = rl[Symbol.asyncIterator]();
    await lines.next();
    recording = true;
    const before = processed;
    await lines.next();
    recording = false;
    const jobs = processed - before;
    rl.close();
    stop = true;
    await producer;
    const all = samples.map((s) => s[1]).sort((a, b) => a - b);
    const byName = {};
    for (const [name, ms] of samples) (byName[name] ||= []).push(ms);
    const byCommand = {};
    for (const [name, v] of Object.entries(byName)) {
      v.sort((a, b) => a - b);
      byCommand[name] = { n: v.length, p99: pct(v, 99), max: v[v.length - 1] };
    }
    const worst = samples.reduce((w, s) => (!w || s[1] > w[1] ? s : w), null);
    return {
      commands: all.length,
      p50: pct(all, 50),
      p99: pct(all, 99),
      p999: pct(all, 99.9),
      max: all.length ? all[all.length - 1] : null,
      maxCommand: worst ? worst[0] : null,
      jobs,
      byCommand,
    };
  },
  { hardTimeoutMs: 3600000 },
);
