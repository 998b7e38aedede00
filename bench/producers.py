"""Producer paths: what `insert_job` costs per call on each kind of connection, against the
same INSERT written by hand on the same kind of connection.

Each call is one job in a transaction of its own, committed before the next call, from
one producer. The two sides of a pair run in alternating rounds on the same database, so
drift in the machine's speed hits both alike. The ratio (simplequeue / hand-written) is the
number to read; the absolute microseconds depend on the machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import simplequeue as sq

ROUNDS = 5
QUEUE = "bench"
RAW_INSERT = "INSERT INTO simplequeue.jobs (id, queue, data) VALUES (%s, %s, %s::jsonb)"
RAW_INSERT_SA = (
    "INSERT INTO simplequeue.jobs (id, queue, data) VALUES (:id, :queue, CAST(:data AS jsonb))"
)

__all__ = ["PathResult", "markdown", "producer_paths"]

Call = Callable[[int], Awaitable[None]]


@dataclasses.dataclass
class PathResult:
    label: str
    raw_us: float
    sq_us: float

    @property
    def ratio(self) -> float:
        return self.sq_us / self.raw_us


def _payload(i: int) -> str:
    return json.dumps({"i": i})


def _sa_url(dsn: str, driver: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(dsn).set(drivername=f"postgresql+{driver}").render_as_string(False)


async def _measure(raw: Call, ours: Call, n: int) -> tuple[float, float]:
    """Microseconds per call of each side, alternating rounds of n / ROUNDS calls."""
    spent = [0.0, 0.0]
    per_round = max(n // ROUNDS, 1)
    done = 0
    for _ in range(ROUNDS):
        for side, call in enumerate((raw, ours)):
            t0 = time.perf_counter()
            for i in range(done, done + per_round):
                await call(i)
            spent[side] += time.perf_counter() - t0
        done += per_round
    calls = per_round * ROUNDS
    return spent[0] / calls * 1e6, spent[1] / calls * 1e6


async def _async_psycopg(dsn: str, n: int) -> tuple[float, float]:
    async with (
        AsyncConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool,
        sq.SimpleQueue.from_url(dsn, pool_min_size=1, pool_max_size=1) as queue,
    ):

        async def raw(i: int) -> None:
            async with pool.connection() as conn:
                await conn.execute(RAW_INSERT, [uuid.uuid4(), QUEUE, _payload(i)])

        async def ours(i: int) -> None:
            await queue.insert_job(sq.Job(QUEUE, {"i": i}))

        return await _measure(raw, ours, n)


async def _sync_psycopg(dsn: str, n: int) -> tuple[float, float]:
    with (
        ConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool,
        sq.SyncQueue.from_url(dsn, pool_min_size=1, pool_max_size=1) as queue,
    ):

        async def raw(i: int) -> None:
            with pool.connection() as conn:
                conn.execute(RAW_INSERT, [uuid.uuid4(), QUEUE, _payload(i)])

        async def ours(i: int) -> None:
            queue.insert_job(sq.Job(QUEUE, {"i": i}))

        return await _measure(raw, ours, n)


async def _sqlalchemy_async(dsn: str, n: int, driver: str) -> tuple[float, float]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(_sa_url(dsn, driver), pool_size=1)
    statement = text(RAW_INSERT_SA)
    try:
        async with sq.SimpleQueue.from_url(dsn, pool_min_size=1, pool_max_size=1) as queue:

            async def raw(i: int) -> None:
                async with AsyncSession(engine) as session:
                    row = {"id": uuid.uuid4(), "queue": QUEUE, "data": _payload(i)}
                    await session.execute(statement, row)
                    await session.commit()

            async def ours(i: int) -> None:
                async with AsyncSession(engine) as session:
                    await queue.insert_job(sq.Job(QUEUE, {"i": i}), conn=session)
                    await session.commit()

            return await _measure(raw, ours, n)
    finally:
        await engine.dispose()


async def _sqlalchemy_sync(dsn: str, n: int, driver: str) -> tuple[float, float]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    engine = create_engine(_sa_url(dsn, driver), pool_size=1)
    statement = text(RAW_INSERT_SA)
    try:
        with sq.SyncQueue.from_url(dsn, pool_min_size=1, pool_max_size=1) as queue:

            async def raw(i: int) -> None:
                with Session(engine) as session:
                    row = {"id": str(uuid.uuid4()), "queue": QUEUE, "data": _payload(i)}
                    session.execute(statement, row)
                    session.commit()

            async def ours(i: int) -> None:
                with Session(engine) as session:
                    queue.insert_job(sq.Job(QUEUE, {"i": i}), conn=session)
                    session.commit()

            return await _measure(raw, ours, n)
    finally:
        engine.dispose()


PATHS: tuple[tuple[str, Callable[[str, int], Awaitable[tuple[float, float]]]], ...] = (
    ("async psycopg: SimpleQueue.insert_job", _async_psycopg),
    ("sync psycopg: SyncQueue.insert_job", _sync_psycopg),
    (
        "SQLAlchemy AsyncSession (psycopg), conn=session",
        lambda d, n: _sqlalchemy_async(d, n, "psycopg"),
    ),
    (
        "SQLAlchemy AsyncSession (asyncpg), conn=session",
        lambda d, n: _sqlalchemy_async(d, n, "asyncpg"),
    ),
    ("SQLAlchemy Session (psycopg), conn=session", lambda d, n: _sqlalchemy_sync(d, n, "psycopg")),
    (
        "SQLAlchemy Session (psycopg2), conn=session",
        lambda d, n: _sqlalchemy_sync(d, n, "psycopg2"),
    ),
)


async def producer_paths(dsn: str, n: int) -> list[PathResult]:
    """Every path on the database `dsn` (migrated here); checks every job landed."""
    await sq.setup(dsn)
    results: list[PathResult] = []
    for label, measure in PATHS:
        raw_us, sq_us = await measure(dsn, n)
        results.append(PathResult(label, raw_us, sq_us))
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM simplequeue.jobs")
        row = await cur.fetchone()
    expected = 2 * (max(n // ROUNDS, 1) * ROUNDS) * len(PATHS)
    if row is None or row[0] != expected:
        raise RuntimeError(f"producer paths: {row} jobs in the table, expected {expected}")
    return results


def markdown(results: list[PathResult]) -> str:
    out = [
        "### Producer paths (one job per committed transaction, 1 producer)",
        "",
        "| path | hand-written INSERT | insert_job | ratio |",
        "|---|---:|---:|---:|",
    ]
    out += [
        f"| {r.label} | {r.raw_us:,.0f} µs | {r.sq_us:,.0f} µs | {r.ratio:.2f}x |" for r in results
    ]
    return "\n".join(out)


def main() -> None:  # pragma: no cover - run through bench/run.py
    import sys

    print(markdown(asyncio.run(producer_paths(sys.argv[1], int(sys.argv[2])))))


if __name__ == "__main__":
    main()
