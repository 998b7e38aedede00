"""pgqueuer (pinned in bench/requirements.txt) through its documented public API.

Parametrised by driver: `psycopg` (PsycopgDriver on an autocommit AsyncConnection) or
`asyncpg` (AsyncpgDriver for the worker, AsyncpgPoolDriver for producers, as its
performance guide recommends). Install with `Queries.install()` plus the recommended
`optimize_autovacuum()` (`pgq autovac`); enqueue with `Queries.enqueue` (scalar for one,
lists for a batch); consume with `PgQueuer.run(batch_size=..., max_concurrent_tasks=...)`
on a single dedicated connection, stopped through its `shutdown` event.

`preload_sql` writes what `Queries.enqueue` writes (a queued row and its `queued` log
row) straight from `generate_series`, for the burn-down's million-job backlog. The
scale workloads stay simplequeue's and the floor's (`supports_scale`), for the budget.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import psycopg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver, AsyncpgPoolDriver, PsycopgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from .base import Adapter, Hooks, Payload, Producer, scalar

ENTRYPOINT = "bench"
#: The performance guide's example pairs max_concurrent_tasks=100 with batch_size=20,
#: and requires max_concurrent_tasks >= 2 * batch_size.
MAX_BATCH = 20


def batch_size_for(concurrency: int) -> int:
    """Largest batch the docs' rule allows, capped at the docs' example."""
    return max(1, min(MAX_BATCH, concurrency // 2))


def _encode(payload: Payload) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class PgqProducer(Producer):
    """Round-robins `Queries` objects; each owns a connection (or shares the pool)."""

    def __init__(self, queries: list[Queries], closers: list[Callable[[], Any]]) -> None:
        self._free: asyncio.Queue[Queries] = asyncio.Queue()
        for q in queries:
            self._free.put_nowait(q)
        self._any = queries[0]
        self._closers = closers

    async def enqueue_one(self, payload: Payload) -> None:
        q = await self._free.get()
        try:
            await q.enqueue(ENTRYPOINT, _encode(payload))
        finally:
            self._free.put_nowait(q)

    async def enqueue_bulk(self, payloads: Sequence[Payload]) -> None:
        n = len(payloads)
        await self._any.enqueue([ENTRYPOINT] * n, [_encode(p) for p in payloads], [0] * n)

    async def aclose(self) -> None:
        for close in self._closers:
            await close()


class PgqueuerAdapter(Adapter):
    """pgqueuer on one of its two async drivers."""

    def __init__(self, driver: str) -> None:
        if driver not in ("psycopg", "asyncpg"):
            raise ValueError(driver)
        self.driver = driver
        self.name = f"pgqueuer-{driver}"

    async def setup(self, dsn: str) -> None:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            queries = Queries(PsycopgDriver(conn))
            await queries.install()
            await queries.optimize_autovacuum()
        finally:
            await conn.close()

    async def open_producer(self, dsn: str, connections: int) -> Producer:
        if self.driver == "asyncpg":
            pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections)
            assert pool is not None
            return PgqProducer([Queries(AsyncpgPoolDriver(pool))] * connections, [pool.close])
        conns = [
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(connections)
        ]
        return PgqProducer([Queries(PsycopgDriver(c)) for c in conns], [c.close for c in conns])

    async def run_worker(
        self,
        dsn: str,
        concurrency: int,
        hooks: Hooks,
        stop: asyncio.Event,
        ready: Callable[[], None],
    ) -> None:
        conn: Any
        if self.driver == "asyncpg":
            conn = await asyncpg.connect(dsn)
            pgq = PgQueuer(AsyncpgDriver(conn))
        else:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            pgq = PgQueuer(PsycopgDriver(conn))

        @pgq.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            hooks.start(json.loads(job.payload or b"{}"))
            hooks.done()

        runner = asyncio.create_task(
            pgq.run(batch_size=batch_size_for(concurrency), max_concurrent_tasks=concurrency)
        )
        ready()
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if runner.done():
                runner.result()  # died on its own: surface why
                return
            pgq.shutdown.set()
            await runner
        finally:
            stopper.cancel()
            if not _is_closed(conn):
                await conn.close()

    async def count_done(self, conn: psycopg.AsyncConnection) -> int:
        return int(
            await scalar(conn, "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")
        )

    async def count_queued(self, conn: psycopg.AsyncConnection) -> int:
        return int(await scalar(conn, "SELECT count(*) FROM pgqueuer"))

    async def last_done_epoch(self, conn: psycopg.AsyncConnection) -> float | None:
        value = await scalar(
            conn,
            "SELECT extract(epoch FROM max(created))::float8 FROM pgqueuer_log"
            " WHERE status = 'successful'",
        )
        return None if value is None else float(value)

    async def preload_sql(self, conn: psycopg.AsyncConnection, pending: int, finished: int) -> None:
        if finished:
            raise NotImplementedError("pgqueuer keeps no finished rows in its queue table")
        await conn.execute(
            "WITH queued AS ("
            " INSERT INTO pgqueuer (priority, entrypoint, payload, execute_after, headers, status)"
            " SELECT 0, %s, convert_to(jsonb_build_object('i', g)::text, 'UTF8'), now(),"
            " 'null'::jsonb, 'queued' FROM generate_series(0, %s - 1) AS g"
            " RETURNING id, entrypoint, priority)"
            " INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)"
            " SELECT id, 'queued', entrypoint, priority FROM queued",
            (ENTRYPOINT, pending),
        )


def _is_closed(conn: Any) -> bool:
    """Both drivers' connections expose closedness, under different names."""
    if isinstance(conn, psycopg.AsyncConnection):
        return conn.closed
    return bool(conn.is_closed())
