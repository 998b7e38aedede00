"""simplequeue through its public API only (the contract in bench/README.md).

`sq.setup` installs the schema; `SimpleQueue.from_url(...)` owns its pool;
`insert_job` / `insert_jobs` enqueue; `start()` / `stop(timeout=...)` run the worker
with `global_permits` = `queue_permits` = the workload's concurrency, plus the settings a
workload passes (`configure_worker`: the churn's janitor settings).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg

from .base import Adapter, Hooks, Payload, Producer, scalar

QUEUE = "bench"
SCHEMA = "simplequeue"


def _sq() -> Any:
    """Import lazily: the package may not exist yet while the peers are benchmarked."""
    import simplequeue

    return simplequeue


def _handler(hooks: Hooks | None) -> Any:
    """A no-op Handler subclass that reports to the harness."""
    sq = _sq()

    class Noop(sq.Handler):  # type: ignore[misc, name-defined]
        QUEUE = "bench"

        async def process(self, queue: Any, job: Any) -> None:
            if hooks is not None:
                hooks.start(job.data)
                hooks.done()
            return None

    return Noop()


class SqProducer(Producer):
    """insert_job for one, insert_jobs for many, on a queue opened without workers."""

    def __init__(self, queue: Any, stack: contextlib.AsyncExitStack) -> None:
        self.queue = queue
        self.stack = stack
        self.job = _sq().Job

    async def enqueue_one(self, payload: Payload) -> None:
        await self.queue.insert_job(self.job(QUEUE, payload))

    async def enqueue_bulk(self, payloads: Sequence[Payload]) -> None:
        await self.queue.insert_jobs([self.job(QUEUE, p) for p in payloads])

    async def aclose(self) -> None:
        await self.stack.aclose()


class SimplequeueAdapter(Adapter):
    """The system the benchmark is for."""

    name = "sq"
    supports_scale = True

    def __init__(self) -> None:
        self._worker_settings: dict[str, Any] = {}

    def configure_worker(self, settings: Mapping[str, Any]) -> None:
        """QueueConfig settings for the worker's SimpleQueue (janitor_interval, ...)."""
        self._worker_settings = dict(settings)

    async def setup(self, dsn: str) -> None:
        await _sq().setup(dsn, schema=SCHEMA)

    async def open_producer(self, dsn: str, connections: int) -> Producer:
        sq = _sq()
        queue = sq.SimpleQueue.from_url(
            dsn,
            global_permits=100,
            queue_permits=100,
            pool_min_size=connections,
            pool_max_size=connections,
        )
        queue.register_handler(_handler(None))
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(queue)
        return SqProducer(queue, stack)

    async def run_worker(
        self,
        dsn: str,
        concurrency: int,
        hooks: Hooks,
        stop: asyncio.Event,
        ready: Callable[[], None],
    ) -> None:
        sq = _sq()
        settings = {"global_permits": concurrency, "queue_permits": concurrency}
        queue = sq.SimpleQueue.from_url(dsn, **settings | self._worker_settings)
        queue.register_handler(_handler(hooks))
        async with queue:
            await queue.start()
            ready()
            await stop.wait()
            await queue.stop(timeout=30)

    async def _tables(self, conn: psycopg.AsyncConnection) -> list[str]:
        """The live table, plus the archive if the janitor moved completed rows there."""
        tables = [f"{SCHEMA}.jobs"]
        if await scalar(conn, "SELECT to_regclass(%s) IS NOT NULL", f"{SCHEMA}.archive"):
            tables.append(f"{SCHEMA}.archive")
        return tables

    async def count_done(self, conn: psycopg.AsyncConnection) -> int:
        total = 0
        for table in await self._tables(conn):
            total += int(
                await scalar(conn, f"SELECT count(*) FROM {table} WHERE status = 'completed'")
            )
        return total

    async def count_queued(self, conn: psycopg.AsyncConnection) -> int:
        return int(
            await scalar(
                conn, f"SELECT count(*) FROM {SCHEMA}.jobs WHERE status IN ('pending', 'running')"
            )
        )

    async def last_done_epoch(self, conn: psycopg.AsyncConnection) -> float | None:
        best: float | None = None
        for table in await self._tables(conn):
            value = await scalar(
                conn,
                f"SELECT extract(epoch FROM max(completed_at))::float8 FROM {table}"
                " WHERE status = 'completed'",
            )
            if value is not None:
                best = float(value) if best is None else max(best, float(value))
        return best

    async def preload_sql(self, conn: psycopg.AsyncConnection, pending: int, finished: int) -> None:
        # Client-side UUIDv7 ids, rebuilt in SQL: 48-bit ms timestamp over a v4, then the
        # version nibble set to 7. Timestamps increase by row so ids stay append-ordered.
        uuid7 = (
            "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing"
            " substring(int8send(%s::bigint + g) from 3) from 1 for 6), 52, 1), 53, 1),"
            " 'hex')::uuid"
        )
        base_ms = int(
            await scalar(conn, "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
        )
        if finished:
            await conn.execute(
                f"INSERT INTO {SCHEMA}.jobs (id, queue, data, status, attempt, run_at, created_at,"
                " updated_at, completed_at)"
                f" SELECT {uuid7}, %s, jsonb_build_object('i', g), 'completed', 1,"
                " now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',"
                " now() - interval '1 day' FROM generate_series(1, %s) AS g",
                (base_ms - 86_400_000 - finished, QUEUE, finished),
            )
        if pending:
            await conn.execute(
                f"INSERT INTO {SCHEMA}.jobs (id, queue, data)"
                f" SELECT {uuid7}, %s, jsonb_build_object('i', g)"
                " FROM generate_series(1, %s) AS g",
                (base_ms - pending, QUEUE, pending),
            )
