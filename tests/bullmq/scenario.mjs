#!/usr/bin/env node
// Builds the starting state of differential-test cases with the real BullMQ client of the
// chosen release, one queue per case (`<queue>-<case>`), and says for each which ids to retry
// and how.
//
//   node scenario.mjs --redis redis://127.0.0.1:6379/1 --queue diff --cases basic,lifo [--bullmq PKG]
//
// stdout: { "bullmq": "<version>", "plans": [ { "case", "queue", "queues": [names],
//           "ids": [...], "state": "failed"|"completed", "resetAttemptsMade": bool,
//           "resetAttemptsStarted": bool, "parentFailedHash": bool, ... } |
//           { "case", "unavailable": "<why>" } ] }
// A case whose client API the release lacks is reported "unavailable" (and its queue left
// out of the comparison). A few set-ups that no client call produces (an id in the active
// list, a v3/v4 legacy hash field, corrupt values, a removed field) are written with raw
// commands, each marked "raw" below.

import IORedis from 'ioredis';
import { UsageError, connectionOpts, loadBullmq, log, parseCli, preflight, runMain, sleep } from './lib.mjs';

const USAGE = 'usage: scenario.mjs --redis URL --queue NAME --cases A,B,... [--prefix bull] [--bullmq PKG]';
const UNFINISHED = ['waiting', 'active', 'delayed', 'prioritized', 'paused'];

class Unavailable extends Error {}

/** "5.9.0" → [5, 9, 0], for feature checks by release. */
const semver = (v) => v.split('.').map(Number);
const atLeast = (v, min) => {
  const a = semver(v);
  const b = semver(min);
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] > b[i];
  return true;
};

class Ctx {
  constructor(bullmq, version, v, queue, onCleanup) {
    this.bullmq = bullmq;
    this.version = version;
    this.v = v;
    this.queueName = queue;
    this.onCleanup = onCleanup;
    this.names = [];
    this.queues = {};
  }

  opts() {
    return { connection: connectionOpts(this.v.redis), prefix: this.v.prefix, ...(this.extra || {}) };
  }

  async queue(name = this.queueName) {
    if (!this.queues[name]) {
      const q = new this.bullmq.Queue(name, this.opts());
      // A connection error while closing (seen under load) must not end the process.
      q.on('error', (e) => log(`queue error: ${e.message}`));
      this.onCleanup(() => q.close());
      await q.waitUntilReady();
      this.queues[name] = q;
      this.names.push(name);
    }
    return this.queues[name];
  }

  /** A raw connection, for the few set-ups no client call makes. */
  raw() {
    if (!this.rawClient) {
      this.rawClient = new IORedis(this.v.redis, { maxRetriesPerRequest: null });
      this.onCleanup(() => this.rawClient.quit());
    }
    return this.rawClient;
  }

  key(suffix, name = this.queueName) {
    return `${this.v.prefix}:${name}:${suffix}`;
  }

  /** Runs a Worker on `name` that fails jobs whose data.fail is set and completes the rest,
   *  until nothing is left to do. */
  async work(name = this.queueName, states = UNFINISHED, workerOpts = {}) {
    const q = await this.queue(name);
    const w = new this.bullmq.Worker(
      name,
      async (job) => {
        // data.logs: lines the job logs first, with its own Job.log (trimmed to keepLogs).
        for (let i = 1; i <= ((job.data && job.data.logs) || 0); i++) await job.log(`line ${i}`);
        if (job.data && job.data.fail) throw new Error(job.data.reason || 'ECONNRESET');
        return { ok: true, id: job.id };
      },
      { ...this.opts(), ...workerOpts },
    );
    w.on('error', (e) => log(`worker error: ${e.message}`));
    // Closing a Worker whose connections are still initializing disconnects them, and their
    // pending init then rejects into an emitter with no listener left (a crash); the flow
    // cases run a Worker on a parent queue with nothing to do, which closes at once.
    await w.waitUntilReady();
    const deadline = Date.now() + 30000;
    for (;;) {
      const counts = await q.getJobCounts(...states);
      if (Object.values(counts).every((n) => n === 0)) break;
      if (Date.now() > deadline) throw new Error(`queue ${name} did not settle: ${JSON.stringify(counts)}`);
      await sleep(10);
    }
    await w.close();
  }

