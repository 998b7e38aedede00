"""The caller's transaction: an insert joins it in every state and by every path, and
never commits or rolls it back itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

import simplequeue as sq
from simplequeue.store import COPY_THRESHOLD
from tests.conftest import count, query

# Every path an insert can take: one job, a batch of INSERT, a batch with unique keys,
# and the COPY path (a large batch without unique keys), with and without run_at.
PATHS: dict[str, Callable[[], list[sq.Job]]] = {
    "one": lambda: [sq.Job("tx", {"n": 0})],
    "batch": lambda: [sq.Job("tx", {"n": n}) for n in range(3)],
    "batch with keys": lambda: [sq.Job("tx", {"n": n}, unique_key=f"k{n}") for n in range(3)],
    "copy": lambda: [sq.Job("tx", {"n": n}) for n in range(COPY_THRESHOLD)],
    "copy with run_at": lambda: [
        sq.Job("tx", {"n": n}, run_at=_soon() if n % 2 else None) for n in range(COPY_THRESHOLD)
    ],
}


def _soon() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(minutes=1)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("state", ["idle", "in transaction"])
async def test_a_rollback_leaves_no_job(
    queue: sq.SimpleQueue, dsn: str, path: str, state: str
) -> None:
    """A non-autocommit connection, fresh (IDLE: what SQLAlchemy's `begin()` hands out)
    or after a statement of the caller's (INTRANS): rolled back, nothing is left."""
    jobs = PATHS[path]()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        if state == "in transaction":
            await conn.execute("SELECT 1")
        await queue.insert_jobs(jobs, conn=conn)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        await conn.rollback()
    assert count(dsn) == 0


@pytest.mark.parametrize("path", PATHS)
async def test_a_commit_keeps_every_job(queue: sq.SimpleQueue, dsn: str, path: str) -> None:
    jobs = PATHS[path]()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        ids = await queue.insert_jobs(jobs, conn=conn)
        assert count(dsn) == 0  # not visible before the caller commits
        await conn.commit()
    assert ids == [j.id for j in jobs]
    assert count(dsn) == len(jobs)


@pytest.mark.parametrize("path", PATHS)
async def test_a_transaction_block_rolled_back_leaves_no_job(
    queue: sq.SimpleQueue, dsn: str, path: str
) -> None:
    """An autocommit connection inside `conn.transaction()`: the block decides."""
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        conn.transaction(force_rollback=True),
    ):
        await queue.insert_jobs(PATHS[path](), conn=conn)
        assert conn.info.transaction_status == TransactionStatus.INTRANS
    assert count(dsn) == 0


@pytest.mark.parametrize("path", PATHS)
async def test_an_autocommit_connection_stores_the_batch_whole(
    queue: sq.SimpleQueue, dsn: str, path: str
) -> None:
    jobs = PATHS[path]()
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, row_factory=dict_row
    ) as conn:
        await queue.insert_jobs(jobs, conn=conn)
        assert conn.info.transaction_status == TransactionStatus.IDLE
    assert count(dsn) == len(jobs)


@pytest.mark.parametrize("path", PATHS)
async def test_a_failed_transaction_gets_an_error_and_stays_failed(
    queue: sq.SimpleQueue, dsn: str, path: str
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            await queue.insert_jobs(PATHS[path](), conn=conn)
        assert conn.info.transaction_status == TransactionStatus.INERROR
        await conn.rollback()
    assert count(dsn) == 0


async def test_a_savepoint_of_the_caller_rolls_back_the_insert_alone(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await queue.insert_job(sq.Job("tx", "kept"), conn=conn)
        async with conn.transaction(force_rollback=True):
            await queue.insert_jobs(PATHS["copy"](), conn=conn)
        await conn.commit()
    assert count(dsn) == 1


@pytest.mark.parametrize("api", ["async", "sync"])
@pytest.mark.parametrize("path", ["copy", "copy with run_at"])
async def test_a_copy_failing_late_on_the_pool_stores_nothing(
    dsn: str, path: str, api: str
) -> None:
    """On the queue's own (autocommit) connections, a batch that is one COPY commits
    alone, and one with and without run_at is two COPYs in one transaction: a row refused
    in the last of them (here by a trigger of the application's) leaves no job at all."""
    query(
        dsn,
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.data = '\"poison\"' THEN RAISE EXCEPTION 'poison refused'; END IF; "
        "RETURN NEW; END $$",
    )
    query(
        dsn,
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON simplequeue.jobs "
        "FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    )
    jobs = PATHS[path]()
    jobs[-1].data = "poison"  # in the COPY that runs last (with run_at, when there are two)
    if api == "async":
        async with sq.SimpleQueue.from_url(dsn) as queue:
            with pytest.raises(psycopg.errors.RaiseException, match="poison refused"):
                await queue.insert_jobs(jobs)
    else:
        with (
            sq.SyncQueue.from_url(dsn) as sync_queue,
            pytest.raises(psycopg.errors.RaiseException, match="poison refused"),
        ):
            sync_queue.insert_jobs(jobs)
    assert count(dsn) == 0
