#!/usr/bin/env python3
"""Reference retry path of the differential tests for the PyPI `bullmq` client: its own
Job.retry(state, {resetAttemptsMade, resetAttemptsStarted}) for every id of every plan that
scenario.py made. The Python Queue writes nothing when it opens; the script checks that.

    python retry_plans.py --redis redis://127.0.0.1:6379/2 --plans FILE [--cases A,B] [--prefix bull]
        [--log-lines FILE]  (JSON {case: {id: line}}: each such job then gets Job.log(line))

Prints {"bullmq": "python:<version>", "results": {"<case>": [{"id", "result"}]}}, result being
"ok", "missing" or the error the client raised.
"""

import argparse
import asyncio
import importlib.metadata
import json
import sys

import redis.asyncio as aioredis
from bullmq import Job, Queue


async def snapshot(raw, prefix, queues):
    out = {}
    for q in queues:
        for k in await raw.keys(f"{prefix}:{q}:*"):
            out[k] = await raw.dump(k)
    return out


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--redis", required=True)
    p.add_argument("--plans", required=True)
    p.add_argument("--cases")
    p.add_argument("--queue", help="unused: each plan names its queue")
    p.add_argument("--prefix", default="bull")
    p.add_argument("--log-lines", help="JSON {case: {id: line}}: after a job's retry, job.log(line)")
    a = p.parse_args()
    lines = {}
    if a.log_lines:
        with open(a.log_lines) as f:
            lines = json.load(f)
    only = set(a.cases.split(",")) if a.cases else None
    with open(a.plans) as f:
        plans = [x for x in json.load(f)["plans"] if not x.get("unavailable") and (only is None or x["case"] in only)]
    raw = aioredis.from_url(a.redis)
    results = {}
    for plan in plans:
        before = await snapshot(raw, a.prefix, plan["queues"])
        queue = Queue(plan["queue"], {"connection": a.redis, "prefix": a.prefix})
        await asyncio.sleep(0.05)
        if await snapshot(raw, a.prefix, plan["queues"]) != before:
            raise RuntimeError(f"case {plan['case']}: opening the Queue changed Redis")
        opts = {"resetAttemptsMade": plan["resetAttemptsMade"], "resetAttemptsStarted": plan["resetAttemptsStarted"]}
        jobs = []
        for job_id in plan["ids"]:
            try:
                job = await Job.fromId(queue, job_id)
            except Exception as e:  # noqa: BLE001 - a load failure is a result here
                jobs.append({"id": job_id, "result": f"cannot load: {e}"})
                continue
            if job is None:
                jobs.append({"id": job_id, "result": "missing"})
                continue
            try:
                # Before 2.17.0 retry() takes no options and returns the script's coroutine.
                try:
                    pending = job.retry(plan["state"], opts)
                except TypeError:
                    pending = job.retry(plan["state"])
                await pending
                jobs.append({"id": job_id, "result": "ok"})
                line = lines.get(plan["case"], {}).get(job_id)
                if line is not None:
                    await job.log(line)
            except Exception as e:  # noqa: BLE001 - BullMQ's own refusal is the result
                jobs.append({"id": job_id, "result": str(e)})
        await queue.close()
        results[plan["case"]] = jobs
    await raw.aclose()
    print(json.dumps({"bullmq": "python:" + importlib.metadata.version("bullmq"), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