  /** Adds jobs, runs a worker to their final state, returns their ids. */
  async finished(jobs, workerOpts) {
    const q = await this.queue();
    const added = [];
    for (const j of jobs) added.push(await q.add(j.name || 'charge', j.data || {}, j.opts || {}));
    await this.work(undefined, UNFINISHED, workerOpts);
    return added.map((j) => String(j.id));
  }

  /** A flow: parent in `<queue>-parent`, children in the queue; returns the children's ids. */
  async flow(children) {
    const parentQueue = `${this.queueName}-parent`;
    await this.queue(parentQueue);
    await this.queue();
    const producer = new this.bullmq.FlowProducer(this.opts());
    producer.on('error', (e) => log(`flow producer error: ${e.message}`));
    this.onCleanup(() => producer.close());
    const tree = await producer.add({
      name: 'settle',
      queueName: parentQueue,
      data: {},
      children: children.map((c) => ({ name: 'charge', queueName: this.queueName, data: c.data || {}, opts: c.opts || {} })),
    });
    await this.work();
    await this.work(parentQueue);
    const parentKey = this.key(tree.job.id, parentQueue);
    this.parentFailedHash = (await this.raw().type(`${parentKey}:failed`)) === 'hash';
    this.parentKey = parentKey;
    return tree.children.map((c) => String(c.job.id));
  }

  need(method, what) {
    if (!atLeast(this.version, method)) throw new Unavailable(`${what} needs bullmq >= ${method}`);
  }
}

const fail = (extra = {}) => ({ data: { fail: true }, ...extra });

/** Adds a failed job with `opts`; if the client refuses them, adds it plainly and writes
 *  `field` = `value` into its hash (raw), as a client that accepts them would have. */
async function failedWith(c, opts, field, value) {
  try {
    return await c.finished([fail({ opts })]);
  } catch (e) {
    if (!/priority/i.test(String(e && e.message))) throw e;
    const ids = await c.finished([fail()]);
    await c.raw().hset(c.key(ids[0]), field, value); // raw: a value this client refuses
    return ids;
  }
}

