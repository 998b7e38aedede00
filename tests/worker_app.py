"""Handlers run by worker processes in the multi-process tests.

Each execution is recorded in `test_executions` (job id, pid, start, end), written in its
own transaction so the record survives even when the process is killed mid-job.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

import simplequeue as sq

DDL = """
CREATE TABLE IF NOT EXISTS public.test_executions (
    job_id uuid NOT NULL, pid integer NOT NULL,
    started timestamptz NOT NULL DEFAULT clock_timestamp(), ended timestamptz)
"""


_pool: AsyncConnectionPool[Any] | None = None


async def record(job: sq.Job, *, end: bool) -> None:
    global _pool
    if _pool is None:
        _pool = AsyncConnectionPool(
            os.environ["SIMPLEQUEUE_TEST_DSN_APP"],
            min_size=1,
            max_size=4,
            kwargs={"autocommit": True},
            open=False,
        )
        await _pool.open()
    async with _pool.connection() as conn:
        if end:
            await conn.execute(
                "UPDATE public.test_executions SET ended = clock_timestamp() "
                "WHERE job_id = %s AND pid = %s AND ended IS NULL",
                [job.id, os.getpid()],
            )
        else:
            await conn.execute(
                "INSERT INTO public.test_executions (job_id, pid) VALUES (%s, %s)",
                [job.id, os.getpid()],
            )


class Work(sq.Handler):
    """`sleep`: seconds to work; `crash`: exit the process abruptly mid-job; `fail`: raise
    ValueError with that text."""

    QUEUE = "work"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
        await record(job, end=False)
        if job.data.get("crash"):
            os._exit(17)
        if job.data.get("fail"):
            raise ValueError(job.data["fail"])
        await asyncio.sleep(float(job.data.get("sleep", 0)))
        await record(job, end=True)
        return None


class Limited(sq.Handler):
    """For the fleet-wide limits: `sleep` seconds of work; `park`: the first run of the job
    parks its key (its queue, without one) for that many seconds."""

    QUEUE = "limited"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
        await record(job, end=False)
        if job.data.get("park") and job.data.get("first", True):
            assert _pool is not None
            async with _pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM public.test_executions WHERE job_id = %s", [job.id]
                )
                row = await cur.fetchone()
            if row and row[0] == 1:
                await record(job, end=True)
                return sq.JobResult.park(
                    datetime.now(UTC) + timedelta(seconds=float(job.data["park"]))
                )
        await asyncio.sleep(float(job.data.get("sleep", 0)))
        await record(job, end=True)
        return None


def configure(queue: sq.SimpleQueue) -> None:
    queue.register_handler(Work())


def limited(queue: sq.SimpleQueue) -> None:
    queue.register_handler(Limited())


HANDLERS = [Work]


def scheduled(queue: sq.SimpleQueue) -> None:
    """A schedule every second into `ticks` (no handler: the jobs stay to be counted)."""
    queue.register_handler(Work())
    queue.schedule(
        "tick",
        lambda slot: sq.Job("ticks", {"slot": slot.isoformat()}),
        every=1,
        missed="all",
    )


def scheduled_skip(queue: sq.SimpleQueue) -> None:
    """A schedule every second into `ticks`, under the default missed policy."""
    queue.schedule("tick", lambda slot: sq.Job("ticks", {"slot": slot.isoformat()}), every=1)
