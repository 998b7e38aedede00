"""Heartbeats belong to one run of a job (its id and lease), never to the job alone."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest

import simplequeue as sq
from tests.conftest import count, eventually, query


class Other(sq.Handler):
    """Another worker's queue: a worker with only this handler reaps, but never claims slow."""

    QUEUE = "other"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        return None


@pytest.mark.slow
async def test_a_missed_heartbeat_window_gives_exactly_one_rerun(dsn: str) -> None:
    """The job's row is held locked past the stall threshold, so its beats are skipped
    and another worker's reaper hands it back; the first worker claims it again while its
    first run still executes. The first run's end must not silence the second run."""
    runs: list[int] = []
    started = asyncio.Event()

    class Slow(sq.Handler):
        QUEUE = "slow"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            runs.append(job.lease)
            started.set()
            await asyncio.sleep(2.5)

    settings: dict[str, Any] = {
        "heartbeat_interval": 0.2,  # stalled after 0.5 s
        "reaper_interval": 0.1,
        "empty_poll_sleep": 0.1,
        "backoff": sq.Fixed(0),
    }
    async with (
        sq.SimpleQueue.from_url(dsn, **settings) as queue,
        sq.SimpleQueue.from_url(dsn, **settings) as reaping,
    ):
        queue.register_handler(Slow())
        reaping.register_handler(Other())
        await reaping.start()  # the leader: the maintenance runs there
        await eventually(lambda: reaping.stats().leader)
        await queue.start()
        job_id = await queue.insert_job(sq.Job("slow", {}))
        await asyncio.wait_for(started.wait(), 10)
        # The beats skip the locked row for 1.1 s: released half an interval before the
        # next beat (they run every 0.2 s from the worker's start), so the reaper's rounds
        # (every 0.1 s) find it stalled first.
        with psycopg.connect(dsn) as locker:
            locker.execute("SELECT 1 FROM simplequeue.jobs WHERE id = %s FOR UPDATE", [job_id])
            await asyncio.sleep(1.1)
        await eventually(lambda: len(runs) == 2, timeout=10)  # reaped, claimed again here
        await eventually(lambda: count(dsn, "status = 'completed'"), timeout=15)
        await asyncio.sleep(1.5)  # three stall thresholds: a silenced run would be reaped
    assert runs == [1, 2]
    ((status, lease, reprocess),) = query(
        dsn, "SELECT status, lease, reprocess_count FROM simplequeue.jobs"
    )
    assert (status, lease, reprocess) == ("completed", 2, 1)


async def test_a_worker_does_not_reap_the_runs_it_is_running(dsn: str) -> None:
    """A worker whose beats were held back (a locked row, a paused process) knows its runs
    are alive: its own reaper leaves them alone, and the job runs once."""
    runs: list[int] = []

    class Slow(sq.Handler):
        QUEUE = "slow"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            runs.append(job.lease)
            await asyncio.sleep(2.0)

    settings: dict[str, Any] = {
        "heartbeat_interval": 0.2,
        "reaper_interval": 0.05,
        "empty_poll_sleep": 0.1,
    }
    async with sq.SimpleQueue.from_url(dsn, **settings) as queue:
        queue.register_handler(Slow())
        await queue.start()
        job_id = await queue.insert_job(sq.Job("slow", {}))
        await eventually(lambda: runs == [1])
        with psycopg.connect(dsn) as locker:
            locker.execute("SELECT 1 FROM simplequeue.jobs WHERE id = %s FOR UPDATE", [job_id])
            await asyncio.sleep(1.0)
        await eventually(lambda: count(dsn, "status = 'completed'"), timeout=10)
    assert runs == [1]
    assert query(dsn, "SELECT reprocess_count FROM simplequeue.jobs") == [(0,)]


def test_lost_runs_are_forgotten_when_they_end(dsn: str) -> None:
    """What the heartbeat learns about a run (cancelled, taken over) lives as long as
    the run: a long-lived worker does not accumulate it."""
    from simplequeue.runtime.heartbeat import Heartbeater
    from simplequeue.store import Store

    heartbeats = Heartbeater(
        lambda: psycopg.connect(dsn, autocommit=True), Store("simplequeue"), 60
    )
    jobs = []
    for _ in range(50):
        job = sq.Job("q", {})
        job.lease = 1  # never claimed: every beat finds it lost
        heartbeats.track(job)
        jobs.append(job)
    done = threading.Event()
    try:
        heartbeats.beat_now()
        assert all(heartbeats.is_lost(job) for job in jobs)
        for job in jobs:
            heartbeats.untrack(job)
        assert not any(heartbeats.is_lost(job) for job in jobs) and not heartbeats.runs()
        assert heartbeats.lost_total == 50  # the counter stays: it is for operators
    finally:
        done.set()
        heartbeats.stop()


async def test_stopped_workers_leave_nothing_behind(dsn: str) -> None:
    import gc

    from simplequeue.runtime.heartbeat import Heartbeater
    from simplequeue.runtime.poller import Poller

    class Ok(sq.Handler):
        QUEUE = "ok"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    def alive(kind: type) -> int:
        gc.collect()
        return sum(isinstance(o, kind) for o in gc.get_objects())

    before = alive(Poller), alive(Heartbeater)
    async with sq.SimpleQueue.from_url(dsn, empty_poll_sleep=0.05) as queue:
        queue.register_handler(Ok())
        for _ in range(5):
            await queue.start()
            await queue.wait_for_job(await queue.insert_job(sq.Job("ok", {})), timeout=10)  # type: ignore[arg-type]
            await queue.stop()
        assert (alive(Poller), alive(Heartbeater)) == before
