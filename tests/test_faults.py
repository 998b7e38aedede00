"""Faults from outside: connections killed under a producer, a network gone silent under a
stopping worker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import simplequeue as sq
from chaos.proxy import SilentProxy
from tests.conftest import FAST, count, eventually, query


def terminate_others(dsn: str) -> int:
    rows = query(
        dsn,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    return int(rows[0][0])


async def test_a_producer_survives_its_connections_being_killed(dsn: str) -> None:
    """After pg_terminate_backend of every connection of its pool, the next calls (as many
    as the pool had connections) succeed: stale connections are replaced before use."""
    async with sq.SimpleQueue.from_url(dsn, pool_min_size=4, pool_max_size=4) as queue:
        job_id = await queue.insert_job(sq.Job("q", {}))
        assert job_id is not None
        for _round in range(3):
            await asyncio.gather(*(queue.get_job(job_id) for _ in range(8)))  # all 4 in use
            assert terminate_others(dsn) >= 4
            await asyncio.sleep(0.2)  # the server has closed them
            calls: list[Any] = [
                queue.get_job(job_id),
                queue.insert_job(sq.Job("q", {})),
                queue.insert_jobs([sq.Job("q", n) for n in range(3)]),
                queue.counts(),
                queue.cancel_job(job_id),
                queue.list_dlq(),
                queue.reschedule_job(job_id, _soon()),
                queue.cancel_jobs_by_fingerprint("none"),
            ]
            for call in calls:  # one after the other: each takes the next pooled connection
                await call
    assert count(dsn) == 1 + 3 * 4


def _soon() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(minutes=1)


@pytest.mark.slow
async def test_stop_returns_within_its_bound_when_the_network_goes_silent(dsn: str) -> None:
    """Packets dropped, no reset: every connection of the worker (pool, heartbeat,
    listener) waits for a reply that never comes. stop(timeout) still returns in time."""
    params = conninfo_to_dict(dsn)
    started = asyncio.Event()

    class Slow(sq.Handler):
        QUEUE = "slow"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            started.set()
            await asyncio.sleep(0.5)

    with SilentProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))) as proxy:
        proxied = make_conninfo(dsn, host="127.0.0.1", port=proxy.port)
        queue = sq.SimpleQueue.from_url(proxied, **FAST)
        async with queue:
            queue.register_handler(Slow())
            await queue.start()
            await queue.insert_jobs([sq.Job("slow", n) for n in range(20)])
            await asyncio.wait_for(started.wait(), 10)
            proxy.freeze()
            begun = time.monotonic()
            await asyncio.wait_for(queue.stop(timeout=1.0), 30)
            took = time.monotonic() - begun
        closed = time.monotonic() - begun
        proxy.thaw()
    from simplequeue.runtime.runtime import CANCEL_GRACE, SHUTDOWN_WRITE_GRACE

    bound = 1.0 + SHUTDOWN_WRITE_GRACE + 4 * CANCEL_GRACE  # the bound stop() documents
    assert took < bound + 0.3, f"stop(1.0) took {took:.1f}s"
    assert closed - took < 7, f"closing the pool took {closed - took:.1f}s"
    # nothing is lost: what was not written stays running or pending for the reaper
    assert count(dsn) == 20


async def test_dedicated_connections_name_themselves_and_watch_their_peer(dsn: str) -> None:
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:

        class Ok(sq.Handler):
            QUEUE = "ok"

            async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
                await asyncio.sleep(0.5)

        queue.register_handler(Ok())
        await queue.start()
        await queue.insert_job(sq.Job("ok", {}))
        names = await eventually(
            lambda: (
                {
                    row[0]
                    for row in query(
                        dsn,
                        "SELECT application_name FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    )
                }
                >= {
                    f"simplequeue worker {queue.worker_id}",
                    f"simplequeue worker {queue.worker_id} beat",
                    f"simplequeue worker {queue.worker_id} listen",
                }
            )
        )
        assert names
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_sigterm_while_a_worker_cannot_connect_exits_at_once(dsn: str) -> None:
    """A worker started while the network is silent waits for its pool; SIGTERM then gives
    up starting instead of waiting out the pool's 30 s timeout."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    params = conninfo_to_dict(dsn)
    with SilentProxy(
        str(params.get("host", "127.0.0.1")), int(params.get("port") or 5432)
    ) as proxy:
        proxy.freeze()
        proxied = make_conninfo(dsn, host="127.0.0.1", port=proxy.port)
        proc = subprocess.Popen(
            [sys.executable, "-m", "simplequeue", "worker", "tests.worker_app:configure",
             "--dsn", proxied, "--no-migrate"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        time.sleep(2)  # signal handlers installed, the pool waiting for the server
        proc.send_signal(signal.SIGTERM)
        begun = time.monotonic()
        out, _ = proc.communicate(timeout=30)
        took = time.monotonic() - begun
        proxy.thaw()
    assert proc.returncode == 0, out
    assert "while starting: not starting" in out
    assert took < 3, f"took {took:.1f}s to exit: {out}"


async def test_stop_returns_while_handlers_fill_the_loops_thread_pool(dsn: str) -> None:
    """Handlers blocked in asyncio.to_thread hold every thread of the loop's default
    executor: stopping must not need one."""
    import os
    import threading

    release = threading.Event()
    threads = min(32, (os.cpu_count() or 1) + 4)  # the default executor's size

    class Offloads(sq.Handler):
        QUEUE = "offloads"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            await asyncio.to_thread(release.wait, 30)

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Offloads())
        await queue.start()
        await queue.insert_jobs([sq.Job("offloads", n) for n in range(threads + 2)])
        await eventually(lambda: count(dsn, "status = 'running'") == threads + 2)
        begun = time.monotonic()
        try:
            await asyncio.wait_for(queue.stop(timeout=0.5), 20)
        finally:
            release.set()
        took = time.monotonic() - begun
    assert took < 0.5 + 7, f"stop(0.5) took {took:.1f}s"


async def test_a_call_cancelled_while_its_connection_is_checked_gives_it_back(
    dsn: str,
) -> None:
    """A pooled connection with something to read (here a notification for the
    application's own LISTEN) is checked with a round trip; a call cancelled during that
    check must still hand the connection back to the pool."""
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(
        dsn, min_size=1, max_size=1, timeout=3, kwargs={"autocommit": True}, open=False
    ) as pool:
        queue = sq.SimpleQueue(pool)
        for round_ in range(5):
            async with pool.connection() as conn:
                await conn.execute("LISTEN app_channel")
            query(dsn, "NOTIFY app_channel")
            await asyncio.sleep(0.05)  # the notification is waiting on the socket
            call = asyncio.ensure_future(queue.insert_job(sq.Job("q", round_)))
            await asyncio.sleep(0)  # the call has taken the connection and started checking
            await asyncio.sleep(0)
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            assert await queue.insert_job(sq.Job("q", "after")) is not None  # no PoolTimeout


def _copy_batch() -> list[sq.Job]:
    from simplequeue.store import COPY_THRESHOLD

    return [sq.Job("q", {"n": n}) for n in range(COPY_THRESHOLD)]


async def test_a_batch_copied_alone_is_reported_stored_when_its_wake_up_is_lost(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch that is one COPY commits alone on the pool's connection, and its NOTIFY
    follows: a connection lost between the two leaves the jobs stored, and the insert
    says so. An error there would tell the caller nothing was stored, and an application
    that answers an error with new jobs would store them twice."""
    params = conninfo_to_dict(dsn)
    with SilentProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))) as proxy:
        proxied = make_conninfo(dsn, host="127.0.0.1", port=proxy.port)
        async with sq.SimpleQueue.from_url(proxied) as queue:
            jobs = _copy_batch()
            proxy.cut_when_sent(b"pg_notify")
            ids = await queue.insert_jobs(jobs)
            assert proxy.cuts == 1
            assert ids == [job.id for job in jobs]
            assert count(dsn) == len(jobs)
            assert "wake-up" in caplog.text
            again = await queue.insert_jobs(jobs)  # committed: new jobs, new ids
            assert again == [job.id for job in jobs] != ids
    assert count(dsn) == 2 * len(jobs)


def test_a_sync_batch_copied_alone_is_reported_stored_when_its_wake_up_is_lost(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    params = conninfo_to_dict(dsn)
    with SilentProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))) as proxy:
        proxied = make_conninfo(dsn, host="127.0.0.1", port=proxy.port)
        with sq.SyncQueue.from_url(proxied) as queue:
            jobs = _copy_batch()
            proxy.cut_when_sent(b"pg_notify")
            ids = queue.insert_jobs(jobs)
            assert proxy.cuts == 1
            assert ids == [job.id for job in jobs]
            assert count(dsn) == len(jobs)
            assert "wake-up" in caplog.text
            assert queue.insert_jobs([sq.Job("q", "next")]) != [None]  # the pool recovered
    assert count(dsn) == len(jobs) + 1
