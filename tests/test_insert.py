"""Inserting jobs: ids, dedup by unique key, batches, transactions, and bad input."""

from __future__ import annotations

import asyncio
import enum
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import simplequeue as sq
from tests.conftest import count, eventually, query


async def test_insert_returns_a_time_ordered_id(queue: sq.SimpleQueue, dsn: str) -> None:
    first = await queue.insert_job(sq.Job("mail", {"to": "a@b.c"}, priority=5, max_attempts=7))
    second = await queue.insert_job(sq.Job("mail", {"to": "d@e.f"}))
    assert isinstance(first, uuid.UUID) and first.version == 7
    assert second is not None and second > first
    job = await queue.get_job(first)
    assert job is not None
    assert (job.queue, job.data, job.status, job.attempt) == ("mail", {"to": "a@b.c"}, "pending", 0)
    assert (job.priority, job.max_attempts, job.reprocess_count) == (5, 7, 0)
    assert job.created_at is not None and job.run_at is not None


async def test_a_live_unique_key_deduplicates(queue: sq.SimpleQueue, dsn: str) -> None:
    first = await queue.insert_job(sq.Job("mail", {}, unique_key="welcome:1"))
    assert first is not None
    assert await queue.insert_job(sq.Job("mail", {}, unique_key="welcome:1")) is None
    assert count(dsn) == 1
    # once the first one is no longer live, the key is free again
    assert await queue.cancel_job(first)
    assert await queue.insert_job(sq.Job("mail", {}, unique_key="welcome:1")) is not None
    assert count(dsn) == 2


async def test_concurrent_duplicate_inserts_leave_one_row(dsn: str) -> None:
    queues = [sq.SimpleQueue.from_url(dsn, pool_min_size=1, pool_max_size=1) for _ in range(16)]
    for q in queues:
        await q.__aenter__()
    try:
        results = await asyncio.gather(
            *(
                q.insert_job(sq.Job("mail", {"n": i}, unique_key="same"))
                for i, q in enumerate(queues)
            )
        )
    finally:
        for q in queues:
            await q.__aexit__(None, None, None)
    assert sum(r is not None for r in results) == 1
    assert count(dsn, "unique_key = 'same'") == 1


async def test_insert_jobs_is_aligned_and_deduplicates(queue: sq.SimpleQueue, dsn: str) -> None:
    await queue.insert_job(sq.Job("mail", {}, unique_key="taken"))
    jobs = [
        sq.Job("mail", {"i": 0}),
        sq.Job("mail", {"i": 1}, unique_key="taken"),
        sq.Job("mail", {"i": 2}, unique_key="fresh"),
        sq.Job("mail", {"i": 3}, unique_key="fresh"),
        sq.Job("other", {"i": 4}),
    ]
    ids = await queue.insert_jobs(jobs)
    assert ids == [jobs[0].id, None, jobs[2].id, None, jobs[4].id]
    assert count(dsn) == 4
    assert await queue.insert_jobs([]) == []


async def test_insert_in_the_callers_transaction(queue: sq.SimpleQueue, dsn: str) -> None:
    done = asyncio.Event()

    class Mark(sq.Handler):
        QUEUE = "tx"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            done.set()

    queue.register_handler(Mark())
    await queue.start()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        # rolled back: never stored, never run
        async with conn.transaction(force_rollback=True):
            assert await queue.insert_job(sq.Job("tx", {"n": 1}), conn=conn) is not None
        assert count(dsn) == 0
        # committed: invisible to workers until the commit, then run
        async with conn.transaction():
            job_id = await queue.insert_job(sq.Job("tx", {"n": 2}), conn=conn)
            await conn.execute("SELECT pg_sleep(0.5)")
            assert count(dsn) == 0 and not done.is_set()
    await asyncio.wait_for(done.wait(), 5)
    await eventually(lambda: count(dsn, "id = %s AND status = 'completed'", [job_id]))


