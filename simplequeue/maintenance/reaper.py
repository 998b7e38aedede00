"""The reaper: recovers jobs whose worker died, and ends jobs that can never run."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from simplequeue.config import QueueConfig
from simplequeue.job import JobStatus
from simplequeue.maintenance.steps import batch_or_each
from simplequeue.runtime.outage import Outage, seconds_since_trouble
from simplequeue.store import AnyConn, Store

__all__ = ["ReapReport", "Reaper"]

log = logging.getLogger("simplequeue.reaper")

MAX_DEFER_FACTOR = 10


@dataclass(frozen=True)
class ReapReport:
    recovered: int = 0
    poisoned: int = 0
    exhausted: int = 0


class Reaper:
    """Stalled running jobs → pending (attempt given back, reprocess counted), or bad_job
    once poison; pending jobs with no attempts left → failed.

    After trouble with the database (any of this process's connections failing) it waits
    until `stall_after` has passed without any: an outage silences every worker's
    heartbeats, not only those of dead workers, and the live ones need that long to beat
    again. Reaping at once would take their jobs away and run them twice. Trouble that
    persists defers reaping by at most `MAX_DEFER_FACTOR` × `stall_after` at a time.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: Store,
        config: QueueConfig,
        own_runs: Callable[[], Collection[tuple[uuid.UUID, int]]] = tuple,
    ) -> None:
        self._pool = pool
        self._store = store
        self._config = config
        self._own_runs = own_runs
        self._outage = Outage(log, "reaper")
        self._deferring_since: float | None = None

    async def run(self) -> None:
        interval = self._config.reaper_interval or self._config.heartbeat_interval
        while True:
            wait = self._defer_for()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                await self.sweep()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                await asyncio.sleep(self._outage.failed(exc))
                continue
            self._outage.recovered()
            await asyncio.sleep(interval)

    def _defer_for(self) -> float:
        """Seconds to wait before the next sweep because of recent database trouble."""
        stall_after = self._config.stall_after
        wait = stall_after - seconds_since_trouble()
        now = time.monotonic()
        if wait <= 0:
            self._deferring_since = None
            return 0.0
        if self._deferring_since is None:
            self._deferring_since = now
            log.info(
                "reaper: database trouble in this process; waiting until heartbeats have "
                "had %.1fs to resume before reaping",
                stall_after,
            )
        if now - self._deferring_since >= MAX_DEFER_FACTOR * stall_after:
            self._deferring_since = now  # trouble that persists must not stop reaping
            return 0.0
        return wait

    async def sweep(self) -> ReapReport:
        stall, max_reprocess = self._config.stall_after, self._config.max_reprocess_count

        async def reap(conn: AnyConn, only: uuid.UUID | None) -> list[tuple[uuid.UUID, str]]:
            return await self._store.reap_stalled(
                conn, stall, max_reprocess, only=only, own=self._own_runs()
            )

        async def fail(conn: AnyConn, only: uuid.UUID | None) -> list[uuid.UUID]:
            return await self._store.fail_exhausted(conn, only=only)

        reaped = await batch_or_each(
            self._pool, log, "reaper: returning stalled jobs", reap,
            lambda conn: self._store.stalled_ids(conn, stall, 1000),
        )  # fmt: skip
        failed = await batch_or_each(
            self._pool, log, "reaper: failing jobs out of attempts", fail,
            lambda conn: self._store.exhausted_ids(conn, 1000),
        )  # fmt: skip
        exhausted = len(failed)
        poisoned = sum(1 for _, status in reaped if status == JobStatus.BAD_JOB)
        report = ReapReport(len(reaped) - poisoned, poisoned, exhausted)
        if reaped or exhausted:
            log.warning(
                "reaper: %d stalled job(s) returned to pending, %d poison job(s) ended as bad_job, "
                "%d job(s) out of attempts ended as failed",
                report.recovered,
                report.poisoned,
                report.exhausted,
            )
        return report
