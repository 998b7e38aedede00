"""Worker: the background machinery one `SimpleQueue.start()` runs in this process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.config import QueueConfig
from simplequeue.errors import QueueStateError
from simplequeue.job import Job
from simplequeue.maintenance import JANITOR_HINT, load_janitor
from simplequeue.maintenance.reaper import Reaper
from simplequeue.registry import QueueRegistry
from simplequeue.runtime.executor import Executor
from simplequeue.runtime.heartbeat import Heartbeater
from simplequeue.runtime.listener import Listener
from simplequeue.runtime.poller import Poller
from simplequeue.runtime.results import ResultWriter
from simplequeue.store import Store

if TYPE_CHECKING:
    from simplequeue.maintenance.janitor import Janitor
    from simplequeue.queue import SimpleQueue

__all__ = ["Worker"]

log = logging.getLogger("simplequeue.worker")

SHUTDOWN_WRITE_GRACE = 5.0
"""Seconds past the stop timeout allowed to write back the jobs that were interrupted."""

_janitor_hint_given = False


class Worker:
    def __init__(
        self,
        queue: SimpleQueue,
        pool: AsyncConnectionPool[Any],
        store: Store,
        registry: QueueRegistry,
        config: QueueConfig,
    ) -> None:
        self._config = config
        conninfo, kwargs = _dedicated_settings(pool)

        def connect_sync() -> psycopg.Connection[Any]:
            return psycopg.Connection.connect(conninfo, **kwargs)

        async def connect_async() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(conninfo, **kwargs)

        self.heartbeats = Heartbeater(connect_sync, store, config.heartbeat_interval)
        self.results = ResultWriter(
            pool,
            store,
            batch_size=config.result_batch_size,
            flush_interval=config.result_flush_interval,
            # Finished jobs still hold their permits while they wait here: bounding the
            # buffer keeps claims from outrunning the writes.
            max_buffered=config.global_permits,
            heartbeats=self.heartbeats,
        )

        async def still_ours(job: Job) -> bool:
            async with pool.connection() as conn:
                return await store.still_running(conn, job.id, job.lease)

        self.executor = Executor(
            queue,
            registry,
            self.heartbeats,
            self.results,
            still_ours,
            max_reprocess=config.max_reprocess_count,
            threads=config.global_permits,
        )
        self.poller = Poller(pool, store, registry, self.executor, config)
        self.listener = (
            Listener(connect_async, store, self.poller.wake) if config.use_notify else None
        )
        self.reaper = Reaper(pool, store, config)
        janitor_class = load_janitor()
        self.janitor: Janitor | None = janitor_class(pool, store, config) if janitor_class else None
        self._poller_task: asyncio.Task[None] | None = None
        self._results_task: asyncio.Task[None] | None = None
        self._services: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        global _janitor_hint_given
        self.heartbeats.start()
        self._results_task = asyncio.create_task(self.results.run(), name="simplequeue-results")
        self._poller_task = asyncio.create_task(_supervised("poller", self.poller.run))
        if self.listener is not None:
            self._services.append(asyncio.create_task(_supervised("listener", self.listener.run)))
        self._services.append(asyncio.create_task(_supervised("reaper", self.reaper.run)))
        if self.janitor is not None:
            self._services.append(asyncio.create_task(_supervised("janitor", self.janitor.run)))
        elif not _janitor_hint_given:
            _janitor_hint_given = True
            log.warning(JANITOR_HINT)

    def interrupt(self) -> None:
        """Cancel every running job now (a second SIGTERM); their jobs go back to pending."""
        for task in list(self.poller.tasks):
            task.cancel()

    async def stop(self, timeout: float) -> None:
        """Stop claiming, let running jobs finish within `timeout`, then interrupt the rest
        (their jobs go back to pending, attempt given back) and flush every result."""
        deadline = time.monotonic() + timeout
        self.poller.stop_claiming()
        self.executor.stop_waiting_for_threads()
        if self._poller_task is not None:
            await self._poller_task
        running = set(self.poller.tasks)
        if running:
            log.info("stopping: waiting up to %.1fs for %d running job(s)", timeout, len(running))
            _, unfinished = await asyncio.wait(running, timeout=max(deadline - time.monotonic(), 0))
            if unfinished:
                log.warning(
                    "stopping: interrupting %d job(s) still running after %.1fs",
                    len(unfinished),
                    timeout,
                )
                for task in unfinished:
                    task.cancel()
                await asyncio.gather(*unfinished, return_exceptions=True)
        self.results.close(max(deadline, time.monotonic()) + SHUTDOWN_WRITE_GRACE)
        if self._results_task is not None:
            await self._results_task
        for task in self._services:
            task.cancel()
        await asyncio.gather(*self._services, return_exceptions=True)
        await asyncio.to_thread(self.heartbeats.stop)
        self.executor.shutdown()


def _dedicated_settings(pool: AsyncConnectionPool[Any]) -> tuple[str, dict[str, Any]]:
    """How to open the listener's and the heartbeat's own connections: like the pool's."""
    conninfo, kwargs = pool.conninfo, pool.kwargs
    if not isinstance(conninfo, str) or not isinstance(kwargs, dict | None):
        raise QueueStateError(
            "workers need a pool built from a conninfo string and a kwargs dict "
            "(callable conninfo/kwargs are not supported)"
        )
    settings = {**(kwargs or {}), "autocommit": True}
    settings.pop("row_factory", None)
    return conninfo, settings


async def _supervised(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Keep a background loop alive: log an unexpected error and start it again."""
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting it in 1s", name)
            await asyncio.sleep(1.0)
