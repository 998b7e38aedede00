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
        await queue.ready(timeout=10)
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
        await queue.ready(timeout=10)
        await asyncio.sleep(0.2)
        claims = queue.stats().claims
        await queue.insert_jobs([sq.Job("someone-else", n) for n in range(3)])
        await asyncio.sleep(0.3)
        assert queue.stats().claims == claims


async def test_a_killed_listener_reconnects(dsn: str) -> None:
    handler = Stamp()
    async with sq.SimpleQueue.from_url(dsn, empty_poll_sleep=60) as queue:
        queue.register_handler(handler)
        await queue.start()
        await queue.ready(timeout=10)
        for _ in range(2):
            query(
                dsn,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()",
            )
            before = queue.stats().listener_connections
            await eventually(
                lambda before=before: queue.stats().listener_connections > before, timeout=10
            )
        await queue.insert_job(sq.Job("stamp", 1))
        await eventually(lambda: 1 in handler.seen, timeout=5)


async def test_without_notify_the_fallback_poll_finds_jobs(dsn: str) -> None:
    handler = Stamp()
    async with sq.SimpleQueue.from_url(dsn, use_notify=False, empty_poll_sleep=0.1) as queue:
        queue.register_handler(handler)
        await queue.start()
        assert "listener" not in queue.stats().services
        await queue.ready(timeout=1)  # nothing to wait for
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


class Idle(sq.Handler):
    QUEUE = "idle"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        pass


async def test_a_full_queue_moves_on_when_another_handled_queue_is_idle(dsn: str) -> None:
    # One permit for "stamp", nothing for "idle" to do: each finished stamp job must wake the
    # poller, which is otherwise asleep on the idle queue's behalf until the fallback poll.
    handler = Stamp()
    async with sq.SimpleQueue.from_url(dsn, empty_poll_sleep=60) as queue:
        queue.register_handler(handler)
        queue.register_handler(Idle())
        queue.set_queue_permits("stamp", 1)
        await queue.insert_jobs([sq.Job("stamp", n) for n in range(5)])
        await queue.start()
        await eventually(lambda: len(handler.seen) == 5, timeout=20)


async def test_finished_results_waiting_to_be_written_hold_back_their_jobs(dsn: str) -> None:
    # A full result buffer makes the finishing job wait with its permits: claims cannot
    # outrun the writes and leave thousands of rows `running` that nobody is running.
    from simplequeue.runtime.results import ResultWriter
    from simplequeue.store import Outcome, Store

    async with sq.SimpleQueue.from_url(dsn) as queue:
        ids = [job_id for job_id in await queue.insert_jobs([sq.Job("q", n) for n in range(3)])]
        query(dsn, "UPDATE simplequeue.jobs SET status = 'running', attempt = 1, lease = 1")
        writer = ResultWriter(
            queue.pool, Store(queue.schema), batch_size=10, flush_interval=0, max_buffered=2
        )
        for job_id in ids[:2]:
            assert job_id is not None
            await writer.submit(Outcome(job_id, 1, "completed"))
        assert ids[2] is not None
        third = asyncio.create_task(writer.submit(Outcome(ids[2], 1, "completed")))
        await asyncio.sleep(0.2)
        assert not third.done(), "a full buffer must make the submitter wait"
        running = asyncio.create_task(writer.run())
        await asyncio.wait_for(third, 5)
        writer.close(time.monotonic() + 5)
        await running
    assert count(dsn, "status = 'completed'") == 3


async def test_a_retry_due_at_once_is_picked_up_without_waiting_for_the_poll(dsn: str) -> None:
    """A failed attempt written back as pending and due now (no backoff) wakes the worker
    that wrote it: nothing else would until its fallback poll, a minute away here."""
    attempts: list[float] = []

    class FailOnce(sq.Handler):
        QUEUE = "again"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            attempts.append(time.monotonic())
            if len(attempts) == 1:
                raise RuntimeError("first attempt fails")

    async with sq.SimpleQueue.from_url(dsn, empty_poll_sleep=60, backoff=sq.Fixed(0)) as queue:
        queue.register_handler(FailOnce())
        await queue.start()
        await queue.ready(timeout=10)
        await asyncio.sleep(0.2)  # the poller now sleeps until a wake-up
        await queue.insert_job(sq.Job("again", {}))
        await eventually(lambda: len(attempts) == 2, timeout=10, every=0.005)
    assert attempts[1] - attempts[0] < 5
