"""Cancel, reschedule, read, wait, and the dead-letter queue, by id, key and fingerprint."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import simplequeue as sq
from tests.conftest import count, eventually, query


async def test_cancel_by_id(queue: sq.SimpleQueue, dsn: str) -> None:
    job_id = await queue.insert_job(sq.Job("q", {}))
    assert job_id is not None
    assert await queue.cancel_job(job_id) is True
    assert await queue.cancel_job(job_id) is False  # no longer live
    assert await queue.cancel_job(uuid.uuid4()) is False
    job = await queue.get_job(job_id)
    assert job is not None and job.status is sq.JobStatus.CANCELLED and job.completed_at


async def test_cancel_by_unique_key_and_fingerprint(queue: sq.SimpleQueue, dsn: str) -> None:
    await queue.insert_jobs(
        [
            sq.Job("q", {}, unique_key="k1", fingerprint="user:1"),
            sq.Job("q", {}, unique_key="k2", fingerprint="user:1"),
            sq.Job("q", {}, unique_key="k3", fingerprint="user:2"),
        ]
    )
    assert await queue.cancel_job_by_unique_key("k3") is True
    assert await queue.cancel_job_by_unique_key("k3") is False
    assert await queue.cancel_jobs_by_fingerprint("user:1") == 2
    assert await queue.cancel_jobs_by_fingerprint("nobody") == 0
    assert count(dsn, "status = 'cancelled'") == 3


async def test_reschedule_a_pending_job(queue: sq.SimpleQueue, dsn: str) -> None:
    job_id = await queue.insert_job(sq.Job("q", {}))
    assert job_id is not None
    later = datetime.now(UTC) + timedelta(days=2)
    assert await queue.reschedule_job(job_id, later) is True
    job = await queue.get_job(job_id)
    assert job is not None and job.run_at == later
    with pytest.raises(sq.InvalidArgumentError, match="naive"):
        await queue.reschedule_job(job_id, datetime(2031, 1, 1))
    await queue.cancel_job(job_id)
    assert await queue.reschedule_job(job_id, later) is False  # only pending jobs


async def test_a_job_due_later_waits(queue: sq.SimpleQueue, dsn: str) -> None:
    ran: list[uuid.UUID] = []

    class Record(sq.Handler):
        QUEUE = "later"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            ran.append(job.id)

    queue.register_handler(Record())
    await queue.start()
    soon = await queue.insert_job(
        sq.Job("later", {}, run_at=datetime.now(UTC) + timedelta(seconds=0.5))
    )
    later = await queue.insert_job(
        sq.Job("later", {}, run_at=datetime.now(UTC) + timedelta(hours=1))
    )
    await eventually(lambda: ran == [soon], timeout=5)
    assert count(dsn, "id = %s AND status = 'pending'", [later]) == 1
    # rescheduling it to now makes it run
    assert later is not None and await queue.reschedule_job(later, datetime.now(UTC))
    await eventually(lambda: ran == [soon, later], timeout=5)


async def test_priority_orders_the_claim(dsn: str) -> None:
    order: list[int] = []

    class Record(sq.Handler):
        QUEUE = "prio"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            order.append(job.data)

    async with sq.SimpleQueue.from_url(dsn, queue_permits=1, empty_poll_sleep=0.1) as queue:
        await queue.insert_jobs([sq.Job("prio", n, priority=n) for n in (1, 5, 3)])
        queue.register_handler(Record())
        await queue.start()
        await eventually(lambda: len(order) == 3)
    assert order == [5, 3, 1]


async def test_get_job_finds_archived_and_dead_jobs(dsn: str) -> None:
    class Ends(sq.Handler):
        QUEUE = "ends"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult:
            return sq.JobResult.success() if job.data == "ok" else sq.JobResult.critical("no")

    async with sq.SimpleQueue.from_url(dsn, janitor_interval=3600) as queue:
        queue.register_handler(Ends())
        await queue.start()
        ok = await queue.insert_job(sq.Job("ends", "ok"))
        bad = await queue.insert_job(sq.Job("ends", "bad"))
        assert ok and bad
        await queue.wait_for_job(ok, timeout=5)
        await queue.wait_for_job(bad, timeout=5)
        await eventually(lambda: count(dsn, "status IN ('completed', 'critical_failure')") == 2)
        report = await queue.run_janitor()
        assert (report.archived, report.dead_lettered) == (1, 1)
        assert count(dsn) == 0
        archived = await queue.get_job(ok)
        dead = await queue.get_job(bad)
    assert archived is not None and archived.status is sq.JobStatus.COMPLETED
    assert dead is not None and dead.status is sq.JobStatus.CRITICAL_FAILURE
    assert dead.last_error == "no"


async def test_list_and_requeue_dead_jobs(queue: sq.SimpleQueue, dsn: str) -> None:
    ids = await queue.insert_jobs([sq.Job("a", 1, unique_key="u1"), sq.Job("b", 2), sq.Job("a", 3)])
    for job_id in ids:
        assert job_id is not None and await queue.cancel_job(job_id)
    # one moved to the DLQ table, two still in the live table: both count as dead
    query(
        dsn,
        "UPDATE simplequeue.jobs SET updated_at = now() - interval '1 hour' WHERE id = %s",
        [ids[2]],
    )
    await sq.SimpleQueue(queue.pool, janitor_batch_size=1).run_janitor()
    assert count(dsn, table="dlq") >= 1
    dead = await queue.list_dlq()
    assert sorted(j.data for j in dead) == [1, 2, 3]
    assert sorted(j.data for j in await queue.list_dlq(queue="a")) == [1, 3]
    assert len(await queue.list_dlq(limit=1)) == 1
    with pytest.raises(ValueError, match="limit"):
        await queue.list_dlq(limit=0)

    # a live job holding the unique key blocks the requeue, and nothing moves
    blocker = await queue.insert_job(sq.Job("a", "live", unique_key="u1"))
    assert await queue.requeue_dlq_job(ids[0]) is False
    assert len(await queue.list_dlq()) == 3
    assert blocker is not None and await queue.cancel_job(blocker)

    for job_id in ids:
        assert await queue.requeue_dlq_job(job_id) is True
    assert await queue.requeue_dlq_job(ids[0]) is False  # no longer dead
    assert count(dsn, table="dlq") == 0
    assert count(dsn, "status = 'pending' AND attempt = 0 AND reprocess_count = 0") == 3
    assert await queue.list_dlq() == [] or all(j.data == "live" for j in await queue.list_dlq())


async def test_wait_for_unknown_job_and_timeout(queue: sq.SimpleQueue) -> None:
    with pytest.raises(sq.JobNotFoundError):
        await queue.wait_for_job(uuid.uuid4(), timeout=1)
    job_id = await queue.insert_job(sq.Job("nobody-handles-this", {}))
    assert job_id is not None
    with pytest.raises(TimeoutError, match="still pending"):
        await queue.wait_for_job(job_id, timeout=0.3)
    with pytest.raises(sq.InvalidArgumentError, match="not a job id") as refused:
        await queue.get_job("nope")  # type: ignore[arg-type]
    assert not isinstance(refused.value, sq.InvalidJobError)  # an argument, not a job


async def test_only_queues_with_handlers_are_claimed(queue: sq.SimpleQueue, dsn: str) -> None:
    class Mine(sq.Handler):
        QUEUE = "mine"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    mine = await queue.insert_job(sq.Job("mine", {}))
    theirs = await queue.insert_job(sq.Job("theirs", {}))
    await queue.start()  # before any handler: register_handler works after start
    queue.register_handler(Mine())
    assert mine is not None
    await queue.wait_for_job(mine, timeout=5)
    assert count(dsn, "id = %s AND status = 'pending' AND attempt = 0", [theirs]) == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda q: q.cancel_job_by_unique_key(""), "unique_key"),
        (lambda q: q.cancel_job_by_unique_key(42), "unique_key"),
        (lambda q: q.cancel_job_by_unique_key("nul\x00"), "NUL"),
        (lambda q: q.cancel_jobs_by_fingerprint(None), "fingerprint"),
        (lambda q: q.cancel_jobs_by_fingerprint("x" * 2000), "fingerprint"),
        (lambda q: q.list_dlq(queue=""), "queue"),
        (lambda q: q.list_dlq(limit=True), "limit"),
        (lambda q: q.list_dlq(limit=2**63), "limit"),
        (lambda q: q.wait_for_job(uuid.uuid4(), timeout=10**400), "timeout"),
        (lambda q: q.get_job("nope"), "not a job id"),
        (lambda q: q.requeue_dlq_job("nope"), "not a job id"),
    ],
)
async def test_bad_arguments_to_operations_are_refused_and_change_nothing(
    queue: sq.SimpleQueue, dsn: str, call: Any, message: str
) -> None:
    job_id = await queue.insert_job(sq.Job("q", {}, unique_key="k", fingerprint="f"))
    with pytest.raises(sq.InvalidArgumentError, match=message) as refused:
        await call(queue)
    assert not isinstance(refused.value, sq.InvalidJobError)  # an argument, not a job
    assert count(dsn, "id = %s AND status = 'pending'", [job_id]) == 1


async def test_list_jobs_reads_live_jobs_in_insertion_order(queue: sq.SimpleQueue) -> None:
    ids = await queue.insert_jobs([sq.Job("q", n, unique_key=f"k{n}") for n in range(3)])
    assert [j.id for j in await queue.list_jobs("q", sq.JobStatus.PENDING)] == ids
    assert await queue.list_jobs("other") == []
    with pytest.raises(sq.InvalidArgumentError, match="status"):
        await queue.list_jobs(status=["pending", "nope"])


async def test_queue_summaries_show_every_queue_as_the_tables_do(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from simplequeue.columns import MOVED_COLUMNS

    later = datetime.now(UTC) + timedelta(hours=1)
    a = await queue.insert_jobs([sq.Job("a", n) for n in range(6)])
    await queue.insert_jobs(
        [sq.Job("a", "later", run_at=later), sq.Job("b", "later", run_at=later)]
    )
    query(
        dsn,
        "UPDATE simplequeue.jobs SET run_at = now() - interval '90 seconds' WHERE id = %s",
        [a[0]],
    )
    query(dsn, "UPDATE simplequeue.jobs SET status = 'running' WHERE id = %s", [a[1]])
    query(dsn, "UPDATE simplequeue.jobs SET status = 'failed' WHERE id = %s", [a[2]])
    done = "status = 'completed', completed_at = now() WHERE id = %s"
    query(dsn, f"UPDATE simplequeue.jobs SET {done}", [a[3]])
    query(dsn, f"UPDATE simplequeue.jobs SET {done}", [a[4]])
    moved = (
        f"WITH moved AS (DELETE FROM simplequeue.jobs WHERE id = %s RETURNING {MOVED_COLUMNS}) "
        f"INSERT INTO simplequeue.{{}} ({MOVED_COLUMNS}) SELECT * FROM moved"
    )
    query(dsn, moved.format("archive"), [a[4]])  # completed, then archived: still counted
    c = await queue.insert_job(sq.Job("c", 1))
    query(dsn, "UPDATE simplequeue.jobs SET status = 'bad_job' WHERE id = %s", [c])
    query(dsn, moved.format("dlq"), [c])
    summaries = {s.queue: s for s in await queue.queue_summaries(window=60)}
    assert sorted(summaries) == ["a", "b", "c"]
    first = summaries["a"]
    assert (first.due, first.scheduled, first.running, first.dead, first.dlq, first.completed) == (
        2, 1, 1, 1, 0, 2,
    )  # fmt: skip
    assert first.oldest_due_seconds is not None and 89 < first.oldest_due_seconds < 120
    assert first.completed_per_minute == 2.0
    assert (summaries["b"].due, summaries["b"].scheduled, summaries["b"].oldest_due_seconds) == (
        0, 1, None,
    )  # fmt: skip
    assert (summaries["c"].dlq, summaries["c"].due) == (1, 0)
    with sq.SyncQueue.from_url(dsn) as sync_queue:
        again = sync_queue.queue_summaries(window=60)
        assert [(s.queue, s.due, s.completed) for s in again] == [
            (s.queue, s.due, s.completed) for s in summaries.values()
        ]
        with pytest.raises(sq.InvalidArgumentError, match="window"):
            sync_queue.queue_summaries(window=0)
