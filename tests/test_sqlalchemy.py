"""conn= beyond the matrix (tests/test_conn_matrix.py): a SQLAlchemy connection rather
than a session, connections of the wrong kind refused before any statement, and a
database without the schema named as such."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import simplequeue as sq
from tests.conftest import FAST, count, query, sqlalchemy_url


@pytest.fixture
async def engine(dsn: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(dsn, "psycopg"))
    yield engine
    await engine.dispose()


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


async def test_a_connection_of_another_kind_is_refused_before_any_statement(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    import asyncpg
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    raw = await asyncpg.connect(**asyncpg_params(dsn))
    sqlite = create_engine("sqlite://")
    wrong: list[Any] = [
        queue.pool,  # a pool, not a connection
        raw,  # asyncpg outside SQLAlchemy: whose transaction would it be?
        psycopg.connect(dsn),  # sync: SyncQueue's
        "host=127.0.0.1",
    ]
    try:
        for conn in wrong:
            with pytest.raises(TypeError, match=r"conn must be a psycopg\.AsyncConnection"):
                await queue.insert_job(sq.Job("q", 1), conn=conn)
        with sq.SyncQueue.from_url(dsn) as sync_queue, Session(sqlite) as session:
            async with await psycopg.AsyncConnection.connect(dsn) as async_conn:
                for conn in [async_conn, raw, sync_queue.pool, object()]:
                    with pytest.raises(TypeError, match=r"conn must be a psycopg\.Connection"):
                        sync_queue.insert_job(sq.Job("q", 1), conn=conn)
            # a session of another database: refused, naming what is accepted
            with pytest.raises(
                TypeError, match=r"sqlite\+pysqlite://; conn must be a psycopg\.Connection"
            ):
                sync_queue.insert_job(sq.Job("q", 1), conn=session)
            session.commit()
    finally:
        await raw.close()
        sqlite.dispose()
        wrong[2].close()
    assert count(dsn) == 0


async def test_a_database_without_the_schema_says_to_migrate(dsn: str) -> None:
    empty = conninfo_to_dict(dsn)["dbname"] + "_empty"
    query(dsn, f"CREATE DATABASE {empty}")
    other = make_conninfo(dsn, dbname=empty)
    try:
        async with sq.SimpleQueue.from_url(dsn) as queue:
            engine = create_async_engine(sqlalchemy_url(other, "asyncpg"))
            try:
                async with AsyncSession(engine) as session:
                    with pytest.raises(sq.SchemaNotFoundError, match="simplequeue migrate"):
                        await queue.insert_job(sq.Job("q", 1), conn=session)
            finally:
                await engine.dispose()
        with (
            sq.SyncQueue.from_url(dsn) as sync_queue,
            psycopg.connect(other) as conn,
            pytest.raises(sq.SchemaNotFoundError, match="simplequeue migrate"),
        ):
            sync_queue.insert_jobs([sq.Job("q", n) for n in range(600)], conn=conn)
    finally:
        query(dsn, f"DROP DATABASE {empty} WITH (FORCE)")
    assert count(dsn) == 0


def asyncpg_params(dsn: str) -> dict[str, Any]:
    params = conninfo_to_dict(dsn)
    return {
        "host": params.get("host", "127.0.0.1"),
        "port": int(params.get("port", 5432)),
        "user": params.get("user", "postgres"),
        "password": params.get("password") or None,
        "database": params["dbname"],
    }
