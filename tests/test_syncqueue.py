"""SyncQueue: the producer and operator calls of SimpleQueue as plain calls on a sync
pool, with the same semantics (the same operations run them)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import simplequeue as sq
from simplequeue.store import COPY_THRESHOLD
from tests.conftest import FAST, count, query


@pytest.fixture
def sync_queue(dsn: str) -> Iterator[sq.SyncQueue]:
    with sq.SyncQueue.from_url(dsn) as queue:
        yield queue


def test_producer_and_operator_calls_as_plain_calls(sync_queue: sq.SyncQueue, dsn: str) -> None:
    job_id = sync_queue.insert_job(sq.Job("q", {"n": 1}, unique_key="k", fingerprint="fp"))
    assert job_id is not None
    assert sync_queue.insert_job(sq.Job("q", {"n": 2}, unique_key="k")) is None
    found = sync_queue.get_job(job_id)
    assert found is not None and found.data == {"n": 1} and found.status is sq.JobStatus.PENDING
    holder = sync_queue.get_job_by_unique_key("k")
    assert holder is not None and holder.id == job_id
    later = datetime.now(UTC) + timedelta(hours=1)
    assert sync_queue.reschedule_job(str(job_id), later)
    assert query(dsn, "SELECT run_at, scheduled FROM simplequeue.jobs")[0] == (later, True)
    assert sync_queue.cancel_job_by_unique_key("k") is True
    assert sync_queue.cancel_job(job_id) is False  # cancelled already
    others = sync_queue.insert_jobs([sq.Job("q", n, fingerprint="fp") for n in range(3)])
    assert sync_queue.cancel_jobs_by_fingerprint("fp") == 3 and None not in others
    assert sync_queue.counts()["cancelled"] == 4
    assert sync_queue.get_job(uuid.uuid4()) is None
    assert sync_queue.insert_jobs([]) == []


def test_the_dead_letter_queue(sync_queue: sq.SyncQueue, dsn: str) -> None:
    job_id = sync_queue.insert_job(sq.Job("q", 1, unique_key="dead"))
    query(dsn, "UPDATE simplequeue.jobs SET status = 'failed', unique_key = NULL")
    assert [j.id for j in sync_queue.list_dlq()] == [job_id]
    assert [j.id for j in sync_queue.list_dlq("q", limit=1)] == [job_id]
    assert sync_queue.list_dlq("other") == []
    assert sync_queue.requeue_dlq_job(job_id) is True
    assert sync_queue.requeue_dlq_job(job_id) is False  # not dead any more
    assert count(dsn, "status = 'pending' AND attempt = 0") == 1


def test_bad_input_raises_before_any_statement(sync_queue: sq.SyncQueue, dsn: str) -> None:
    with pytest.raises(sq.InvalidArgumentError, match="not a job id"):
        sync_queue.get_job("nope")
    with pytest.raises(sq.InvalidArgumentError, match="insert_jobs for several"):
        sync_queue.insert_job([sq.Job("q", 1)])  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidJobError, match="item 1"):
        sync_queue.insert_jobs([sq.Job("q", 1), "job"])  # type: ignore[list-item]
    with pytest.raises(sq.InvalidArgumentError, match="limit"):
        sync_queue.list_dlq(limit=0)
    with pytest.raises(sq.InvalidArgumentError, match="run_at"):
        sync_queue.reschedule_job(uuid.uuid4(), datetime(2026, 1, 1))  # naive
    with pytest.raises(sq.InvalidArgumentError, match="unique_key"):
        sync_queue.cancel_job_by_unique_key("")
    with pytest.raises(sq.InvalidArgumentError, match="timeout"):
        sync_queue.wait_for_job(uuid.uuid4(), timeout=-1)
    assert count(dsn) == 0


def test_it_takes_a_sync_pool_only(dsn: str) -> None:
    with pytest.raises(sq.InvalidArgumentError, match="from_url"):
        sq.SyncQueue(dsn)  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError, match="ConnectionPool, got AsyncConnectionPool"):
        sq.SyncQueue(AsyncConnectionPool(dsn, open=False))  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError, match="valid connection string"):
        sq.SyncQueue.from_url("host='unterminated")
    with pytest.raises(sq.ConfigError):
        sq.SyncQueue.from_url(dsn, schema_name="no such schema!")
    with ConnectionPool(dsn, kwargs={"autocommit": True}) as pool:  # the caller's own pool
        queue = sq.SyncQueue(pool)
        with queue:
            assert queue.insert_job(sq.Job("q", 1)) is not None
        assert not pool.closed, "a pool the caller passed in stays theirs"
    assert count(dsn) == 1


def test_a_large_batch_goes_by_copy_in_a_transaction_of_its_own(
    sync_queue: sq.SyncQueue, dsn: str
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    jobs = [sq.Job("q", n, run_at=later if n % 2 else None) for n in range(COPY_THRESHOLD)]
    assert None not in sync_queue.insert_jobs(jobs)
    assert count(dsn, "scheduled") == COPY_THRESHOLD // 2 == count(dsn, "NOT scheduled")
    # the same objects again are new jobs (they were committed), not a retry
    assert None not in sync_queue.insert_jobs(jobs)
    assert count(dsn) == 2 * COPY_THRESHOLD


def test_an_insert_that_raised_is_retried_without_storing_twice(
    sync_queue: sq.SyncQueue, dsn: str
) -> None:
    jobs = [sq.Job("q", n) for n in range(3)]
    with psycopg.connect(dsn) as conn:  # the caller's transaction: the insert lands there
        assert None not in sync_queue.insert_jobs(jobs, conn=conn)
        conn.commit()
    # the caller could not tell whether it committed: inserting the objects again is a retry
    assert sync_queue.insert_jobs(jobs) == [j.id for j in jobs]
    assert count(dsn) == 3


def test_wait_for_job_sees_a_worker_finish_it(sync_queue: sq.SyncQueue, dsn: str) -> None:
    class Double(sq.Handler):
        QUEUE = "double"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    job_id = sync_queue.insert_job(sq.Job("double", 21))
    assert job_id is not None
    with pytest.raises(TimeoutError, match="still pending"):
        sync_queue.wait_for_job(job_id, timeout=0.2)
    stop = threading.Event()

    async def worker() -> None:
        async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
            queue.register_handler(Double())
            await queue.start()
            await asyncio.to_thread(stop.wait)

    thread = threading.Thread(target=asyncio.run, args=(worker(),))
    thread.start()
    try:
        done = sync_queue.wait_for_job(job_id, timeout=20)
    finally:
        stop.set()
        thread.join(30)
    assert done.status is sq.JobStatus.COMPLETED
    with pytest.raises(sq.JobNotFoundError):
        sync_queue.wait_for_job(uuid.uuid4(), timeout=5)


def test_a_missing_schema_says_to_migrate(dsn: str) -> None:
    query(dsn, "DROP SCHEMA simplequeue CASCADE")
    with sq.SyncQueue.from_url(dsn) as queue:
        with pytest.raises(sq.SchemaNotFoundError, match="simplequeue migrate"):
            queue.insert_job(sq.Job("q", 1))
        with pytest.raises(sq.SchemaNotFoundError, match="simplequeue migrate"):
            queue.get_job(uuid.uuid4())


def test_get_job_finds_a_job_in_the_archive(dsn: str, sync_queue: sq.SyncQueue) -> None:
    from simplequeue.columns import MOVED_COLUMNS

    job_id = sync_queue.insert_job(sq.Job("q", 1))
    query(dsn, "UPDATE simplequeue.jobs SET status = 'completed'")
    query(
        dsn,
        f"WITH moved AS (DELETE FROM simplequeue.jobs RETURNING {MOVED_COLUMNS}) "
        f"INSERT INTO simplequeue.archive ({MOVED_COLUMNS}) SELECT * FROM moved",
    )
    found = sync_queue.get_job(str(job_id))
    assert found is not None and found.status is sq.JobStatus.COMPLETED
    assert count(dsn) == 0 and count(dsn, table="archive") == 1


def test_list_jobs_in_insertion_order(sync_queue: sq.SyncQueue, dsn: str) -> None:
    ids = sync_queue.insert_jobs([sq.Job("a" if n % 2 else "b", n) for n in range(6)])
    query(dsn, "UPDATE simplequeue.jobs SET status = 'running' WHERE id = %s", [ids[0]])
    assert [j.id for j in sync_queue.list_jobs()] == ids
    assert [j.data for j in sync_queue.list_jobs("a")] == [1, 3, 5]
    assert [j.data for j in sync_queue.list_jobs("b", status="pending")] == [2, 4]
    running = sync_queue.list_jobs(status=[sq.JobStatus.RUNNING, "failed"], limit=1)
    assert [j.id for j in running] == [ids[0]]
    assert [j.data for j in sync_queue.list_jobs(limit=2)] == [0, 1]
    with pytest.raises(sq.InvalidArgumentError, match="status must be one of"):
        sync_queue.list_jobs(status="done")
    with pytest.raises(sq.InvalidArgumentError, match="limit"):
        sync_queue.list_jobs(limit=10_001)


def test_list_jobs_pages_by_id(sync_queue: sq.SyncQueue) -> None:
    ids = sync_queue.insert_jobs([sq.Job("q", n) for n in range(5)])
    first = sync_queue.list_jobs("q", limit=2)
    rest = sync_queue.list_jobs("q", after=first[-1].id)
    assert [j.id for j in first + rest] == ids
    assert sync_queue.list_jobs(after=str(ids[-1])) == []
    with pytest.raises(sq.InvalidArgumentError, match="not a job id"):
        sync_queue.list_jobs(after="nope")
