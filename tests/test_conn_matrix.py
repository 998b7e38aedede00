"""An insert joins the caller's transaction on every kind of connection `conn=` takes:
{async psycopg, SQLAlchemy async psycopg, SQLAlchemy asyncpg, sync psycopg, SQLAlchemy
sync psycopg, SQLAlchemy psycopg2, Django} x {1, 100, 1,000 jobs} x {commit: exactly
those jobs run once, woken by a NOTIFY at the commit; rollback: no row and no wake-up;
a live unique key: None}."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import simplequeue as sq
from simplequeue.config import notify_channel
from tests.conftest import FAST, count, sqlalchemy_url

T = TypeVar("T")

PRODUCERS = [
    "psycopg-async",
    "sqlalchemy-async-psycopg",
    "sqlalchemy-asyncpg",
    "psycopg-sync",
    "sqlalchemy-sync-psycopg",
    "sqlalchemy-psycopg2",
    "django",
]


class Producer:
    """One open transaction on one kind of connection: insert in it, then end it."""

    def __init__(self, kind: str, dsn: str) -> None:
        self.kind, self.dsn = kind, dsn
        self.sync = not kind.endswith(("async", "async-psycopg", "asyncpg"))
        # A sync connection lives on one thread (Django's are per thread) off the loop.
        self.thread = concurrent.futures.ThreadPoolExecutor(1) if self.sync else None
        self.cleanup: list[Callable[[], Any]] = []

    async def call(self, fn: Callable[[], T]) -> T:
        assert self.thread is not None
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn)

    async def begin(self) -> None:
        kind, dsn = self.kind, self.dsn
        if kind == "psycopg-async":
            self.conn: Any = await psycopg.AsyncConnection.connect(dsn)
            self.cleanup.append(self.conn.close)
        elif kind.startswith("sqlalchemy-async") or kind == "sqlalchemy-asyncpg":
            from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

            driver = "asyncpg" if kind.endswith("asyncpg") else "psycopg"
            engine = create_async_engine(sqlalchemy_url(dsn, driver))
            self.conn = AsyncSession(engine)
            self.cleanup += [self.conn.close, engine.dispose]
        else:
            self.queue = sq.SyncQueue.from_url(dsn)
            await self.call(self.queue.open)
            self.cleanup.append(self.queue.close)
            await self.call(self._begin_sync)

    def _begin_sync(self) -> None:
        if self.kind == "psycopg-sync":
            self.conn = psycopg.connect(self.dsn)
            self.cleanup.append(self.conn.close)
        elif self.kind.startswith("sqlalchemy"):
            from sqlalchemy import create_engine
            from sqlalchemy.orm import Session

            driver = "psycopg2" if self.kind.endswith("psycopg2") else "psycopg"
            engine = create_engine(sqlalchemy_url(self.dsn, driver))
            self.conn = Session(engine)
            self.cleanup += [self.conn.close, engine.dispose]
        else:
            from django.db import connection, transaction

            use_django_database(self.dsn)
            self.atomic = transaction.atomic()
            self.atomic.__enter__()
            self.conn = connection
            self.cleanup.append(connection.close)

    async def insert(self, queue: sq.SimpleQueue, jobs: list[sq.Job]) -> list[Any]:
        if not self.sync:
            return await queue.insert_jobs(jobs, conn=self.conn)
        return await self.call(lambda: self.queue.insert_jobs(jobs, conn=self.conn))

    async def end(self, commit: bool) -> None:
        if self.kind == "psycopg-async" or not self.sync:
            await (self.conn.commit() if commit else self.conn.rollback())
        elif self.kind == "django":
            await self.call(lambda: self._end_django(commit))
        else:
            await self.call(self.conn.commit if commit else self.conn.rollback)

    def _end_django(self, commit: bool) -> None:
        from django.db import transaction

        if not commit:
            transaction.set_rollback(True)
        self.atomic.__exit__(None, None, None)

    async def close(self) -> None:
        for step in reversed(self.cleanup):
            if self.sync:
                await self.call(step)
            else:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
        if self.thread is not None:
            self.thread.shutdown()


def use_django_database(dsn: str) -> None:
    """Django, configured once per process, pointed at this test's database."""
    import django
    from django.conf import settings
    from django.db import connections

    params = conninfo_to_dict(dsn)
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params["dbname"],
        "USER": params.get("user", "postgres"),
        "PASSWORD": params.get("password") or "",
        "HOST": params.get("host", "127.0.0.1"),
        "PORT": str(params.get("port", 5432)),
    }
    if not settings.configured:
        settings.configure(DATABASES={"default": database}, USE_TZ=True)
        django.setup()
    connection = connections["default"]
    connection.close()
    connection.settings_dict.update(database)


@pytest.fixture
async def producer(request: pytest.FixtureRequest, dsn: str) -> AsyncIterator[Producer]:
    made = Producer(request.param, dsn)
    await made.begin()
    yield made
    await made.close()


def listen(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f'LISTEN "{notify_channel("simplequeue")}"')
    return conn


def notified(listener: psycopg.Connection[Any], wait: float) -> int:
    return len(list(listener.notifies(timeout=wait, stop_after=1)))


@pytest.mark.parametrize("size", [1, 100, 1000])
@pytest.mark.parametrize("producer", PRODUCERS, indirect=True)
async def test_a_commit_runs_exactly_those_jobs_once(
    producer: Producer, dsn: str, size: int
) -> None:
    ran: list[Any] = []

    class Record(sq.Handler):
        QUEUE = "matrix"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            ran.append(job.data)

    with listen(dsn) as listener:
        async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
            queue.register_handler(Record())
            ids = await producer.insert(queue, [sq.Job("matrix", n) for n in range(size)])
            assert None not in ids and count(dsn) == 0, "not visible before the commit"
            assert notified(listener, 0.05) == 0, "no wake-up before the commit"
            await producer.end(commit=True)
            assert notified(listener, 5) == 1, "the commit wakes the workers"
            assert await queue.drain(timeout=60) == {"completed": size}
    assert sorted(ran) == list(range(size))
    assert count(dsn, "status = 'completed' AND id = ANY(%s)", [ids]) == size == count(dsn)


@pytest.mark.parametrize("size", [1, 100, 1000])
@pytest.mark.parametrize("producer", PRODUCERS, indirect=True)
async def test_a_rollback_leaves_no_row_and_no_wake_up(
    producer: Producer, dsn: str, size: int
) -> None:
    with listen(dsn) as listener:
        async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
            ids = await producer.insert(queue, [sq.Job("matrix", n) for n in range(size)])
            assert None not in ids
            await producer.end(commit=False)
        assert notified(listener, 0.3) == 0
    assert count(dsn) == 0


@pytest.mark.parametrize("size", [1, 100, 1000])
@pytest.mark.parametrize("producer", PRODUCERS, indirect=True)
async def test_a_live_unique_key_gives_none(producer: Producer, dsn: str, size: int) -> None:
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        keys = [f"key-{n}" for n in range(size)]
        first = await queue.insert_jobs(
            [sq.Job("matrix", n, unique_key=k) for n, k in enumerate(keys)]
        )
        again = [sq.Job("matrix", n, unique_key=k) for n, k in enumerate(keys)]
        fresh = sq.Job("matrix", "fresh", unique_key="fresh")
        ids = await producer.insert(queue, [*again, fresh])
        await producer.end(commit=True)
    assert None not in first
    assert ids == [None] * size + [fresh.id]
    assert count(dsn) == size + 1 and count(dsn, "unique_key = 'fresh'") == 1
