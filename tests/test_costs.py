"""Costs follow the work: what a statement reads depends on what it returns, not on how
many jobs wait for later, nor on the size of the DLQ; heartbeats touch no index."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

import simplequeue as sq
from simplequeue.drivers import run, run_sync
from simplequeue.job import DEAD_STATUSES
from simplequeue.store import Store
from tests.conftest import count, eventually, query

BACKLOG = 50_000


def buffers(dsn: str, statement: str, params: Any) -> int:
    """Shared buffers the statement touches (hit or read), executed and rolled back."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, params)
        (plan,) = cur.fetchone()  # type: ignore[misc]
        conn.rollback()
    top = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


async def test_an_idle_claim_reads_what_is_due_not_what_waits(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    await queue.insert_jobs([sq.Job("q", n, run_at=later) for n in range(BACKLOG)])
    query(dsn, "VACUUM ANALYZE simplequeue.jobs")
    store = Store(queue.schema)
    claim = {"queues": ["q"], "limits": [100], "total": 100, "worker": None, "fast": False}
    promote = {"queues": ["q"], "limit": 1000, "fast": False}
    assert buffers(dsn, store.statements()["claim"], claim) < 20
    assert buffers(dsn, store.statements()["promote"], promote) < 20
    # a few come due: the promotion and the claim read those, not the backlog
    query(
        dsn,
        "UPDATE simplequeue.jobs SET run_at = now() - interval '1 second' "
        "WHERE id IN (SELECT id FROM simplequeue.jobs ORDER BY id LIMIT 5)",
    )
    async with queue.pool.connection() as conn:
        assert await run(conn, store.promote_due(["q"], 1000)) == 5
    query(dsn, "VACUUM ANALYZE simplequeue.jobs")
    assert (
        buffers(dsn, store.statements()["claim"], claim) < 20 * 5
    )  # the rows it updates, and their indexes
    async with queue.pool.connection() as conn:
        claimed = await run(conn, store.claim(["q"], [100], 100))
    assert len(claimed) == 5


async def test_jobs_scheduled_for_later_run_when_due(dsn: str) -> None:
    ran: list[Any] = []

    class Record(sq.Handler):
        QUEUE = "later"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            ran.append(job.data)

    async with sq.SimpleQueue.from_url(dsn, empty_poll_sleep=0.1, backoff=sq.Fixed(0.3)) as queue:
        queue.register_handler(Record())
        await queue.start()
        soon = datetime.now(UTC) + timedelta(seconds=0.5)
        await queue.insert_job(sq.Job("later", "one", run_at=soon))
        await queue.insert_jobs([sq.Job("later", n, run_at=soon) for n in range(600)])  # COPY
        moved = await queue.insert_job(sq.Job("later", "moved", run_at=soon + timedelta(days=1)))
        assert moved is not None
        await queue.reschedule_job(moved, soon)
        await eventually(lambda: len(ran) == 602, timeout=15)
        assert count(dsn, "scheduled") == 0


async def test_heartbeats_are_hot_updates(queue: sq.SimpleQueue, dsn: str) -> None:
    ids = await queue.insert_jobs([sq.Job("q", n) for n in range(30)])
    query(
        dsn,
        "UPDATE simplequeue.jobs SET status = 'running', lease = 1, heartbeat_at = now()",
    )
    query(dsn, "VACUUM simplequeue.jobs")

    def stats() -> tuple[int, int]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                "WHERE relid = 'simplequeue.jobs'::regclass"
            ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

    updated, hot = await eventually(lambda: stats()[0] >= 30 and stats())
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(20):
            beats = Store(queue.schema).heartbeat([(i, 1) for i in ids if i])
            assert len(run_sync(conn, beats)) == 30
    after = await eventually(lambda: stats()[0] >= updated + 600 and stats())
    beats, hot_beats = after[0] - updated, after[1] - hot
    assert beats == 600
    assert hot_beats >= 0.9 * beats, f"only {hot_beats} of {beats} beats were HOT"


async def test_list_dlq_reads_the_newest_whatever_the_dlq_size(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    query(
        dsn,
        "INSERT INTO simplequeue.dlq (id, queue, data, status, updated_at) "
        "SELECT gen_random_uuid(), 'q' || (n %% 7), '{}', 'failed', "
        "       now() - n * interval '1 second' FROM generate_series(1, %s) AS n",
        [BACKLOG],
    )
    query(dsn, "VACUUM ANALYZE simplequeue.dlq")
    store = Store(queue.schema)
    assert (
        buffers(dsn, store.statements()["list_dlq"], {"queue": None, "limit": 50, "statuses": None})
        < 40
    )
    assert (
        buffers(
            dsn,
            store.statements()["list_dlq_of_queue"],
            {"queue": "q3", "limit": 50, "statuses": None},
        )
        < 40
    )
    newest = await queue.list_dlq(limit=3)
    assert [j.queue for j in newest] == ["q1", "q2", "q3"]
    assert [j.queue for j in await queue.list_dlq(queue="q3", limit=2)] == ["q3", "q3"]


def test_the_dead_letter_indexes_cover_every_dead_status(dsn: str) -> None:
    for index in ("jobs_dead_newest", "jobs_dead_queue_newest"):
        ((definition,),) = query(
            dsn, "SELECT indexdef FROM pg_indexes WHERE indexname = %s", [index]
        )
        assert all(f"'{status}'" in definition for status in DEAD_STATUSES), definition
