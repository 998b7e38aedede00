"""The small interface every benchmarked system implements.

The harness (bench/run.py) only talks to this interface, so every workload runs the
same way for every system: only the calls into the library differ.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import psycopg

Payload = dict[str, Any]


class Hooks:
    """What a handler reports to the harness: start and end of every job.

    Lives in the worker process; the counters are shared memory the parent reads, so
    the parent knows when every handler has run without touching the database.
    """

    def __init__(self, handled: Any, first_start: Any, record_starts: bool) -> None:
        self._handled = handled
        self._first_start = first_start
        self._record = record_starts
        self.starts: list[tuple[int, float]] = []

    def start(self, data: Mapping[str, Any]) -> None:
        """Called first thing in the handler: the first one marks the first claim."""
        now = time.time()
        if self._first_start.value == 0.0:
            self._first_start.value = now
        if self._record:
            self.starts.append((int(data["i"]), now))

    def done(self) -> None:
        """Called last thing in the handler (before the library records completion)."""
        self._handled.value += 1


class Producer(abc.ABC):
    """Enqueue side of one system, opened on a fresh database."""

    @abc.abstractmethod
    async def enqueue_one(self, payload: Payload) -> None:
        """Insert one job in its own transaction; returns after the commit."""

    @abc.abstractmethod
    async def enqueue_bulk(self, payloads: Sequence[Payload]) -> None:
        """Insert many jobs through the library's batch API."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class Adapter(abc.ABC):
    """One system under test."""

    name: str = ""
    #: Scale workloads (1M-row preloads) need direct SQL into the library's tables.
    supports_scale: bool = False

    @abc.abstractmethod
    async def setup(self, dsn: str) -> None:
        """Install the system's schema into a fresh, empty database."""

    @abc.abstractmethod
    async def open_producer(self, dsn: str, connections: int) -> Producer:
        """A producer whose enqueue_one may be awaited by `connections` tasks at once."""

    @abc.abstractmethod
    async def run_worker(
        self,
        dsn: str,
        concurrency: int,
        hooks: Hooks,
        stop: asyncio.Event,
        ready: Callable[[], None],
    ) -> None:
        """Run the library's worker with `concurrency` until `stop`, then stop gracefully.

        Runs in a worker subprocess; every handler calls hooks.start(payload) first and
        hooks.done() last. `ready()` is called once the worker is started.
        """

    @abc.abstractmethod
    async def count_done(self, conn: psycopg.AsyncConnection) -> int:
        """Jobs the database records as successfully completed."""

    @abc.abstractmethod
    async def count_queued(self, conn: psycopg.AsyncConnection) -> int:
        """Jobs still waiting (not yet completed) in the database."""

    async def last_done_epoch(self, conn: psycopg.AsyncConnection) -> float | None:
        """Wall-clock time (epoch s) of the last recorded completion, if the system keeps one."""
        return None

    async def preload(self, dsn: str, n: int, chunk: int) -> None:
        """Put n pending no-op jobs in the queue, through the batch API."""
        producer = await self.open_producer(dsn, 1)
        try:
            for lo in range(0, n, chunk):
                await producer.enqueue_bulk([{"i": i} for i in range(lo, min(n, lo + chunk))])
        finally:
            await producer.aclose()

    async def preload_sql(self, conn: psycopg.AsyncConnection, pending: int, finished: int) -> None:
        """Insert rows straight into the tables (scale workloads only)."""
        raise NotImplementedError(f"{self.name} has no fast SQL preload")


async def wait_for_stop(stop: asyncio.Event) -> None:
    """Small helper for adapters whose worker runs as a task: block until asked to stop."""
    await stop.wait()


async def scalar(conn: psycopg.AsyncConnection, sql: Any, *params: Any) -> Any:
    """Run a one-value query on an autocommit connection."""
    cur = await conn.execute(sql, params or None)
    row = await cur.fetchone()
    return None if row is None else row[0]


AsyncFn = Callable[[], Awaitable[None]]
