"""The bare-SQL floor: one table, one partial index, psycopg 3 async and nothing else.

It is the practical ceiling for any PostgreSQL queue with the same guarantees (durable
commit per batch, SKIP LOCKED claims): it claims up to 100 jobs per statement and marks
a batch done in one statement. A statement-level NOTIFY trigger wakes idle workers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from .base import Adapter, Hooks, Payload, Producer, scalar

QUEUE = "bench"
CLAIM_MAX = 100

SCHEMA = """
CREATE TABLE jobs (
    id          bigserial   PRIMARY KEY,
    queue       text        NOT NULL,
    data        jsonb       NOT NULL,
    status      text        NOT NULL DEFAULT 'pending',
    attempt     integer     NOT NULL DEFAULT 0,
    run_at      timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX jobs_pending ON jobs (queue, run_at, id) WHERE status = 'pending';
CREATE FUNCTION jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs', '');
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify();
"""

CLAIM = """
UPDATE jobs AS j SET status = 'running', attempt = j.attempt + 1
FROM (
    SELECT id FROM jobs
    WHERE queue = %s AND status = 'pending' AND run_at <= now()
    ORDER BY run_at, id
    LIMIT %s
    FOR UPDATE SKIP LOCKED
) AS c
WHERE j.id = c.id
RETURNING j.id, j.data
"""

MARK_DONE = "UPDATE jobs SET status = 'done', finished_at = clock_timestamp() WHERE id = ANY(%s)"


async def _first_of(
    event: asyncio.Event, stopper: asyncio.Task[Any], timeout: float | None
) -> None:
    """Wait for `event`, the stop request, or the timeout, whichever comes first."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


class BareProducer(Producer):
    """Plain INSERTs on a small pool; COPY for bulk."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def enqueue_one(self, payload: Payload) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO jobs (queue, data) VALUES (%s, %s)", (QUEUE, Jsonb(payload))
            )

    async def enqueue_bulk(self, payloads: Sequence[Payload]) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            async with cur.copy("COPY jobs (queue, data) FROM STDIN") as copy:
                for p in payloads:
                    await copy.write_row((QUEUE, Jsonb(p)))

    async def aclose(self) -> None:
        await self.pool.close()


class BareAdapter(Adapter):
    """Floor implementation of the adapter interface."""

    name = "bare"
    supports_scale = True

    async def setup(self, dsn: str) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(SCHEMA)

    async def open_producer(self, dsn: str, connections: int) -> Producer:
        pool = AsyncConnectionPool(
            dsn, min_size=connections, max_size=connections, kwargs={"autocommit": True}, open=False
        )
        await pool.open(wait=True)
        return BareProducer(pool)

    async def run_worker(
        self,
        dsn: str,
        concurrency: int,
        hooks: Hooks,
        stop: asyncio.Event,
        ready: Callable[[], None],
    ) -> None:
        wake = asyncio.Event()
        capacity = asyncio.Event()
        inflight = 0
        batches: set[asyncio.Task[None]] = set()

        async def handler(data: dict[str, Any]) -> None:
            hooks.start(data)
            hooks.done()

        async def run_batch(rows: list[tuple[int, dict[str, Any]]]) -> None:
            nonlocal inflight
            await asyncio.gather(*(handler(data) for _, data in rows))
            async with pool.connection() as conn:
                await conn.execute(MARK_DONE, ([job_id for job_id, _ in rows],))
            inflight -= len(rows)
            capacity.set()

        async def listen(conn: psycopg.AsyncConnection) -> None:
            async for _ in conn.notifies():
                wake.set()

        pool = AsyncConnectionPool(
            dsn, min_size=2, max_size=4, kwargs={"autocommit": True}, open=False
        )
        await pool.open(wait=True)
        listen_conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        await listen_conn.execute("LISTEN jobs")
        listener = asyncio.create_task(listen(listen_conn))
        stopper = asyncio.create_task(stop.wait())
        ready()
        try:
            while not stop.is_set():
                free = concurrency - inflight
                if free <= 0:
                    capacity.clear()
                    await _first_of(capacity, stopper, None)
                    continue
                wake.clear()
                async with pool.connection() as conn:
                    cur = await conn.execute(CLAIM, (QUEUE, min(CLAIM_MAX, free)))
                    rows = await cur.fetchall()
                if rows:
                    inflight += len(rows)
                    task = asyncio.create_task(run_batch(rows))
                    batches.add(task)
                    task.add_done_callback(batches.discard)
                    continue
                await _first_of(wake, stopper, 1.0)
            if batches:
                await asyncio.gather(*batches)
        finally:
            stopper.cancel()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await listener
            await listen_conn.close()
            await pool.close()

    async def count_done(self, conn: psycopg.AsyncConnection) -> int:
        return int(await scalar(conn, "SELECT count(*) FROM jobs WHERE status = 'done'"))

    async def count_queued(self, conn: psycopg.AsyncConnection) -> int:
        return int(
            await scalar(conn, "SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')")
        )

    async def last_done_epoch(self, conn: psycopg.AsyncConnection) -> float | None:
        value = await scalar(conn, "SELECT extract(epoch FROM max(finished_at))::float8 FROM jobs")
        return None if value is None else float(value)

    async def preload_sql(self, conn: psycopg.AsyncConnection, pending: int, finished: int) -> None:
        if finished:
            await conn.execute(
                "INSERT INTO jobs (queue, data, status, attempt, finished_at)"
                " SELECT %s, jsonb_build_object('i', g), 'done', 1, now() - interval '1 day'"
                " FROM generate_series(1, %s) AS g",
                (QUEUE, finished),
            )
        if pending:
            await conn.execute(
                "INSERT INTO jobs (queue, data) SELECT %s, jsonb_build_object('i', g)"
                " FROM generate_series(1, %s) AS g",
                (QUEUE, pending),
            )