const CASES = {
  basic: async (c) => ({ ids: await c.finished([fail(), fail({ opts: { attempts: 3 } })]) }),
  // Jobs with logs, one trimmed by keepLogs (what an audit line is appended to).
  'kept-logs': async (c) => ({
    ids: await c.finished([
      { data: { fail: true, logs: 3 }, opts: { keepLogs: 2 } },
      { data: { fail: true, logs: 1 } },
    ]),
  }),
  'reset-both': async (c) => ({
    ids: await c.finished([fail({ opts: { attempts: 2 } })]),
    resetAttemptsMade: true,
    resetAttemptsStarted: true,
  }),
  completed: async (c) => ({ ids: await c.finished([{}, {}]), state: 'completed' }),
  missing: async (c) => ({ ids: [...(await c.finished([fail()])), 'no-such-job'] }),
  'wrong-state': async (c) => ({ ids: await c.finished([{}]) }),
  paused: async (c) => {
    const ids = await c.finished([fail(), fail({ opts: { priority: 3 } })]);
    await (await c.queue()).pause();
    return { ids };
  },
  maxed: async (c) => {
    const q = await c.queue();
    if (typeof q.setGlobalConcurrency !== 'function') throw new Unavailable('no Queue.setGlobalConcurrency');
    const ids = await c.finished([fail()]);
    await q.setGlobalConcurrency(1);
    await c.raw().lpush(c.key('active'), '77'); // raw: a job being processed elsewhere
    return { ids };
  },
  priority: async (c) => ({ ids: await c.finished([fail({ opts: { priority: 5 } }), fail({ opts: { priority: 1 } }), fail()]) }),
  'priority-negative': async (c) => ({ ids: [...(await failedWith(c, { priority: -1 }, 'priority', '-1')), ...(await c.finished([fail()]))] }),
  lifo: async (c) => {
    const ids = await c.finished([fail({ opts: { lifo: true } }), fail(), fail({ opts: { lifo: true } })]);
    await (await c.queue()).add('waiting', {}); // a job already waiting: order matters
    return { ids };
  },
  'flow-fpof': async (c) => ({ ids: (await c.flow([fail({ opts: { failParentOnFailure: true } }), {}])).slice(0, 1) }),
  'flow-idof': async (c) => ({ ids: (await c.flow([fail({ opts: { ignoreDependencyOnFailure: true } }), {}])).slice(0, 1) }),
  'flow-cpof': async (c) => ({ ids: (await c.flow([fail({ opts: { continueParentOnFailure: true } }), {}])).slice(0, 1) }),
  'flow-rdof': async (c) => ({ ids: (await c.flow([fail({ opts: { removeDependencyOnFailure: true } }), {}])).slice(0, 1) }),
  'flow-none': async (c) => ({ ids: (await c.flow([fail(), {}])).slice(0, 1) }),
  // The retried child has no option, a failed sibling did: the parent has a `:failed` hash.
  'flow-sibling-failed': async (c) => ({ ids: (await c.flow([fail(), fail({ opts: { ignoreDependencyOnFailure: true } })])).slice(0, 1) }),
  'flow-completed-child': async (c) => ({ ids: (await c.flow([{}, fail()])).slice(0, 1), state: 'completed' }),
  'flow-parent-deleted': async (c) => {
    const ids = (await c.flow([fail(), {}])).slice(0, 1);
    await c.raw().del(c.parentKey); // raw: the parent's hash removed behind BullMQ's back
    return { ids };
  },
  'legacy-attempts': async (c) => {
    const ids = await c.finished([fail()]);
    await c.raw().hset(c.key(ids[0]), 'attemptsMade', '2'); // raw: a v3/v4-era field
    return { ids, resetAttemptsMade: true };
  },
  'events-maxlen': async (c) => {
    c.extra = { streams: { events: { maxLen: 40 } } }; // the queue owner's setting
    const jobs = Array.from({ length: 40 }, (_, i) => (i % 2 ? {} : fail()));
    const ids = await c.finished(jobs);
    return { ids: ids.filter((_, i) => i % 2 === 0), eventsMaxLen: 40 };
  },
  'events-unset': async (c) => {
    const ids = await c.finished([fail()]);
    await c.raw().hdel(c.key('meta'), 'opts.maxLenEvents'); // raw: as on a queue made before 5.1.1
    return { ids };
  },
  scheduler: async (c) => {
    const q = await c.queue();
    if (typeof q.upsertJobScheduler !== 'function') throw new Unavailable('no Queue.upsertJobScheduler');
    await q.upsertJobScheduler('tick', { every: 3600000 }, { name: 'tick', data: { fail: true } });
    let job;
    for (let i = 0; i < 100 && !job; i++) {
      const found = [...(await q.getDelayed()), ...(await q.getWaiting()), ...(await q.getPrioritized())];
      job = found.find((j) => String(j.id).startsWith('repeat:'));
      if (!job) await sleep(20);
    }
    if (!job) throw new Error('the scheduler produced no job');
    if ((await job.getState()) === 'delayed') await job.promote();
    await c.work(undefined, ['waiting', 'active', 'prioritized']); // the next run stays delayed
    return { ids: [String(job.id)] };
  },
  deduplicated: async (c) => {
    // deduplication since 5.17.1; its predecessor `debounce` since 5.11.0.
    const opts = atLeast(c.version, '5.17.1') ? { deduplication: { id: 'dedup-1' } } : { debounce: { id: 'dedup-1' } };
    c.need('5.11.0', 'debounce/deduplication');
    return { ids: await c.finished([fail({ opts })]) };
  },
  'rate-limited': async (c) => {
    const q = await c.queue();
    const ids = await c.finished([fail(), fail()], { limiter: { max: 1000, duration: 60000 } });
    if (typeof q.setGlobalRateLimit === 'function') await q.setGlobalRateLimit(1, 60000);
    return { ids };
  },
  'missing-fields': async (c) => {
    const ids = await c.finished([fail({ opts: { lifo: true } }), fail()]);
    for (const id of ids) await c.raw().hdel(c.key(id), 'opts', 'priority', 'delay'); // raw
    return { ids };
  },
  'corrupt-pc': async (c) => {
    const ids = await c.finished([fail({ opts: { priority: 5 } }), fail()]);
    await c.raw().set(c.key('pc'), 'abc'); // raw: a corrupt priority counter
    return { ids, corrupt: 'pc' };
  },
  'corrupt-maxlen': async (c) => {
    const ids = await c.finished([fail()]);
    await c.raw().hset(c.key('meta'), 'opts.maxLenEvents', 'abc'); // raw
    return { ids, corrupt: 'maxlen' };
  },
  'corrupt-concurrency': async (c) => {
    const ids = await c.finished([fail()]);
    await c.raw().hset(c.key('meta'), 'concurrency', 'abc'); // raw
    return { ids, corrupt: 'concurrency' };
  },
  // A job whose custom id is the ledger key of the operator's former naming
  // (P:Q:jobretry:ledger:<runKey>); the test's run key is "diff/test".
  'ledger-collision': async (c) => {
    const q = await c.queue();
    const ids = await c.finished([fail({ opts: { jobId: 'jobretry:ledger:diff/test' } }), fail()]);
    // The current naming's id part has four parts: BullMQ releases with the custom-id rule
    // refuse it.
    let newNameRefused = null;
    try {
      await q.add('x', {}, { jobId: 'jobretry:ledger:run:diff/test' });
      await q.remove('jobretry:ledger:run:diff/test');
      newNameRefused = false;
    } catch (e) {
      newNameRefused = String(e && e.message);
    }
    return { ids, newNameRefused };
  },
};

