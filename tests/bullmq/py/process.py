#!/usr/bin/env python3
"""Processes jobs of a queue with the PyPI `bullmq` client's real Worker and reports them.

    python process.py --redis redis://127.0.0.1:6379/0 --queue q --expect N [--prefix bull]
                      [--timeout-ms 30000] [--settle-ms 2000]

Stops after N jobs plus settle-ms without another one, or after timeout-ms. Prints one JSON
document: {"processed": [{"id", "name", "attemptsMade", "attemptsStarted"}], "timedOut": bool}.
"""

import argparse
import asyncio
import json
import sys
import time

from bullmq import Worker


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--redis", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--prefix", default="bull")
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--timeout-ms", type=int, default=30000)
    p.add_argument("--settle-ms", type=int, default=2000)
    a = p.parse_args()

    processed = []
    last = time.monotonic()

    async def process(job, token):
        nonlocal last
        processed.append(
            {"id": str(job.id), "name": job.name, "attemptsMade": job.attemptsMade, "attemptsStarted": job.attemptsStarted}
        )
        last = time.monotonic()
        return {"reprocessedBy": "python"}

    worker = Worker(a.queue, process, {"connection": a.redis, "prefix": a.prefix})
    start = time.monotonic()
    timed_out = False
    while True:
        await asyncio.sleep(0.05)
        now = time.monotonic()
        if len(processed) >= a.expect and now - last >= a.settle_ms / 1000 and now - start >= a.settle_ms / 1000:
            break
        if now - start >= a.timeout_ms / 1000:
            timed_out = True
            break
    await worker.close()
    print(json.dumps({"processed": processed, "timedOut": timed_out}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