async def test_a_large_batch_goes_in_whole_with_every_field(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    # Large batches without unique keys take the COPY path: same rows as the INSERT path.
    from simplequeue.store import COPY_THRESHOLD

    later = datetime.now(UTC) + timedelta(hours=1)
    jobs = [
        sq.Job(
            "big",
            {"n": n, "text": "tab\tnewline\nbackslash\\ \u00e9"},
            fingerprint="fp" if n % 2 else None,
            run_at=later if n % 3 == 0 else None,
            timeout=5 if n % 5 == 0 else None,
            priority=n % 7,
            max_attempts=1 + n % 4,
        )
        for n in range(COPY_THRESHOLD + 10)
    ]
    ids = await queue.insert_jobs(jobs)
    assert ids == [j.id for j in jobs]
    for job in (jobs[0], jobs[1], jobs[5], jobs[-1]):
        stored = await queue.get_job(job.id)
        assert stored is not None
        assert (stored.data, stored.fingerprint, stored.priority, stored.max_attempts) == (
            job.data,
            job.fingerprint,
            job.priority,
            job.max_attempts,
        )
        assert stored.timeout == job.timeout
        if job.run_at is not None:
            assert stored.run_at == job.run_at
    assert count(dsn, "run_at <= now()") == len([j for j in jobs if j.run_at is None])
    assert count(dsn, "fingerprint = 'fp'") == len(jobs) // 2


async def test_a_large_batch_in_the_callers_transaction_rolls_back_whole(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    from simplequeue.store import COPY_THRESHOLD

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction(force_rollback=True):
            jobs = [sq.Job("big", n) for n in range(COPY_THRESHOLD)]
            await queue.insert_jobs(jobs, conn=conn)
            cur = await conn.execute("SELECT count(*) FROM simplequeue.jobs")
            assert await cur.fetchone() == (COPY_THRESHOLD,)
        assert count(dsn) == 0


async def test_a_large_batch_wakes_an_idle_worker(dsn: str) -> None:
    from simplequeue.store import COPY_THRESHOLD

    seen: list[int] = []

    class Big(sq.Handler):
        QUEUE = "big"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            seen.append(job.data)

    async with sq.SimpleQueue.from_url(dsn, empty_poll_sleep=60) as queue:
        queue.register_handler(Big())
        await queue.start()
        await queue.ready(timeout=10)
        await asyncio.sleep(0.2)
        await queue.insert_jobs([sq.Job("big", n) for n in range(COPY_THRESHOLD)])
        await eventually(lambda: len(seen) == COPY_THRESHOLD, timeout=20)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: sq.Job("q", {"f": object()}), "JSON-serialisable"),
        (lambda: sq.Job("q", {1, 2}), "JSON-serialisable"),
        (lambda: sq.Job("q", float("nan")), "JSON-serialisable"),
        (lambda: sq.Job("q", {}, run_at=datetime(2030, 1, 1)), "naive datetime"),
        (lambda: sq.Job("", {}), "queue must be a non-empty string"),
        (lambda: sq.Job(None, {}), "queue must be a non-empty string"),  # type: ignore[arg-type]
        (lambda: sq.Job("q", {}, max_attempts=0), "max_attempts must be an integer between 1"),
        (lambda: sq.Job("q", {}, max_attempts=2**31), "max_attempts must be an integer between 1"),
        (lambda: sq.Job("q", {}, priority="high"), "priority must be an integer"),  # type: ignore[arg-type]
        (lambda: sq.Job("q", {"s": "a\x00b"}), "NUL"),
        (lambda: sq.Job("q\x00", {}), "NUL"),
        (lambda: sq.Job("q", {}, unique_key=""), "unique_key must be a non-empty string"),
        (lambda: sq.Job("q", {"s": "\ud800"}), "JSON-serialisable"),
        (lambda: sq.Job("q", {}, fingerprint="x" * 2000), "limit is 1024"),
    ],
)
def test_bad_jobs_are_refused_when_built(build: Any, message: str) -> None:
    with pytest.raises(sq.InvalidJobError, match=message):
        build()


