"""The runtime's services seen from outside: one supervisor, one health per runtime, and
the counters and one-shot sweeps the facade offers."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

import simplequeue as sq
from simplequeue.maintenance.reaper import Reaper
from tests.conftest import FAST, count, eventually, query


class Ok(sq.Handler):
    QUEUE = "ok"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        return None


async def stalled_job(queue: sq.SimpleQueue, dsn: str) -> None:
    """A job whose worker seems to have died an hour ago."""
    await queue.insert_job(sq.Job("q", {}))
    query(
        dsn,
        "UPDATE simplequeue.jobs SET status = 'running', attempt = 1, lease = 1, "
        "heartbeat_at = now() - interval '1 hour'",
    )


async def test_stats_count_what_the_workers_did(dsn: str) -> None:
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        assert queue.stats() == sq.QueueStats()  # not started: all zero
        with pytest.raises(sq.QueueStateError, match="not started"):
            await queue.ready()
        queue.register_handler(Ok())
        await queue.start()
        await queue.ready(timeout=10)
        ids = await queue.insert_jobs([sq.Job("ok", n) for n in range(20)])
        await eventually(lambda: count(dsn, "status = 'completed'") == 20)
        await eventually(lambda: queue.stats().results_written == 20)
        stats = queue.stats()
        assert stats.started and stats.claimed == 20 and stats.claims >= 1
        assert set(stats.services) >= {"poller", "results", "listener", "reaper"}
        assert stats.listener_connected and stats.listener_connections == 1
        assert (stats.running, stats.results_buffered, stats.results_fenced_off) == (0, 0, 0)
        assert stats.database_failures == stats.service_restarts == 0
        assert all(ids)
        await queue.stop()
        assert queue.stats() == sq.QueueStats()


async def test_a_crashed_service_is_logged_restarted_and_counted(
    dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    crashes = []
    real = Reaper.run_once

    async def crash_once(self: Reaper) -> sq.ReapReport:
        if not crashes:
            crashes.append(1)
            raise RuntimeError("a bug in a sweep")
        return await real(self)

    monkeypatch.setattr(Reaper, "run_once", crash_once)
    monkeypatch.setattr("simplequeue.runtime.runtime.RESTART_DELAY", 0.05)
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        await stalled_job(queue, dsn)
        await queue.start()
        # restarted, the reaper does its work
        await eventually(lambda: count(dsn, "status = 'pending'") == 1, timeout=5)
        assert queue.stats().service_restarts == 1
    crashed = [r for r in caplog.records if "reaper crashed" in r.getMessage()]
    assert len(crashed) == 1 and crashed[0].exc_info is not None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_one_queue_losing_its_database_does_not_hold_back_another(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Database trouble defers a runtime's reaper (every heartbeat of the database looks
    stale after an outage), but only the runtime that had it: a second queue in the same
    process, on a database that works, reaps at once."""
    caplog.set_level(logging.INFO, logger="simplequeue")
    # A pool that gives up fast: the broken queue's poller fails every few tens of ms.
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        f"host=127.0.0.1 port={_closed_port()} user=postgres connect_timeout=1",
        open=False,
        timeout=0.1,
        kwargs={"autocommit": True},
    )
    await pool.open(wait=False)
    broken = sq.SimpleQueue(pool, empty_poll_sleep=0.05)
    broken.register_handler(Ok())
    await broken.start()
    try:
        await eventually(lambda: broken.stats().database_failures > 2, timeout=10)
        with pytest.raises(TimeoutError):
            await broken.ready(timeout=0.2)  # its LISTEN cannot be in place
        waiting = asyncio.create_task(broken.ready())  # no timeout: the stop must end it
        async with sq.SimpleQueue.from_url(
            dsn, heartbeat_interval=0.4, reaper_interval=0.05
        ) as queue:
            await stalled_job(queue, dsn)
            await queue.start()
            started = asyncio.get_running_loop().time()
            await eventually(lambda: count(dsn, "status = 'pending'") == 1, timeout=10)
            waited = asyncio.get_running_loop().time() - started
            assert queue.stats().database_failures == 0
        assert waited < 0.8, f"reaped after {waited:.2f}s: held back by another queue's outage"
        await broken.stop(timeout=1)
        with pytest.raises(sq.QueueStateError, match="stopped before"):
            await asyncio.wait_for(waiting, 5)
    finally:
        await broken.stop(timeout=1)
        await pool.close(timeout=1)


