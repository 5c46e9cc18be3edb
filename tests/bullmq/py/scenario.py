#!/usr/bin/env python3
"""Builds differential-test cases with the PyPI `bullmq` client, one queue per case
(`<queue>-<case>`): the Python counterpart of ../scenario.mjs, for the cases its API allows.

    python scenario.py --redis redis://127.0.0.1:6379/1 --queue diff --cases all [--prefix bull]

Prints one JSON document: {"bullmq": "<version>", "plans": [{"case", "queue", "queues",
"ids", "state", "resetAttemptsMade", "resetAttemptsStarted", "parentFailedHash", ...}]}.
Set-ups no client call makes (legacy fields, corrupt values, removed fields) are written raw.
"""

import argparse
import asyncio
import importlib.metadata
import json
import sys
import time

import redis.asyncio as aioredis
from bullmq import FlowProducer, Queue, Worker

UNFINISHED = ("waiting", "active", "delayed", "prioritized", "paused")


class Ctx:
    def __init__(self, args, queue):
        self.a = args
        self.queue_name = queue
        self.names = []
        self.queues = {}
        self.closers = []
        self.raw = aioredis.from_url(args.redis, decode_responses=True)
        self.parent_failed_hash = False
        self.parent_key = None

    def opts(self):
        return {"connection": self.a.redis, "prefix": self.a.prefix}

    def key(self, suffix, name=None):
        return f"{self.a.prefix}:{name or self.queue_name}:{suffix}"

    async def queue(self, name=None):
        name = name or self.queue_name
        if name not in self.queues:
            q = Queue(name, self.opts())
            self.closers.append(q.close)
            self.queues[name] = q
            self.names.append(name)
        return self.queues[name]

    async def work(self, name=None):
        q = await self.queue(name)

        async def process(job, token):
            # data.logs: lines the job logs first, with its own Job.log (trimmed to keepLogs).
            for i in range(1, ((job.data or {}).get("logs") or 0) + 1):
                await job.log(f"line {i}")
            if job.data and job.data.get("fail"):
                raise Exception(job.data.get("reason", "ECONNRESET"))
            return {"ok": True}

        # A short block timeout, so that closing the Worker does not wait 5 s.
        w = Worker(name or self.queue_name, process, {**self.opts(), "drainDelay": 0.1})
        deadline = time.monotonic() + 30
        while True:
            counts = await q.getJobCounts(*UNFINISHED)
            if all(n == 0 for n in counts.values()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"queue {name} did not settle: {counts}")
            await asyncio.sleep(0.01)
        await w.close()

    async def finished(self, jobs):
        q = await self.queue()
        ids = []
        for j in jobs:
            job = await q.add(j.get("name", "charge"), j.get("data", {}), j.get("opts", {}))
            ids.append(str(job.id))
        await self.work()
        return ids

    async def flow(self, children):
        parent_queue = f"{self.queue_name}-parent"
        await self.queue(parent_queue)
        await self.queue()
        producer = FlowProducer(self.a.redis, {"prefix": self.a.prefix})
        self.closers.append(producer.close)
        tree = await producer.add(
            {
                "name": "settle",
                "queueName": parent_queue,
                "data": {},
                "opts": {},
                "children": [
                    {"name": "charge", "queueName": self.queue_name, "data": c.get("data", {}), "opts": c.get("opts", {})}
                    for c in children
                ],
            },
            {"prefix": self.a.prefix},
        )
        await self.work()
        await self.work(parent_queue)
        self.parent_key = self.key(tree["job"].id, parent_queue)
        self.parent_failed_hash = await self.raw.type(f"{self.parent_key}:failed") == "hash"
        return [str(c["job"].id) for c in tree["children"]]

    async def close(self):
        for c in reversed(self.closers):
            await c()
        await self.raw.aclose()


def fail(opts=None):
    return {"data": {"fail": True}, "opts": opts or {}}


async def basic(c):
    return {"ids": await c.finished([fail(), fail({"attempts": 3})])}


async def kept_logs(c):
    """Jobs with logs, one trimmed by keepLogs (what an audit line is appended to)."""
    jobs = [
        {"data": {"fail": True, "logs": 3}, "opts": {"keepLogs": 2}},
        {"data": {"fail": True, "logs": 1}, "opts": {}},
    ]
    return {"ids": await c.finished(jobs)}


async def reset_both(c):
    return {"ids": await c.finished([fail({"attempts": 2})]), "resetAttemptsMade": True, "resetAttemptsStarted": True}


async def completed(c):
    return {"ids": await c.finished([{}, {}]), "state": "completed"}


async def missing(c):
    return {"ids": await c.finished([fail()]) + ["no-such-job"]}


