"""Worker: the background machinery one `SimpleQueue.start()` runs in this process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.config import QueueConfig
from simplequeue.connections import borrow, dedicated_settings
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

CANCEL_GRACE = 0.5
"""Seconds a stop waits for a cancelled task (or the heartbeat thread) to end."""

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
        beat_conninfo, beat_settings = dedicated_settings(pool, "heartbeat")
        listen_conninfo, listen_settings = dedicated_settings(pool, "listener")

        def connect_sync() -> psycopg.Connection[Any]:
            return psycopg.Connection.connect(beat_conninfo, **beat_settings)

        async def connect_async() -> psycopg.AsyncConnection[Any]:
            return await psycopg.AsyncConnection.connect(listen_conninfo, **listen_settings)

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
            async with borrow(pool) as conn:
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
        self.reaper = Reaper(pool, store, config, self.heartbeats.runs)
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
        (their jobs go back to pending, attempt given back) and flush every result.

        Returns within `timeout` + SHUTDOWN_WRITE_GRACE + CANCEL_GRACE × 4 whatever the
        network does: a statement still waiting for the database at its deadline (a
        silent partition) is cancelled, and a result not written by then is left to the
        reaper, as after a crash.
        """
        deadline = time.monotonic() + timeout
        last_write = deadline + SHUTDOWN_WRITE_GRACE
        self.poller.stop_claiming()
        await _finish([self._poller_task], deadline)
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
                await _finish(unfinished, time.monotonic())
        self.results.close(max(last_write, time.monotonic() + CANCEL_GRACE))
        await _finish([self._results_task], last_write)
        await _finish(self._services, time.monotonic())
        await self.heartbeats.stop_async(CANCEL_GRACE)
        self.executor.shutdown()


async def _finish(tasks: Iterable[asyncio.Task[None] | None], until: float) -> None:
    """Wait for `tasks` until `until` (monotonic), then cancel what still runs, twice if
    need be: cancelled in the middle of a statement, psycopg first tries to cancel it on
    the server, which a silent network makes hang too; a second cancel drops the
    connection instead."""
    pending = {task for task in tasks if task is not None and not task.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=max(until - time.monotonic(), 0))
    for _ in range(2):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_GRACE)
    for task in pending:
        log.error("stopping: %s did not end when cancelled; left behind", task.get_name())


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
