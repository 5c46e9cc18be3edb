// The last step of tests/demo.sh: checks that the run ended as the demo says it does, so the
// demo fails (exit 1, naming what differs) instead of only printing a wrong result.
//
//   node tests/demo/check.cjs SEEDED.json JOBRETRY.json PROCESSED.json
//
// SEEDED: tests/bullmq/seed.mjs's output for tests/demo/jobs.json; JOBRETRY: the JobRetry as
// `kubectl get -o json` prints it; PROCESSED: tests/bullmq/process.mjs's output.
// The demo applies the three ECONNRESET charges, an id that does not exist ("9999") and the
// completed receipt: three retried, two skipped (NotFound, NotInState), no error, so the run is
// PartiallySucceeded; then a BullMQ Worker processes exactly the three retried charges.
'use strict';
const fs = require('fs');

const [seeded, jobretry, processed] = process.argv
  .slice(2)
  .map((f) => JSON.parse(fs.readFileSync(f, 'utf8')));
const failures = [];
const same = (what, got, want) => {
  const [g, w] = [JSON.stringify(got), JSON.stringify(want)];
  if (g !== w) failures.push(`${what}: got ${g}, expected ${w}`);
};
const sorted = (o) =>
  Object.fromEntries(Object.entries(o ?? {}).sort(([a], [b]) => (a < b ? -1 : 1)));

const charges = seeded.jobs
  .filter((j) => j.state === 'failed' && /ECONNRESET/.test(j.failedReason ?? ''))
  .map((j) => String(j.id))
  .sort();
const receipt = String(seeded.jobs.find((j) => j.state === 'completed')?.id);
same('ECONNRESET charges seeded', charges.length, 3);

const s = jobretry.status ?? {};
same('phase', s.phase, 'PartiallySucceeded');
same(
  'matched, retried, skipped, errors',
  [s.matched, s.retried, s.skipped, s.errors],
  [5, 3, 2, 0],
);
same('counts', sorted(s.counts), { NotFound: 1, NotInState: 1, Retried: 3 });
same(
  'job rows (id: result)',
  sorted(Object.fromEntries((s.jobs ?? []).map((r) => [r.id, r.result]))),
  sorted({
    ...Object.fromEntries(charges.map((id) => [id, 'Retried'])),
    9999: 'NotFound',
    [receipt]: 'NotInState',
  }),
);
same('condition Complete', (s.conditions ?? []).find((c) => c.type === 'Complete')?.status, 'True');
same('the Worker timed out', processed.timedOut, false);
same('jobs the Worker processed', processed.processed.map((p) => String(p.id)).sort(), charges);
same(
  'attemptsMade of the processed jobs (resetAttemptsMade: true)',
  processed.processed.map((p) => p.attemptsMade),
  charges.map(() => 0),
);

if (failures.length > 0) {
  for (const f of failures) console.error(`demo check FAILED: ${f}`);
  process.exit(1);
}
const ids = charges.join(', ');
console.log(
  `  as promised: ${s.phase}, ${s.retried} retried (jobs ${ids}), ${s.skipped} skipped ` +
    `(9999 NotFound, ${receipt} NotInState), ${s.errors} errors; ` +
    `the Worker processed exactly jobs ${ids}, their attemptsMade reset to 0`,
);
