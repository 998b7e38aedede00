"""The reaper: recovers jobs whose worker died, and ends jobs that can never run."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from simplequeue.config import QueueConfig
from simplequeue.job import JobStatus
from simplequeue.store import Store

__all__ = ["ReapReport", "Reaper"]

log = logging.getLogger("simplequeue.reaper")


@dataclass(frozen=True)
class ReapReport:
    recovered: int = 0
    poisoned: int = 0
    exhausted: int = 0


class Reaper:
    """Stalled running jobs → pending (attempt given back, reprocess counted), or bad_job
    once poison; pending jobs with no attempts left → failed."""

    def __init__(self, pool: AsyncConnectionPool[Any], store: Store, config: QueueConfig) -> None:
        self._pool = pool
        self._store = store
        self._config = config

    async def run(self) -> None:
        interval = self._config.reaper_interval or self._config.heartbeat_interval
        while True:
            await self.sweep()
            await asyncio.sleep(interval)

    async def sweep(self) -> ReapReport:
        async with self._pool.connection() as conn:
            reaped = await self._store.reap_stalled(
                conn, self._config.stall_after, self._config.max_reprocess_count
            )
            exhausted = await self._store.fail_exhausted(conn)
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
