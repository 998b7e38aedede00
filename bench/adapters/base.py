"""The small interface every benchmarked system implements.

The harness (bench/run.py) only talks to this interface, so every workload runs the
same way for every system: only the calls into the library differ.
"""

from __future__ import annotations

import abc
import asyncio
import mmap
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg

Payload = dict[str, Any]


class Control:
    """A few doubles in a shared file mapping: the parent and one worker process talk here.

    Plain subprocesses (not multiprocessing) keep the harness's own imports out of the
    worker's RSS; one writer per slot, 8-byte aligned, so no locking is needed.
    """

    SIZE = 64
    HANDLED, FIRST_START, READY, STOP = range(4)

    def __init__(self, path: str, create: bool = False) -> None:
        if create:
            with open(path, "wb") as f:
                f.write(b"\0" * self.SIZE)
        self._file = open(path, "r+b")  # noqa: SIM115 - lives as long as the mapping
        self._map = mmap.mmap(self._file.fileno(), self.SIZE)
        self._slots = memoryview(self._map).cast("d")

    def get(self, slot: int) -> float:
        return float(self._slots[slot])

    def set(self, slot: int, value: float) -> None:
        self._slots[slot] = value

    def close(self) -> None:
        self._slots.release()
        self._map.close()
        self._file.close()


class Hooks:
    """What a handler reports to the harness: start and end of every job.

    Lives in the worker process and writes to its Control block, so the parent knows
    when every handler has run without querying the database.
    """

    def __init__(self, control: Control, record_starts: bool) -> None:
        self._control = control
        self._record = record_starts
        self._first_seen = False
        self._handled = 0
        self.starts: list[tuple[int, float]] = []

    def start(self, data: Mapping[str, Any]) -> None:
        """Called first thing in the handler: the first one marks the first claim."""
        now = time.time()
        if not self._first_seen:
            self._first_seen = True
            self._control.set(Control.FIRST_START, now)
        if self._record:
            self.starts.append((int(data["i"]), now))

    def done(self) -> None:
        """Called last thing in the handler (before the library records completion)."""
        self._handled += 1
        self._control.set(Control.HANDLED, self._handled)

    def take_starts(self) -> list[tuple[int, float]]:
        """The starts recorded since the last call, handed over (a long run streams them
        out instead of holding millions until it exits)."""
        taken, self.starts = self.starts, []
        return taken


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

    def configure_worker(self, settings: Mapping[str, Any]) -> None:
        """Settings of the library's own for run_worker (a workload that tunes the worker,
        e.g. its maintenance); a system that takes none refuses them rather than run a
        different configuration than asked."""
        if settings:
            raise NotImplementedError(f"{self.name} takes no worker settings: {dict(settings)}")

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


async def scalar(conn: psycopg.AsyncConnection, sql: Any, *params: Any) -> Any:
    """Run a one-value query on an autocommit connection."""
    cur = await conn.execute(sql, params or None)
    row = await cur.fetchone()
    return None if row is None else row[0]