async def wrong_state(c):
    return {"ids": await c.finished([{}])}


async def paused(c):
    ids = await c.finished([fail(), fail({"priority": 3})])
    await (await c.queue()).pause()
    return {"ids": ids}


async def priority(c):
    return {"ids": await c.finished([fail({"priority": 5}), fail({"priority": 1}), fail()])}


async def priority_negative(c):
    ids = await c.finished([fail(), fail()])
    await c.raw.hset(c.key(ids[0]), "priority", "-1")  # raw: a value BullMQ's Node client accepts
    return {"ids": ids}


async def lifo(c):
    ids = await c.finished([fail({"lifo": True}), fail(), fail({"lifo": True})])
    await (await c.queue()).add("waiting", {}, {})
    return {"ids": ids}


def flow_case(children):
    async def build(c):
        return {"ids": (await c.flow(children))[:1]}

    return build


async def flow_completed_child(c):
    return {"ids": (await c.flow([{}, fail()]))[:1], "state": "completed"}


async def flow_parent_deleted(c):
    ids = (await c.flow([fail(), {}]))[:1]
    await c.raw.delete(c.parent_key)  # raw
    return {"ids": ids}


async def legacy_attempts(c):
    ids = await c.finished([fail()])
    await c.raw.hset(c.key(ids[0]), "attemptsMade", "2")  # raw: a v3/v4-era field
    return {"ids": ids, "resetAttemptsMade": True}


async def events_unset(c):
    ids = await c.finished([fail()])
    await c.raw.hdel(c.key("meta"), "opts.maxLenEvents")  # raw
    return {"ids": ids}


async def missing_fields(c):
    ids = await c.finished([fail({"lifo": True}), fail()])
    for i in ids:
        await c.raw.hdel(c.key(i), "opts", "priority", "delay")  # raw
    return {"ids": ids}


async def corrupt_pc(c):
    ids = await c.finished([fail({"priority": 5}), fail()])
    await c.raw.set(c.key("pc"), "abc")  # raw
    return {"ids": ids, "corrupt": "pc"}


async def corrupt_maxlen(c):
    ids = await c.finished([fail()])
    await c.raw.hset(c.key("meta"), "opts.maxLenEvents", "abc")  # raw
    return {"ids": ids, "corrupt": "maxlen"}


async def corrupt_concurrency(c):
    ids = await c.finished([fail()])
    await c.raw.hset(c.key("meta"), "concurrency", "abc")  # raw
    return {"ids": ids, "corrupt": "concurrency"}


async def ledger_collision(c):
    ids = await c.finished([{**fail(), "opts": {"jobId": "jobretry:ledger:diff/test"}}, fail()])
    return {"ids": ids}


CASES = {
    "basic": basic,
    "kept-logs": kept_logs,
    "reset-both": reset_both,
    "completed": completed,
    "missing": missing,
    "wrong-state": wrong_state,
    "paused": paused,
    "priority": priority,
    "priority-negative": priority_negative,
    "lifo": lifo,
    "flow-fpof": flow_case([fail({"failParentOnFailure": True}), {}]),
    "flow-idof": flow_case([fail({"ignoreDependencyOnFailure": True}), {}]),
    "flow-rdof": flow_case([fail({"removeDependencyOnFailure": True}), {}]),
    "flow-none": flow_case([fail(), {}]),
    "flow-sibling-failed": flow_case([fail(), fail({"ignoreDependencyOnFailure": True})]),
    "flow-completed-child": flow_completed_child,
    "flow-parent-deleted": flow_parent_deleted,
    "legacy-attempts": legacy_attempts,
    "events-unset": events_unset,
    "missing-fields": missing_fields,
    "corrupt-pc": corrupt_pc,
    "corrupt-maxlen": corrupt_maxlen,
    "corrupt-concurrency": corrupt_concurrency,
    "ledger-collision": ledger_collision,
}


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--redis", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--prefix", default="bull")
    p.add_argument("--cases", required=True)
    a = p.parse_args()
    names = list(CASES) if a.cases == "all" else a.cases.split(",")
    plans = []
    for name in names:
        queue = f"{a.queue}-{name}"
        ctx = Ctx(a, queue)
        try:
            plan = await CASES[name](ctx)
        finally:
            await ctx.close()
        plans.append(
            {
                "case": name,
                "queue": queue,
                "state": "failed",
                "resetAttemptsMade": False,
                "resetAttemptsStarted": False,
                **plan,
                "parentFailedHash": ctx.parent_failed_hash,
                "queues": ctx.names,
            }
        )
    print(json.dumps({"bullmq": "python:" + importlib.metadata.version("bullmq"), "plans": plans}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
