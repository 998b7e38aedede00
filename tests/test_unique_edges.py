"""Keys held over time (`Job(unique_for=...)`) at their edges: a claim that waited for a
transaction whose job was live, retries of a refused job, a batch whose first job of a key
is refused, raw SQL that would poison a read."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import psycopg
import pytest

import simplequeue as sq
from simplequeue.web import create_app
from tests.conftest import count, eventually, query

HOUR = timedelta(hours=1)


def holder(dsn: str, key: str) -> uuid.UUID | None:
    rows = query(dsn, "SELECT job_id FROM simplequeue.unique_keys WHERE key = %s", [key])
    return rows[0][0] if rows else None


def stored_anywhere(dsn: str, job_id: uuid.UUID) -> int:
    return sum(count(dsn, "id = %s", [job_id], table=t) for t in ("jobs", "archive", "dlq"))


def finish(dsn: str, job_id: uuid.UUID | None) -> None:
    query(
        dsn,
        "UPDATE simplequeue.jobs SET status = 'completed', completed_at = now() WHERE id = %s",
        [job_id],
    )


def lock_waiters(dsn: str) -> int:
    return int(
        query(
            dsn,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )[0][0]
    )


async def _outlived_period(dsn: str, later: sq.Job) -> uuid.UUID:
    """A caller's transaction inserts a job with a short period and stays open past it;
    meanwhile `later` (same key) is inserted from another connection and waits on the
    key; then the transaction commits. Returns the first job's id."""
    async with (
        sq.SimpleQueue.from_url(dsn) as q,
        await psycopg.AsyncConnection.connect(dsn) as conn,
    ):
        first = await q.insert_job(sq.Job("q", "first", unique_key="k", unique_for=0.2), conn=conn)
        assert first is not None
        await asyncio.sleep(0.5)  # the first job's period has ended; its transaction has not
        waiting = asyncio.ensure_future(q.insert_job(later))
        await eventually(lambda: lock_waiters(dsn) == 1)
        await conn.commit()
        assert await waiting is None  # refused: the first job is live
    return first


async def test_a_refused_insert_takes_the_key_for_good_with_no_job(dsn: str) -> None:
    """The second insert waits on the first's open transaction and finds the key's period
    ended once it commits, but the first job is live: the second is refused, and its claim
    of the key (FOREVER) is undone, so once the live job ends the key can be taken."""
    later = sq.Job("q", "later", unique_key="k", unique_for=sq.FOREVER)
    first = await _outlived_period(dsn, later)
    assert stored_anywhere(dsn, later.id) == 0
    finish(dsn, first)  # the only job of the key ends; its own period ended long ago
    async with sq.SimpleQueue.from_url(dsn) as q:
        stuck = await q.insert_job(sq.Job("q", "next", unique_key="k", unique_for=HOUR)) is None
    assert not stuck, f"key held FOREVER by {holder(dsn, 'k')}, a job never stored"


async def test_a_retry_reports_stored_a_job_that_never_was(dsn: str) -> None:
    """The same object inserted again after that refusal is not reported stored: its claim
    was undone, so no key row names it."""
    later = sq.Job("q", "later", unique_key="k", unique_for=sq.FOREVER)
    await _outlived_period(dsn, later)
    async with sq.SimpleQueue.from_url(dsn) as q:
        again = await q.insert_job(later)
        if again is not None:
            assert await q.get_job(again) is not None, "reported stored, stored nowhere"


class Done(sq.Handler):
    QUEUE = "q"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        return None


@pytest.mark.xfail(
    strict=True,
    reason="documented limit (docs/unique.md): the producer role finds a retried job only "
    "while it is live or its key is held; once archived and the key forgotten, it is stored "
    "again",
)
async def test_a_retry_after_the_period_stores_the_same_job_again(dsn: str) -> None:
    """The producer role finds a retried job only while it is live or its key is held:
    once archived and the key forgotten, its retry stores the same job again."""
    from simplequeue.roles import grant_roles
    from tests.test_security import drop_roles, unique_names

    producer, worker = unique_names()
    await grant_roles(dsn, producer=producer, worker=worker, login=True)
    try:
        producer_dsn = psycopg.conninfo.make_conninfo(dsn, user=producer)
        job = sq.Job("q", "once", unique_key="k", unique_for=0.3)
        async with sq.SimpleQueue.from_url(producer_dsn) as p:
            async with await psycopg.AsyncConnection.connect(producer_dsn) as conn:
                assert await p.insert_job(job, conn=conn) == job.id
                await conn.commit()  # committed, but say the caller never heard back
            async with sq.SimpleQueue.from_url(dsn) as owner:
                owner.register_handler(Done())
                assert await owner.drain(timeout=10) == {"completed": 1}
                assert (await owner.run_janitor()).archived == 1
                await asyncio.sleep(0.5)
                assert (await owner.reap()).expired_keys == 1
            async with await psycopg.AsyncConnection.connect(producer_dsn) as conn:
                assert await p.insert_job(job, conn=conn) == job.id  # the retry
                await conn.commit()
        assert stored_anywhere(dsn, job.id) == 1, "the same job stored twice (jobs + archive)"
    finally:
        drop_roles(dsn, producer, worker)


async def test_a_batch_skips_the_later_jobs_of_a_key_its_first_job_was_refused(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """Within one batch the first job of a key decides: refused because the key is held
    over time, a later plain job of the key in the batch is skipped too."""
    done = await queue.insert_job(sq.Job("q", "earlier", unique_key="k", unique_for=HOUR))
    finish(dsn, done)  # the key is held for the hour, no live job
    first = sq.Job("q", "first", unique_key="k", unique_for=HOUR)
    second = sq.Job("q", "second", unique_key="k")
    assert await queue.insert_jobs([first, second]) == [None, None]


async def test_raw_sql_cannot_poison_a_read_of_unique_for(queue: sq.SimpleQueue, dsn: str) -> None:
    """The producer role may INSERT jobs.unique_for_seconds with raw SQL, which the library
    does not check: the table refuses what no read could give back ('NaN', which JSON
    lacks; '-Infinity', which would read as FOREVER; a negative period)."""
    poisoned = {}
    for value in ("NaN", "-Infinity", "-5"):
        job_id = uuid.uuid4()
        try:
            query(
                dsn,
                "INSERT INTO simplequeue.jobs (id, queue, data, unique_key, unique_for_seconds) "
                "VALUES (%s, 'q', '{}', %s, %s::float8)",
                [job_id, f"raw:{value}", value],
            )
        except psycopg.errors.CheckViolation:
            continue  # refused: fine
        poisoned[value] = job_id
    app = create_app(queue, admin_tokens=["admin-token-0123456789"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://api",
    ) as client:
        admin = {"Authorization": "Bearer admin-token-0123456789"}
        answers = {
            value: (await client.get(f"/jobs/{job_id}", headers=admin)).status_code
            for value, job_id in poisoned.items()
        }
    await app.state.events.aclose()
    read = {v: (await queue.get_job(i)).unique_for for v, i in poisoned.items()}  # type: ignore[union-attr]
    assert poisoned == {}, f"stored unchecked: HTTP answers {answers}, read back as {read}"
