#!/usr/bin/env node
// Self-test of the fixtures against a running Redis (it only uses queues named
// selftest-<pkg>-<timestamp>, under the given prefix):
//
//   node selftest.mjs --redis redis://127.0.0.1:6390/0 [--bullmq bullmq,bullmq-5.81.5,bullmq-6.3.8]
//     [--prefix bull] [--cluster | --sentinel NAME]   (passed on to every script;
//     a cluster needs a hash-tagged prefix such as --prefix '{bull}')
//
// For each package: seed 3 failing jobs (one priority 5, one attempts 3) and 2
// completing ones, retry two failed ids with --reset-attempts-made, then
// process.mjs --expect 2 must show exactly those two with attemptsMade 0 and
// two waiting events with prev "failed". Prints "N passed, N failed".

import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    redis: { type: 'string' },
    prefix: { type: 'string', default: 'bull' },
    bullmq: { type: 'string', default: 'bullmq,bullmq-5.81.5,bullmq-6.3.8' },
    cluster: { type: 'boolean', default: false },
    sentinel: { type: 'string' },
  },
  strict: true,
});
if (!values.redis) {
  process.stderr.write(
    'usage: selftest.mjs --redis URL [--prefix bull] [--bullmq a,b,c] [--cluster | --sentinel NAME]\n',
  );
  process.exit(2);
}

const SPEC = {
  jobs: [
    { key: 'a', name: 'charge', data: { amount: 10, reason: 'card declined' }, opts: {}, outcome: 'fail' },
    { key: 'b', name: 'charge', data: { amount: 20 }, opts: { priority: 5 }, outcome: 'fail' },
    { key: 'c', name: 'refund', data: { amount: 30 }, opts: { attempts: 3 }, outcome: 'fail' },
    { key: 'd', name: 'email', data: { to: 'd' }, opts: {}, outcome: 'complete' },
    { key: 'e', name: 'email', data: { to: 'e' }, opts: {}, outcome: 'complete' },
  ],
};

const dir = mkdtempSync(path.join(tmpdir(), 'bullmq-selftest-'));
const specFile = path.join(dir, 'spec.json');
writeFileSync(specFile, JSON.stringify(SPEC));

function run(script, args) {
  const r = spawnSync(process.execPath, [path.join(here, script), ...args], {
    encoding: 'utf8',
    timeout: 120000,
  });
  if (r.status !== 0) {
    throw new Error(`${script} exited ${r.status}: ${r.stderr}`);
  }
  return JSON.parse(r.stdout);
}

let passed = 0;
let failed = 0;
function check(name, cond, detail) {
  if (cond) {
    passed++;
    process.stderr.write(`ok   ${name}\n`);
  } else {
    failed++;
    process.stderr.write(`FAIL ${name}: ${JSON.stringify(detail)}\n`);
  }
}

for (const pkg of values.bullmq.split(',')) {
  const queue = `selftest-${pkg}-${Date.now()}`;
  const common = ['--redis', values.redis, '--queue', queue, '--prefix', values.prefix, '--bullmq', pkg];
  if (values.cluster) common.push('--cluster');
  if (values.sentinel !== undefined) common.push('--sentinel', values.sentinel);
  try {
    const seed = run('seed.mjs', [...common, '--spec', specFile]);
    const byKey = Object.fromEntries(seed.jobs.map((j) => [j.key, j]));
    check(`${pkg} seed: a/b/c failed, d/e completed`,
      ['a', 'b', 'c'].every((k) => byKey[k].state === 'failed') &&
        ['d', 'e'].every((k) => byKey[k].state === 'completed'), seed);
    check(`${pkg} seed: attempts 3 job made 3 attempts`, byKey.c.attemptsMade === 3, byKey.c);
    check(`${pkg} seed: priority 5 kept`, byKey.b.priority === 5, byKey.b);
    check(`${pkg} seed: reasons`, byKey.a.failedReason === 'card declined' && byKey.b.failedReason === 'boom', seed);
    check(`${pkg} seed: returnvalue`, byKey.d.returnvalue && byKey.d.returnvalue.ok === true && byKey.d.returnvalue.key === 'd', byKey.d);

    const ids = [byKey.b.id, byKey.c.id];
    const retry = run('retry.mjs', [...common, '--ids', ids.join(','), '--state', 'failed', '--reset-attempts-made']);
    check(`${pkg} retry ok`, retry.jobs.every((j) => j.result === 'ok'), retry);

    const proc = run('process.mjs', [...common, '--expect', '2', '--settle-ms', '1500']);
    const got = proc.processed.map((p) => p.id).sort();
    check(`${pkg} process: exactly the 2 retried jobs`, JSON.stringify(got) === JSON.stringify([...ids].sort()), proc);
    check(`${pkg} process: attemptsMade 0`, proc.processed.every((p) => p.attemptsMade === 0), proc.processed);
    check(`${pkg} process: not timed out`, proc.timedOut === false, proc);
    const failedPrev = proc.waitingEvents.filter((e) => e.prev === 'failed').map((e) => e.jobId).sort();
    check(`${pkg} process: 2 waiting events with prev failed`, JSON.stringify(failedPrev) === JSON.stringify([...ids].sort()), proc.waitingEvents);

    const insp = run('inspect.mjs', [...common, '--ids', [...ids, 'nope'].join(',')]);
    check(`${pkg} inspect: retried jobs completed`, insp.jobs.slice(0, 2).every((j) => j.state === 'completed'), insp);
    check(`${pkg} inspect: missing job`, insp.jobs[2].exists === false, insp.jobs[2]);
  } catch (err) {
    check(`${pkg} run`, false, err.message);
  }
}
rmSync(dir, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
