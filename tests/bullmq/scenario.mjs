#!/usr/bin/env node
// Builds the starting state of one differential-test case with the real BullMQ client of the
// chosen version, and says which ids to retry and how.
//
//   node scenario.mjs --redis redis://127.0.0.1:6379/1 --queue q --case NAME [--bullmq PKG]
//
// stdout: { "case", "ids": [...], "state": "failed"|"completed",
//           "resetAttemptsMade": bool, "resetAttemptsStarted": bool, "queues": [names] }
// Cases: basic, reset-both, completed, missing, wrong-state, paused, maxed, priority, lifo,
// flow-fpof, flow-idof, flow-cpof, flow-rdof, flow-none, legacy-attempts, events-maxlen,
// events-unset, scheduler. A few set-ups that no public client call produces (an id in the
// active list, a v3/v4 legacy hash field, a meta field removed) are written with raw commands,
// each marked "raw" below.

import IORedis from 'ioredis';
import { UsageError, connectionOpts, loadBullmq, log, parseCli, preflight, runMain, sleep } from './lib.mjs';

const USAGE = 'usage: scenario.mjs --redis URL --queue NAME --case NAME [--prefix bull] [--bullmq PKG]';
const UNFINISHED = ['waiting', 'active', 'delayed', 'prioritized', 'paused'];


class Ctx {
  constructor(bullmq, v, onCleanup) {
    this.bullmq = bullmq;
    this.v = v;
    this.onCleanup = onCleanup;
    this.names = [];
    this.queues = {};
  }

  opts() {
    return { connection: connectionOpts(this.v.redis), prefix: this.v.prefix, ...(this.extra || {}) };
  }

  async queue(name = this.v.queue) {
    if (!this.queues[name]) {
      const q = new this.bullmq.Queue(name, this.opts());
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

  key(suffix, name = this.v.queue) {
    return `${this.v.prefix}:${name}:${suffix}`;
  }

  /** Runs a Worker on `name` that fails jobs whose data.fail is set and completes the rest,
   *  until nothing is left to do. */
  async work(name = this.v.queue, states = UNFINISHED) {
    const q = await this.queue(name);
    const w = new this.bullmq.Worker(
      name,
      async (job) => {
        if (job.data && job.data.fail) throw new Error(job.data.reason || 'ECONNRESET');
        return { ok: true, id: job.id };
      },
      this.opts(),
    );
    w.on('error', (e) => log(`worker error: ${e.message}`));
    const deadline = Date.now() + 30000;
    for (;;) {
      const counts = await q.getJobCounts(...states);
      if (Object.values(counts).every((n) => n === 0)) break;
      if (Date.now() > deadline) throw new Error(`queue ${name} did not settle: ${JSON.stringify(counts)}`);
      await sleep(20);
    }
    await w.close();
  }

  /** Adds jobs, runs a worker to their final state, returns their ids. */
  async finished(jobs) {
    const q = await this.queue();
    const added = [];
    for (const j of jobs) added.push(await q.add(j.name || 'charge', j.data || {}, j.opts || {}));
    await this.work();
    return added.map((j) => String(j.id));
  }

  /** A flow: parent in `<queue>-parent`, one failing child in the queue, with child `opts`. */
  async flow(childOpts) {
    const parentQueue = `${this.v.queue}-parent`;
    await this.queue(parentQueue);
    const q = await this.queue();
    const producer = new this.bullmq.FlowProducer(this.opts());
    this.onCleanup(() => producer.close());
    const tree = await producer.add({
      name: 'settle',
      queueName: parentQueue,
      data: {},
      children: [
        { name: 'charge', queueName: this.v.queue, data: { fail: true }, opts: childOpts },
        { name: 'charge', queueName: this.v.queue, data: {}, opts: {} },
      ],
    });
    await this.work();
    await this.work(parentQueue);
    void q;
    return [String(tree.children[0].job.id)];
  }
}

const fail = (extra = {}) => ({ data: { fail: true }, ...extra });

const CASES = {
  basic: async (c) => ({ ids: await c.finished([fail(), fail({ opts: { attempts: 3 } })]) }),
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
    const ids = await c.finished([fail()]);
    const q = await c.queue();
    if (typeof q.setGlobalConcurrency !== 'function') throw new Error('setGlobalConcurrency missing');
    await q.setGlobalConcurrency(1);
    await c.raw().lpush(c.key('active'), '77'); // raw: a job being processed elsewhere
    return { ids };
  },
  priority: async (c) => ({ ids: await c.finished([fail({ opts: { priority: 5 } }), fail({ opts: { priority: 1 } }), fail()]) }),
  lifo: async (c) => {
    const ids = await c.finished([fail({ opts: { lifo: true } }), fail(), fail({ opts: { lifo: true } })]);
    await (await c.queue()).add('waiting', {}); // a job already waiting: order matters
    return { ids };
  },
  'flow-fpof': async (c) => ({ ids: await c.flow({ failParentOnFailure: true }) }),
  'flow-idof': async (c) => ({ ids: await c.flow({ ignoreDependencyOnFailure: true }) }),
  'flow-cpof': async (c) => ({ ids: await c.flow({ continueParentOnFailure: true }) }),
  'flow-rdof': async (c) => ({ ids: await c.flow({ removeDependencyOnFailure: true }) }),
  'flow-none': async (c) => ({ ids: await c.flow({}) }),
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
};

runMain('scenario.mjs', async (onCleanup) => {
  const v = parseCli({ case: { type: 'string' } }, USAGE);
  const build = CASES[v.case];
  if (!build) throw new UsageError(`unknown --case ${JSON.stringify(v.case)}; one of ${Object.keys(CASES).join(', ')}`);
  await preflight(v.redis);
  const { mod: bullmq } = await loadBullmq(v.bullmq);
  const ctx = new Ctx(bullmq, v, onCleanup);
  const plan = await build(ctx);
  return { case: v.case, state: 'failed', resetAttemptsMade: false, resetAttemptsStarted: false, ...plan, queues: ctx.names };
});