async def test_bad_input_writes_nothing(queue: sq.SimpleQueue, dsn: str) -> None:
    with pytest.raises(sq.InvalidJobError, match=r"not a simplequeue\.Job"):
        await queue.insert_jobs([sq.Job("q", {}), {"queue": "q"}])  # type: ignore[list-item]
    job = sq.Job("q", {})
    with pytest.raises(sq.InvalidJobError, match="same Job object"):
        await queue.insert_jobs([job, job])
    with pytest.raises(sq.InvalidJobError, match="max_payload_bytes"):
        await queue.insert_jobs([sq.Job("q", {}), sq.Job("q", "x" * (1024 * 1024 + 1))])
    assert count(dsn) == 0


async def test_escaped_text_that_looks_like_nul_is_fine(queue: sq.SimpleQueue) -> None:
    text = "C:\\u0000\\path"
    job_id = await queue.insert_job(sq.Job("q", {"s": text}))
    stored = await queue.get_job(job_id)  # type: ignore[arg-type]
    assert stored is not None and stored.data == {"s": text}


async def test_data_round_trips_exactly(queue: sq.SimpleQueue) -> None:
    data = {
        "unicode": "zażółć 🐘",
        "big": 10**40,
        "float": 1.5,
        "nested": [[[{"a": None}]]],
        "quote": "'; DROP TABLE jobs; --",
        "empty": {},
    }
    job_id = await queue.insert_job(
        sq.Job(
            "q'\"; --",
            data,
            unique_key="k'\"",
            fingerprint="ö",
            run_at=datetime.now(UTC) + timedelta(days=1),
        )
    )
    stored = await queue.get_job(job_id)  # type: ignore[arg-type]
    assert stored is not None
    assert stored.data == data
    assert (stored.queue, stored.unique_key, stored.fingerprint) == ("q'\"; --", "k'\"", "ö")


async def test_pydantic_model_as_data(queue: sq.SimpleQueue) -> None:
    import pydantic

    class Mail(pydantic.BaseModel):
        to: str
        when: datetime

    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    job_id = await queue.insert_job(sq.Job("q", Mail(to="a@b.c", when=when)))
    stored = await queue.get_job(job_id)  # type: ignore[arg-type]
    assert stored is not None and stored.data == {"to": "a@b.c", "when": "2030-01-02T03:04:05Z"}


async def test_inserts_fail_clearly_when_the_database_is_gone(dsn: str) -> None:
    from psycopg_pool import AsyncConnectionPool, PoolTimeout

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn + " port=1", open=False, timeout=1, min_size=1
    )
    await pool.open(wait=False)
    try:
        with pytest.raises(PoolTimeout, match="couldn't get a connection"):
            await sq.SimpleQueue(pool).insert_job(sq.Job("q", {}))
    finally:
        await pool.close()
    assert count(dsn) == 0


async def test_wrong_kinds_are_refused_before_any_statement(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    with pytest.raises(sq.InvalidArgumentError, match=r"use SimpleQueue\.from_url\(dsn\)"):
        sq.SimpleQueue(dsn)  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError, match="connection string"):
        sq.SimpleQueue.from_url(queue.pool)  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError, match="not a valid connection string"):
        sq.SimpleQueue.from_url("localhost:5432")
    with psycopg.connect(dsn, autocommit=True) as sync_conn:
        for wrong in (queue.pool, sync_conn, dsn, 42):
            with pytest.raises(sq.InvalidArgumentError, match=r"psycopg\.AsyncConnection"):
                await queue.insert_job(sq.Job("q", {}), conn=wrong)  # type: ignore[arg-type]
            with pytest.raises(sq.InvalidArgumentError, match=r"psycopg\.AsyncConnection"):
                await queue.insert_jobs([sq.Job("q", n) for n in range(600)], conn=wrong)  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError, match="use insert_job for one"):
        await queue.insert_jobs(sq.Job("q", {}))  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError, match="sequence of jobs"):
        await queue.insert_jobs(None)  # type: ignore[arg-type]
    for not_jobs in ("abc", b"abc", {"queue": "q"}):  # iterable, but not of jobs
        with pytest.raises(sq.InvalidArgumentError, match="sequence of jobs"):
            await queue.insert_jobs(not_jobs)  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError, match="use insert_jobs for several"):
        await queue.insert_job([sq.Job("q", {})])  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError, match=r"takes a simplequeue\.Job, got str"):
        await queue.insert_job("not a job")  # type: ignore[arg-type]
    assert count(dsn) == 0