async def test_one_shot_sweeps_need_no_workers(queue: sq.SimpleQueue, dsn: str) -> None:
    ids = await queue.insert_jobs([sq.Job("q", n) for n in range(3)])
    query(dsn, "UPDATE simplequeue.jobs SET status = 'completed' WHERE (data)::int = 0")
    query(dsn, "UPDATE simplequeue.jobs SET status = 'failed' WHERE (data)::int = 1")
    query(
        dsn,
        "UPDATE simplequeue.jobs SET status = 'running', attempt = 1, lease = 1, "
        "heartbeat_at = now() - interval '1 hour' WHERE (data)::int = 2",
    )
    assert not queue.running
    janitor = await queue.run_janitor()
    assert (janitor.archived, janitor.dead_lettered, janitor.purged) == (1, 1, 0)
    reaped = await queue.reap()
    assert (reaped.recovered, reaped.poisoned, reaped.exhausted) == (1, 0, 0)
    assert count(dsn, "status = 'pending'") == 1 and all(ids)


async def test_a_failed_ownership_check_spends_no_attempt(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a wait for its strategy permit, a job is checked to be still ours. A database
    that cannot answer then is no verdict on the job: it goes back to pending, attempt
    given back, instead of failing without having run."""
    import psycopg

    from simplequeue.store import Store

    real = Store.still_running
    failures: list[int] = []

    def flaky(self: Store, job_id: Any, lease: int) -> Any:
        if not failures:
            failures.append(1)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return real(self, job_id, lease)

    monkeypatch.setattr(Store, "still_running", flaky)
    ran: list[int] = []

    class OneAtATime(sq.Handler):
        QUEUE = "one"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            await asyncio.sleep(0.05)  # the other waits for the permit meanwhile
            ran.append(job.data)

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(OneAtATime())
        queue.set_queue_strategy("one", sq.ConcurrencyLimit(1))
        await queue.start()
        await queue.insert_jobs([sq.Job("one", n, max_attempts=1) for n in range(2)])
        await eventually(lambda: count(dsn, "status = 'completed'") == 2, timeout=10)
    assert sorted(ran) == [0, 1] and failures == [1]
    assert count(dsn, "attempt = 1") == 2  # the refused check gave its attempt back


async def test_while_a_stop_is_under_way_stats_count_and_reap_spares_its_runs(
    dsn: str,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    class Lingers(sq.Handler):
        QUEUE = "lingers"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            started.set()
            await release.wait()

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Lingers())
        await queue.start()
        job_id = await queue.insert_job(sq.Job("lingers", {}))
        await asyncio.wait_for(started.wait(), 10)
        stopping = asyncio.create_task(queue.stop(timeout=30))
        await asyncio.sleep(0.05)
        stats = queue.stats()
        assert not stats.started and stats.running == 1 and stats.claimed == 1
        # its heartbeat looks dead; this process knows better
        query(dsn, "UPDATE simplequeue.jobs SET heartbeat_at = now() - interval '1 hour'")
        assert (await queue.reap()).recovered == 0
        release.set()
        await asyncio.wait_for(stopping, 10)
    assert count(dsn, "id = %s AND status = 'completed'", [job_id]) == 1


def test_set_backoff_says_it_was_renamed() -> None:
    import warnings

    queue = sq.SimpleQueue.from_url("host=127.0.0.1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        queue.set_backoff("q", sq.Fixed(3))
    assert [w.category for w in caught] == [DeprecationWarning]
    assert "set_queue_backoff" in str(caught[0].message)


async def test_a_service_that_keeps_crashing_is_restarted_ever_less_often(
    dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    crashes: list[int] = []
    real = Reaper.run_once

    async def crash_thrice(self: Reaper) -> sq.ReapReport:
        if len(crashes) < 3:
            crashes.append(1)
            raise RuntimeError("a bug in every sweep")
        return await real(self)

    monkeypatch.setattr(Reaper, "run_once", crash_thrice)
    monkeypatch.setattr("simplequeue.runtime.runtime.RESTART_DELAY", 0.05)
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        await queue.start()
        await eventually(lambda: queue.stats().service_restarts == 3, timeout=5)
    delays = [r.getMessage() for r in caplog.records if "reaper crashed" in r.getMessage()]
    assert delays == [f"reaper crashed; restarting it in {d}s" for d in ("0.05", "0.1", "0.2")]
