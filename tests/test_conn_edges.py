"""conn= at its edges: an engine in AUTOCOMMIT, a large batch that meets stored ids in
the caller's transaction, scoped sessions, and refusals that leave the caller's session
as it was."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone

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
from simplequeue.validation import INT32_MAX, MAX_TIMEOUT, MAX_UNIQUE_FOR
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


EDGE_TEXTS = (
    'say "hi"',
    "back\\slash\\",
    '\\"quoted\\"',
    "{braces},[brackets]",
    "  padded\t",
    "NULL",
    "null",
    "e\u0301 \U0001d11e \U0001f600",
)
"""Text an array literal must quote: quotes, backslashes, braces, commas, whitespace, the
word NULL, combining and astral characters."""

_ZONE = timezone(timedelta(hours=-5, minutes=-30, seconds=-15))
EDGE_TIMES = (
    None,
    datetime(1, 1, 2, 12, tzinfo=UTC),
    datetime(9999, 12, 29, tzinfo=_ZONE),
    datetime(2030, 1, 2, 3, 4, 5, 6789, tzinfo=_ZONE),
)
SETTINGS = (
    "SET standard_conforming_strings = off",
    "SET DateStyle = 'SQL, DMY'",
    "SET TimeZone = 'Pacific/Chatham'",
    "SET IntervalStyle = 'sql_standard'",
    "SET extra_float_digits = -15",
)
"""What a caller's session may say of strings, dates and floats: none changes a value."""


def _edge_jobs(keyed: bool) -> list[sq.Job]:
    jobs = []
    for n, edge in enumerate(EDGE_TEXTS):
        jobs.append(
            sq.Job(
                edge,
                {edge: [edge, '{"a": "\\\\\\""}'], "n": n},
                unique_key=f"{edge}{n}" if keyed else None,
                fingerprint=edge,
                concurrency_key=edge,
                run_at=EDGE_TIMES[n % len(EDGE_TIMES)],
                max_attempts=(1, INT32_MAX)[n % 2],
                priority=(-INT32_MAX, INT32_MAX, 0)[n % 3],
                timeout=(None, 5e-324, MAX_TIMEOUT)[n % 3],
                unique_for=(sq.FOREVER, 1e-6, MAX_UNIQUE_FOR)[n % 3] if keyed else None,
            )
        )
    return jobs


@pytest.mark.parametrize("keyed", [False, True])
def test_a_batch_stores_edge_values_as_given_whatever_the_session_says(
    dsn: str, keyed: bool
) -> None:
    """A batch's arrays travel as literals the library writes (the INSERT of fewer than
    COPY_THRESHOLD jobs, of any batch with keys): on a caller's connection whose session
    settings differ from the server's defaults, every column is stored as given."""
    jobs = _edge_jobs(keyed)
    with sq.SyncQueue.from_url(dsn) as queue, psycopg.connect(dsn) as conn:
        for setting in SETTINGS:
            conn.execute(setting)
        assert queue.insert_jobs(jobs, conn=conn) == [job.id for job in jobs]
        conn.commit()
        compared = ("queue", "data", "unique_key", "fingerprint", "concurrency_key")
        compared += ("max_attempts", "priority", "timeout", "unique_for")
        for job in jobs:
            stored = queue.get_job(job.id)
            assert stored is not None
            assert [getattr(stored, a) for a in compared] == [getattr(job, a) for a in compared]
            assert stored.run_at is not None
            if job.run_at is not None:
                assert stored.run_at == job.run_at


def test_a_latin1_session_stores_what_latin1_holds_and_refuses_the_rest(dsn: str) -> None:
    """A caller's connection in client_encoding LATIN1: latin text goes in by every path;
    other text cannot be sent, raises before anything is stored, and leaves the caller's
    transaction usable."""
    with sq.SyncQueue.from_url(dsn) as queue, psycopg.connect(dsn) as conn:
        conn.execute("SET client_encoding TO 'LATIN1'")
        for size in (1, 3, COPY_THRESHOLD):
            jobs = [sq.Job("q", {"é": "ü"}, fingerprint="ß") for _ in range(size)]
            assert queue.insert_jobs(jobs, conn=conn) == [job.id for job in jobs]
            with pytest.raises(UnicodeEncodeError):
                queue.insert_jobs([sq.Job("q", {"€": n}) for n in range(size)], conn=conn)
        conn.commit()
    assert count(dsn) == 1 + 3 + COPY_THRESHOLD
    assert count(dsn, "data = '{\"é\": \"ü\"}' AND fingerprint = 'ß'") == count(dsn)
