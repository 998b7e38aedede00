"""conn= at its edges: an engine in AUTOCOMMIT, a large batch that meets stored ids in
the caller's transaction, scoped sessions, and refusals that leave the caller's session
as it was."""

from __future__ import annotations

import copy

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import simplequeue as sq
from simplequeue.store import COPY_THRESHOLD
from tests.conftest import count, query, sqlalchemy_url


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_an_autocommit_engine_commits_each_insert_and_a_new_insert_is_a_new_job(
    queue: sq.SimpleQueue, dsn: str, driver: str
) -> None:
    engine = create_async_engine(sqlalchemy_url(dsn, driver), isolation_level="AUTOCOMMIT")
    job = sq.Job("q", 1)
    try:
        async with AsyncSession(engine) as session:
            first = await queue.insert_job(job, conn=session)
            await session.rollback()  # nothing to roll back: it committed on its own
        async with AsyncSession(engine) as session:
            second = await queue.insert_job(job, conn=session)
    finally:
        await engine.dispose()
    assert first is not None and second is not None and first != second
    assert count(dsn) == 2


@pytest.mark.parametrize("size", [COPY_THRESHOLD - 1, COPY_THRESHOLD])
def test_stored_ids_in_a_large_batch_leave_the_callers_transaction_usable(
    dsn: str, size: int
) -> None:
    """The same answer on every path: ids stored already are reported stored, and the
    caller's own rows stay (the COPY runs in a savepoint, then the INSERT takes over)."""
    with sq.SyncQueue.from_url(dsn) as queue:
        jobs = [sq.Job("q", n) for n in range(size)]
        copies = [copy.copy(j) for j in jobs]  # the same ids, not known to be stored
        with psycopg.connect(dsn) as conn:
            queue.insert_jobs(jobs, conn=conn)
        with psycopg.connect(dsn) as conn:
            conn.execute("CREATE TABLE mine (n int)")
            conn.execute("INSERT INTO mine VALUES (1)")
            assert queue.insert_jobs(copies, conn=conn) == [j.id for j in jobs]
            conn.execute("INSERT INTO mine VALUES (2)")
    assert count(dsn) == size
    assert query(dsn, "SELECT n FROM mine ORDER BY n") == [(1,), (2,)]


async def test_scoped_sessions_are_resolved(queue: sq.SimpleQueue, dsn: str) -> None:
    """Flask-SQLAlchemy's `db.session` is a scoped_session."""
    engine = create_engine(sqlalchemy_url(dsn, "psycopg"))
    async_engine = create_async_engine(sqlalchemy_url(dsn, "psycopg"))
    scoped = scoped_session(sessionmaker(engine))
    async_scoped = async_scoped_session(async_sessionmaker(async_engine), scopefunc=lambda: 1)
    try:
        with sq.SyncQueue.from_url(dsn) as sync_queue:
            assert sync_queue.insert_job(sq.Job("q", "sync"), conn=scoped) is not None
            scoped.rollback()
            assert sync_queue.insert_job(sq.Job("q", "kept"), conn=scoped) is not None
            scoped.commit()
        assert await queue.insert_job(sq.Job("q", "async"), conn=async_scoped) is not None
        await async_scoped.commit()
    finally:
        scoped.remove()
        await async_scoped.remove()
        engine.dispose()
        await async_engine.dispose()
    assert sorted(d for (d,) in query(dsn, "SELECT data #>> '{}' FROM simplequeue.jobs")) == [
        "async",
        "kept",
    ]


def test_a_session_on_another_database_system_is_refused_before_it_begins(dsn: str) -> None:
    engine = create_engine("sqlite://")
    with sq.SyncQueue.from_url(dsn) as queue, Session(engine) as session:
        with pytest.raises(TypeError, match=r"sqlite\+pysqlite://; conn must be"):
            queue.insert_job(sq.Job("q", 1), conn=session)
        assert not session.in_transaction()
        with engine.connect() as conn:
            with pytest.raises(TypeError, match=r"sqlite\+pysqlite://"):
                queue.insert_job(sq.Job("q", 1), conn=conn)
            assert not conn.in_transaction()
            conn.execute(text("SELECT 1"))
    engine.dispose()
    assert count(dsn) == 0
