"""Wake-ups: NOTIFY makes pickup immediate; a lost listener comes back; polling still works."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg

import simplequeue as sq
from tests.conftest import WorkerProcess, count, eventually, query


class Stamp(sq.Handler):
    QUEUE = "stamp"

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        self.seen[job.data] = time.monotonic()


async def test_notify_wakes_an_idle_worker_at_once(dsn: str) -> None:
    handler = Stamp()
    # the fallback poll is a minute away: only NOTIFY can explain a quick pickup
    async with sq.SimpleQueue.from_url(dsn, empty_poll_sleep=60) as queue:
        queue.register_handler(handler)
        await queue.start()
        assert queue._worker is not None and queue._worker.listener is not None
        await asyncio.wait_for(queue._worker.listener.connected.wait(), 10)
        await asyncio.sleep(0.2)  # let the first empty claim finish; the poller now sleeps
        latencies = []
        for n in range(5):
            sent = time.monotonic()
            await queue.insert_job(sq.Job("stamp", n))
            await eventually(lambda n=n: n in handler.seen, timeout=5, every=0.001)
            latencies.append(handler.seen[n] - sent)
    assert max(latencies) < 2


async def test_notify_for_another_queue_does_not_wake(dsn: str) -> None:
    async with sq.SimpleQueue.from_url(dsn, empty_poll_sleep=60) as queue:
        queue.register_handler(Stamp())
        await queue.start()
        assert queue._worker is not None and queue._worker.listener is not None
        await asyncio.wait_for(queue._worker.listener.connected.wait(), 10)
        await asyncio.sleep(0.2)
        claims = queue._worker.poller.claims
        await queue.insert_jobs([sq.Job("someone-else", n) for n in range(3)])
        await asyncio.sleep(0.3)
        assert queue._worker.poller.claims == claims


async def test_a_killed_listener_reconnects(dsn: str) -> None:
    handler = Stamp()
    async with sq.SimpleQueue.from_url(dsn, empty_poll_sleep=60) as queue:
        queue.register_handler(handler)
        await queue.start()
        assert queue._worker is not None and queue._worker.listener is not None
        listener = queue._worker.listener
        await asyncio.wait_for(listener.connected.wait(), 10)
        for _ in range(2):
            query(
                dsn,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()",
            )
            before = listener.connections
            await eventually(lambda before=before: listener.connections > before, timeout=10)
        await queue.insert_job(sq.Job("stamp", 1))
        await eventually(lambda: 1 in handler.seen, timeout=5)


async def test_without_notify_the_fallback_poll_finds_jobs(dsn: str) -> None:
    handler = Stamp()
    async with sq.SimpleQueue.from_url(dsn, use_notify=False, empty_poll_sleep=0.1) as queue:
        queue.register_handler(handler)
        await queue.start()
        assert queue._worker is not None and queue._worker.listener is None
        await queue.insert_job(sq.Job("stamp", 1))
        await eventually(lambda: 1 in handler.seen, timeout=5)
    # no NOTIFY was sent by the insert either
    assert count(dsn, "status = 'completed'") == 1


async def test_heartbeats_keep_beating_while_the_event_loop_is_blocked(
    dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    class Hog(sq.Handler):
        QUEUE = "hog"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            time.sleep(1.5)  # noqa: ASYNC251 - blocks the loop for 3x the stall threshold (0.5 s)

    watcher = workers()  # another process, whose reaper sweeps every 0.2 s all along
    await asyncio.sleep(1)
    async with sq.SimpleQueue.from_url(dsn, heartbeat_interval=0.2) as queue:
        queue.register_handler(Hog())
        job_id = await queue.insert_job(sq.Job("hog", {}))
        assert job_id is not None
        await queue.start()
        job = await queue.wait_for_job(job_id, timeout=20)
    assert watcher.proc.poll() is None
    assert job.status is sq.JobStatus.COMPLETED
    assert (job.attempt, job.reprocess_count) == (1, 0)


async def test_jobs_inserted_while_the_database_was_away_are_found(dsn: str) -> None:
    handler = Stamp()
    async with sq.SimpleQueue.from_url(dsn, empty_poll_sleep=0.2) as queue:
        queue.register_handler(handler)
        await queue.start()
        # kill every connection of the worker: pool, listener, heartbeat
        query(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO simplequeue.jobs (id, queue, data) "
                "VALUES (gen_random_uuid(), 'stamp', '7')"
            )
        await eventually(lambda: 7 in handler.seen, timeout=10)