runMain('scenario.mjs', async (onCleanup) => {
  const v = parseCli({ cases: { type: 'string' } }, USAGE);
  const names = (v.cases || '').split(',').filter(Boolean);
  if (names.length === 0) throw new UsageError(`--cases is required\n${USAGE}`);
  for (const name of names) {
    if (name !== 'all' && !CASES[name]) {
      throw new UsageError(`unknown case ${JSON.stringify(name)}; one of ${Object.keys(CASES).join(', ')}`);
    }
  }
  await preflight(v.redis);
  const { mod: bullmq, version } = await loadBullmq(v.bullmq);
  const plans = [];
  for (const name of names.includes('all') ? Object.keys(CASES) : names) {
    const queue = `${v.queue}-${name}`;
    const ctx = new Ctx(bullmq, version, v, queue, onCleanup);
    try {
      const plan = await CASES[name](ctx);
      plans.push({
        case: name,
        queue,
        state: 'failed',
        resetAttemptsMade: false,
        resetAttemptsStarted: false,
        ...plan,
        parentFailedHash: Boolean(ctx.parentFailedHash),
        queues: ctx.names,
      });
    } catch (e) {
      if (!(e instanceof Unavailable)) throw new Error(`case ${name}: ${e && e.message}`);
      log(`case ${name} unavailable on bullmq ${version}: ${e.message}`);
      plans.push({ case: name, queue, unavailable: e.message, queues: ctx.names });
    }
  }
  return { bullmq: version, plans };
});
