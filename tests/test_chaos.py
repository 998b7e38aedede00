"""The chaos suite (chaos/run.py, small size), and regression tests for what it found.

The suite really kills workers, restarts its own PostgreSQL and breaks connections; see
chaos/README.md. The fast tests below pin each bug it found to one small reproduction.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

import simplequeue as sq
from simplequeue.drivers import run, run_sync
from simplequeue.maintenance.reaper import Reaper
from simplequeue.runtime.heartbeat import Heartbeater
from simplequeue.runtime.outage import DatabaseHealth, describe
from simplequeue.runtime.results import ResultWriter
from simplequeue.store import Outcome, Store
from tests.conftest import ROOT, WorkerProcess, count, eventually, query


def make_running(dsn: str, n: int = 1, *, stale: bool = True) -> list[Any]:
    """Jobs that look claimed (lease 1) by a worker, with an old heartbeat if `stale`."""
    beat = "now() - interval '1 hour'" if stale else "now()"
    rows = query(
        dsn,
        "INSERT INTO simplequeue.jobs (id, queue, data, status, attempt, lease, heartbeat_at) "
        f"SELECT gen_random_uuid(), 'q', '{{}}', 'running', 1, 1, {beat} "
        "FROM generate_series(1, %s) RETURNING id",
        [n],
    )
    return [r[0] for r in rows]


def beat_age(dsn: str, job_id: Any) -> float:
    (age,) = query(
        dsn,
        "SELECT extract(epoch FROM now() - heartbeat_at) FROM simplequeue.jobs WHERE id = %s",
        [job_id],
    )[0]
    return float(age)


def terminate_others(dsn: str) -> int:
    """pg_terminate_backend for every other connection to this test's own database."""
    rows = query(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    return len(rows)


def test_outage_messages_name_the_trouble() -> None:
    assert describe(PoolTimeout("couldn't get a connection after 1.00 sec")).startswith(
        "no free connection in the pool"
    )
    cancelled = psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
    assert describe(cancelled).startswith("statement cancelled (canceling statement")
    multi_line = "server closed the connection unexpectedly\n\tThis probably means..."
    assert describe(psycopg.OperationalError(multi_line)) == (
        "database unreachable (server closed the connection unexpectedly)"
    )


async def test_maintenance_loops_survive_lost_connections_with_one_line_each(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by the chaos suite: the reaper and janitor had no outage handling, so each lost
    # connection logged "reaper crashed; restarting it in 1s" with a traceback, every second.
    caplog.set_level(logging.INFO, logger="simplequeue")
    settings = {"reaper_interval": 0.05, "janitor_interval": 0.05, "heartbeat_interval": 0.2}
    async with sq.SimpleQueue.from_url(dsn, pool_min_size=1, pool_max_size=1, **settings) as q:
        await q.start()
        await asyncio.sleep(0.3)
        for _ in range(3):
            terminate_others(dsn)
            await asyncio.sleep(0.4)
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert not [m for m in messages if "crashed" in m[1]], messages
    lost = [m for m in messages if "database unreachable" in m[1]]
    assert lost, "terminating the pool's connection should have been noticed"
    # at most once per component per outage
    assert len([m for m in lost if m[0] == "simplequeue.reaper"]) <= 3
    assert len([m for m in lost if m[0] == "simplequeue.janitor"]) <= 3


async def test_the_reaper_waits_for_heartbeats_to_resume_after_database_trouble(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    # Found by the chaos suite: right after a server restart the first reaper to reconnect
    # reaped the jobs of every live worker, whose heartbeats had been cut off like its own.
    config = sq.QueueConfig.build(heartbeat_interval=0.4, reaper_interval=0.05)  # stall 1 s
    (job_id,) = make_running(dsn)
    health = DatabaseHealth()  # the runtime's, shared with its other services
    health.failed()  # one of them just lost the database
    task = asyncio.create_task(Reaper(queue.pool, Store(queue.schema), config, health=health).run())
    try:
        await asyncio.sleep(0.5)
        assert count(dsn, "id = %s AND status = 'running'", [job_id]) == 1, "reaped too soon"
        await eventually(lambda: count(dsn, "id = %s AND status = 'pending'", [job_id]), 5)
    finally:
        task.cancel()


async def test_a_finished_job_keeps_its_heartbeat_until_its_result_is_written(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    # Found by the chaos suite: results buffered during an outage lost their heartbeat, so
    # the reaper took their jobs and the results were fenced off: the work ran twice.
    (job_id,) = make_running(dsn)
    heartbeats = Heartbeater(lambda: psycopg.connect(dsn, autocommit=True), Store(queue.schema), 60)
    writer = ResultWriter(
        queue.pool, Store(queue.schema), batch_size=10, flush_interval=0, heartbeats=heartbeats
    )
    await writer.submit(Outcome(job_id, 1, "completed"))  # not written yet: no run()
    await asyncio.to_thread(heartbeats.beat_now)
    assert beat_age(dsn, job_id) < 5, "a job with a pending result must keep beating"
    running = asyncio.create_task(writer.run())
    await eventually(lambda: count(dsn, "id = %s AND status = 'completed'", [job_id]))
    writer.close(time.monotonic() + 5)
    await running
    assert not heartbeats.runs()
    heartbeats.stop()


async def test_a_heartbeat_reconnects_at_once_when_its_connection_was_killed(
    queue: sq.SimpleQueue, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by the chaos suite: a beat on a terminated connection was lost, with an outage
    # logged, although one fresh connection would have delivered it.
    (job_id,) = make_running(dsn, stale=False)
    heartbeats = Heartbeater(lambda: psycopg.connect(dsn, autocommit=True), Store(queue.schema), 60)
    job = await queue.get_job(job_id)  # running, lease 1
    assert job is not None and job.lease == 1
    heartbeats.track(job)
    try:
        await asyncio.to_thread(heartbeats.beat_now)  # connects
        terminate_others(dsn)
        query(dsn, "UPDATE simplequeue.jobs SET heartbeat_at = now() - interval '1 hour'")
        await asyncio.to_thread(heartbeats.beat_now)
    finally:
        heartbeats.untrack(job)
    heartbeats.stop()
    assert beat_age(dsn, job_id) < 5, "the beat after a killed connection was lost"
    assert not [r for r in caplog.records if "heartbeat: database" in r.getMessage()]


def test_a_locked_row_does_not_block_the_heartbeats_of_the_others(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    # Found by the chaos suite: one job row locked by another transaction blocked the whole
    # heartbeat statement of its worker, so all that worker's jobs were reaped and ran twice.
    # (Beats of rows a result write held also deadlocked with that write.)
    locked, free = make_running(dsn, 2)
    with psycopg.connect(dsn) as locker:
        locker.execute("SELECT 1 FROM simplequeue.jobs WHERE id = %s FOR UPDATE", [locked])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET statement_timeout = '2s'")
            alive = run_sync(conn, Store(queue.schema).heartbeat([(locked, 1), (free, 1)]))
        locker.rollback()
    assert alive == {(locked, 1), (free, 1)}, "both still run under their lease"
    assert beat_age(dsn, free) < 5


@pytest.mark.slow
async def test_a_second_sigterm_does_not_wait_for_a_sync_handler(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    # Found by the chaos suite: the job goes back to pending at once, but interpreter exit
    # joins the executor's threads, so the process (and the handler) runs on meanwhile.
    worker = workers(target="chaos.app:configure")
    await queue.insert_job(sq.Job("chaos_long_sync", {"plan": "slow", "work": 30}))
    await eventually(lambda: count(dsn, "status = 'running'") == 1, timeout=30)
    await asyncio.sleep(0.5)
    worker.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    started = time.monotonic()
    output = worker.terminate(timeout=60)
    assert count(dsn, "status = 'pending' AND attempt = 0") == 1, output
    assert time.monotonic() - started < 5, output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_chaos_suite_small(tmp_path: Path) -> None:
    """Every scenario of chaos/run.py at the small size; any violated invariant fails it."""
    run = subprocess.run(
        [sys.executable, "chaos/run.py", "--size", "small", "--dir", str(tmp_path / "chaos")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=850,
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]


async def test_a_claim_that_waited_on_a_lock_is_not_born_stalled(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    # Found by the chaos suite (full stalls): a claim blocked for 6 s by LOCK TABLE stamped
    # heartbeat_at with its transaction's start, so the reaper took the job 0.3 s after it
    # was claimed, while its worker ran it.
    job_id = await queue.insert_job(sq.Job("q", {}))
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE simplequeue.jobs IN EXCLUSIVE MODE")
        async with queue.pool.connection() as conn:
            claim = asyncio.create_task(run(conn, Store(queue.schema).claim(["q"], [1], 1)))
            await asyncio.sleep(1.5)
            assert not claim.done(), "the claim should wait for the table lock"
            locker.commit()
            (claimed,) = await asyncio.wait_for(claim, 10)
    assert claimed.id == job_id
    assert beat_age(dsn, job_id) < 1.0, "the claim's heartbeat predates the claim"