def test_ids_grow_within_a_millisecond_and_across_threads() -> None:
    import threading

    from simplequeue.job import new_job_id

    made: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def build(into: list[uuid.UUID]) -> None:
        into.extend(new_job_id() for _ in range(20_000))

    threads = [threading.Thread(target=build, args=(into,)) for into in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ids in made:
        assert ids == sorted(ids)
    every = [i for ids in made for i in ids]
    assert len(set(every)) == len(every)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in every)


async def test_a_batch_runs_in_the_order_it_was_built(dsn: str) -> None:
    order: list[int] = []

    class Record(sq.Handler):
        QUEUE = "fifo"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            order.append(job.data)

    async with sq.SimpleQueue.from_url(dsn, global_permits=1, empty_poll_sleep=0.05) as queue:
        await queue.insert_jobs([sq.Job("fifo", n) for n in range(200)])
        queue.register_handler(Record())
        await queue.start()
        await eventually(lambda: len(order) == 200, timeout=30)
    assert order == list(range(200))


async def test_inserting_a_job_object_again_stores_a_new_job(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    class Ok(sq.Handler):
        QUEUE = "again"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    job = sq.Job("again", {"n": 1})
    first = await queue.insert_job(job)
    second = await queue.insert_job(job)  # the first is still live: no UniqueViolation
    assert first is not None and second is not None and first != second == job.id
    queue.register_handler(Ok())
    await queue.start()
    await queue.wait_for_job(second, timeout=10)
    await eventually(lambda: count(dsn, "status = 'completed'") == 2)
    third = await queue.insert_job(job)  # after the first two have finished
    assert third not in (first, second, None)
    await queue.wait_for_job(third, timeout=10)  # type: ignore[arg-type]
    await eventually(lambda: count(dsn, "status = 'completed'") == 3)
    report = await queue.run_janitor()
    assert (report.archived, report.stuck, report.failed_steps) == (3, 0, ())
    # a job read back is a stored job: inserting it stores a copy under a new id
    stored = await queue.get_job(first)
    assert stored is not None
    copy = await queue.insert_job(stored)
    assert copy not in (first, None) and count(dsn, "status = 'pending'") <= 1


async def test_a_job_inserted_in_a_rolled_back_transaction_can_be_inserted_again(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    jobs = [sq.Job("q", n) for n in range(3)]
    built = [j.id for j in jobs]  # what an application stores beside its own rows
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await queue.insert_jobs(jobs, conn=conn)
        await conn.rollback()
        ids = await queue.insert_jobs(jobs, conn=conn)  # the retry of the transaction
        await conn.commit()
    assert ids == built  # the same ids: rows that point at them stay right
    assert count(dsn) == 3


@pytest.mark.parametrize("size", [1, 3, 600])
async def test_one_job_object_inserted_concurrently_is_stored_once(dsn: str, size: int) -> None:
    """The second insert of the same objects, sent while the first is under way, may find
    them stored: it reports them stored instead of storing them twice or raising."""
    jobs = [sq.Job("q", n) for n in range(size)]
    async with sq.SimpleQueue.from_url(dsn, pool_min_size=2, pool_max_size=2) as queue:
        first, second = await asyncio.gather(queue.insert_jobs(jobs), queue.insert_jobs(jobs))
    assert first == second == [j.id for j in jobs]
    assert count(dsn) == size


async def test_bad_timeouts_are_refused_before_anything_runs(queue: sq.SimpleQueue) -> None:
    job_id = await queue.insert_job(sq.Job("q", {}))
    assert job_id is not None
    for bad in (float("nan"), float("inf"), -1, "5", None):
        if bad is not None:
            with pytest.raises(sq.InvalidArgumentError, match="timeout"):
                await queue.wait_for_job(job_id, timeout=bad)  # type: ignore[arg-type]
        with pytest.raises(sq.InvalidArgumentError, match="timeout"):
            await queue.stop(timeout=bad)  # type: ignore[arg-type]


async def test_retrying_a_transaction_whose_commit_was_lost_stores_nothing_twice(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """The caller cannot know whether a commit that failed to answer landed: inserting the
    same jobs again is a retry, and finds them, live, archived or dead-lettered."""
    live, done = sq.Job("q", "live"), sq.Job("q", "done")
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await queue.insert_jobs([live, done], conn=conn)
        await conn.commit()  # landed, though the caller may not know it
    query(dsn, "UPDATE simplequeue.jobs SET status = 'completed' WHERE id = %s", [done.id])
    await queue.run_janitor()  # `done` is archived
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        assert await queue.insert_jobs([live, done], conn=conn) == [live.id, done.id]
        await conn.commit()
    assert count(dsn) == 1 and count(dsn, table="archive") == 1


@pytest.mark.parametrize("size", [50, 600])
async def test_the_same_jobs_in_opposite_orders_at_once_do_not_deadlock(
    dsn: str, size: int
) -> None:
    async with sq.SimpleQueue.from_url(dsn, pool_min_size=2, pool_max_size=2) as queue:
        for _ in range(8):
            jobs = [sq.Job("q", n) for n in range(size)]
            first, second = await asyncio.gather(
                queue.insert_jobs(jobs), queue.insert_jobs(jobs[::-1])
            )
            assert first == [j.id for j in jobs] and second == first[::-1]
    assert count(dsn) == 8 * size


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("queue", "", "queue must be a non-empty string"),
        ("queue", 123, "queue must be a non-empty string"),
        ("priority", 2**40, "priority must be an integer"),
        ("max_attempts", 0, "max_attempts must be an integer"),
        ("timeout", -1, "timeout must be more than zero"),
        ("run_at", datetime(2030, 1, 1), "naive datetime"),
        ("unique_key", "k" * 5000, "the limit is 1024"),
        ("unique_key", "\ud800", "not valid unicode"),
        ("data", {"nan": float("nan")}, "JSON-serialisable"),
    ],
)
async def test_attributes_changed_after_building_are_checked_at_insert(
    queue: sq.SimpleQueue, dsn: str, attribute: str, value: Any, message: str
) -> None:
    job = sq.Job("q", {"ok": 1})
    setattr(job, attribute, value)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(sq.InvalidJobError, match=message):
            await queue.insert_job(job, conn=conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # untouched
    assert count(dsn) == 0


async def test_data_given_a_new_value_is_stored_as_it_is_now(queue: sq.SimpleQueue) -> None:
    job = sq.Job("q", {"v": 1})
    job.data = {"v": 2}
    stored = await queue.get_job(await queue.insert_job(job))  # type: ignore[arg-type]
    assert stored is not None and stored.data == {"v": 2}


async def test_a_job_id_cannot_be_set_and_a_copy_is_the_same_job(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    import copy

    job = sq.Job("q", {})
    with pytest.raises(AttributeError):
        job.id = uuid.uuid4()  # type: ignore[misc]
    with pytest.raises(sq.InvalidJobError, match="a copy of it"):
        await queue.insert_jobs([job, copy.copy(job)])
    assert count(dsn) == 0


async def test_a_large_batch_in_pipeline_mode_takes_the_insert(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.pipeline():
            ids = await queue.insert_jobs([sq.Job("q", n) for n in range(600)], conn=conn)
        await conn.commit()
    assert None not in ids and count(dsn) == 600


def test_a_pydantic_model_is_checked_like_any_data() -> None:
    import pydantic

    class Reading(pydantic.BaseModel):
        value: float
        extra: object = None

    with pytest.raises(sq.InvalidJobError, match="JSON-serialisable"):
        sq.Job("q", Reading(value=float("nan")))  # pydantic's JSON would store null
    with pytest.raises(sq.InvalidJobError, match="cannot be serialised"):
        sq.Job("q", Reading(value=1, extra=object()))


async def test_wait_for_job_keeps_its_timeout_while_the_database_does_not_answer(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    job_id = await queue.insert_job(sq.Job("q", {}))
    assert job_id is not None
    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE simplequeue.jobs IN ACCESS EXCLUSIVE MODE")
        begun = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError, match=r"after 0\.5s"):
            await queue.wait_for_job(job_id, timeout=0.5)
        assert asyncio.get_running_loop().time() - begun < 2


def test_ids_keep_growing_when_the_counter_carries_into_its_top_bits() -> None:
    from simplequeue.job import IdClock

    # The counter's low 62 bits two short of wrapping: the third id carries into the 12
    # bits before them, which are cached between ids.
    start = (2**62 - 2) << 7
    clock = IdClock(clock=lambda: 1_700_000_000_000_000_000, entropy=lambda n: start.to_bytes(n))
    ids = [clock.next() for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    counters = [(i.int >> 64 & 0xFFF) << 62 | (i.int & (2**62 - 1)) for i in ids]
    assert counters == [2**62 - 2 + k for k in range(5)]
    assert [i.int >> 80 for i in ids] == [1_700_000_000_000] * 5
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == [uuid.UUID(str(i)) for i in ids] and len({hash(i) for i in ids}) == 5


class _Priority(int, enum.Enum):  # not IntEnum: str() gives "_Priority.HIGH", not "5"
    HIGH = 5


class _Attempts(int):
    def __str__(self) -> str:
        return "four attempts"

    __repr__ = __str__


PATHS = [1, 3, "keyed", 50]
"""One job, a batch of arrays, a batch with unique keys, COPY."""


def _batch(size: int | str, **fields: Any) -> list[sq.Job]:
    """A batch that takes the path `size` names (see PATHS)."""
    keyed = size == "keyed"
    return [
        sq.Job("q", n, unique_key=f"k{n}" if keyed else None, **fields)
        for n in range(3 if keyed else int(size))
    ]


@pytest.mark.parametrize("size", PATHS)
async def test_int_subclasses_are_stored_by_value_by_every_path(
    queue: sq.SimpleQueue, dsn: str, size: int | str
) -> None:
    """int subclasses that print as something else (an (int, Enum) mixin, a __str__ of
    their own) are integers to the constructor: every path stores their value."""
    jobs = _batch(size, priority=_Priority.HIGH, max_attempts=_Attempts(4))
    assert await queue.insert_jobs(jobs) == [job.id for job in jobs]
    for job in jobs:
        stored = await queue.get_job(job.id)
        assert stored is not None and (stored.priority, stored.max_attempts) == (5, 4)
    assert count(dsn, "priority = 5 AND max_attempts = 4") == len(jobs)


@pytest.mark.parametrize("size", PATHS)
async def test_a_timeout_changed_after_building_is_stored_by_every_path(
    queue: sq.SimpleQueue, dsn: str, size: int | str
) -> None:
    """A timeout set after building is checked at the insert as the constructor checks
    it, which takes a timedelta or an int: stored as the constructor stores them."""
    jobs = _batch(size)
    for n, job in enumerate(jobs):
        job.timeout = timedelta(seconds=2) if n % 2 == 0 else 3  # type: ignore[assignment]
    assert await queue.insert_jobs(jobs) == [job.id for job in jobs]
    for n, job in enumerate(jobs):
        stored = await queue.get_job(job.id)
        assert stored is not None and stored.timeout == (2.0 if n % 2 == 0 else 3.0)
        assert job.timeout == stored.timeout
