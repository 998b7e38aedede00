"""An insert joins a SQLAlchemy transaction (psycopg driver): rolled back with it, seen by
workers only at its commit, deduplicated as usual, on every insert path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import simplequeue as sq
from tests.conftest import FAST, count, eventually, sqlalchemy_url


@pytest.fixture
async def engine(dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(dsn, "psycopg"))
    yield engine
    await engine.dispose()


@pytest.mark.parametrize("size", [1, 100, 1000])
async def test_a_session_rollback_leaves_no_job_and_its_commit_runs_them_once(
    dsn: str, engine: AsyncEngine, size: int
) -> None:
    ran: list[Any] = []

    class Work(sq.Handler):
        QUEUE = "sa"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            ran.append(job.data)

    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "empty_poll_sleep": 30}) as queue:
        queue.register_handler(Work())
        await queue.start()
        await queue.ready(timeout=10)
        async with AsyncSession(engine) as session:
            await session.execute(text("SELECT 1"))  # the session's transaction has begun
            ids = await queue.insert_jobs([sq.Job("sa", n) for n in range(size)], conn=session)
            assert all(ids) and count(dsn) == 0  # not visible before the commit
            await session.rollback()
        assert count(dsn) == 0
        async with AsyncSession(engine) as session:
            ids = await queue.insert_jobs([sq.Job("sa", n) for n in range(size)], conn=session)
            await session.commit()
        # a NOTIFY at the commit wakes the worker (its fallback poll is 30 s away)
        await eventually(lambda: len(ran) == size, timeout=20)
    assert sorted(ran) == list(range(size)) and count(dsn, "status = 'completed'") == size


async def test_a_sqlalchemy_connection_joins_too_and_dedup_holds(
    dsn: str, engine: AsyncEngine
) -> None:
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        async with engine.connect() as conn:
            first = await queue.insert_job(sq.Job("q", 1, unique_key="k"), conn=conn)
            again = await queue.insert_job(sq.Job("q", 2, unique_key="k"), conn=conn)
            await conn.commit()
        assert first is not None and again is None
        async with engine.begin() as conn:  # committed at the end of the block
            await queue.insert_job(sq.Job("q", 3), conn=conn)
    assert count(dsn) == 2


async def test_a_session_of_the_wrong_kind_is_refused_before_any_statement(
    queue: sq.SimpleQueue, dsn: str, engine: AsyncEngine
) -> None:
    from sqlalchemy.orm import Session

    with (
        Session(engine.sync_engine) as sync_session,  # a sync session: not this API
        pytest.raises(sq.InvalidArgumentError, match="AsyncSession"),
    ):
        await queue.insert_job(sq.Job("q", 1), conn=sync_session)  # type: ignore[arg-type]
    assert count(dsn) == 0


async def test_an_engine_on_another_driver_is_refused_and_writes_nothing(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    engine = create_async_engine(sqlalchemy_url(dsn, "asyncpg"))
    try:
        async with AsyncSession(engine) as session:
            with pytest.raises(sq.InvalidArgumentError, match="asyncpg"):
                await queue.insert_job(sq.Job("q", 1), conn=session)
            await session.commit()
    finally:
        await engine.dispose()
    assert count(dsn) == 0
