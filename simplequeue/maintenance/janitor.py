"""The janitor: moves finished jobs out of the live table, in bounded batches.

Completed jobs go to the archive (deleted after `archive_retention`); dead ones (failed,
cancelled, critical_failure, unprocessable, bad_job) go to the DLQ. Keeping the live table
small keeps its indexes and vacuum cheap. Sweeps run every `janitor_interval`, or on the
cron expression `janitor_schedule`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from croniter import croniter
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from simplequeue.config import QueueConfig
from simplequeue.runtime.outage import Outage
from simplequeue.store import Store

__all__ = ["Janitor", "JanitorReport"]

log = logging.getLogger("simplequeue.janitor")

MAX_BATCHES_PER_SWEEP = 100
"""Bounds one sweep's work; what is left waits for the next sweep."""


@dataclass(frozen=True)
class JanitorReport:
    archived: int = 0
    dead_lettered: int = 0
    purged: int = 0


class Janitor:
    def __init__(self, pool: AsyncConnectionPool[Any], store: Store, config: QueueConfig) -> None:
        self._pool = pool
        self._store = store
        self._config = config
        self._outage = Outage(log, "janitor")

    def seconds_until_next(self, now: datetime | None = None) -> float:
        if self._config.janitor_schedule is None:
            return self._config.janitor_interval
        now = now or datetime.now(UTC)
        following: datetime = croniter(self._config.janitor_schedule, now).get_next(datetime)
        return max((following - now).total_seconds(), 0.0)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.seconds_until_next())
            try:
                await self.sweep()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                self._outage.failed(exc)  # logged once; the next sweep is the retry
                continue
            self._outage.recovered()

    async def sweep(self) -> JanitorReport:
        batch = self._config.janitor_batch_size
        archived = await self._repeat(self._store.archive_completed, batch)
        dead = await self._repeat(self._store.move_dead, batch)
        purged = await self._repeat(
            lambda conn, n: self._store.purge_archive(conn, self._config.archive_retention, n),
            batch,
        )
        report = JanitorReport(archived, dead, purged)
        if archived or dead or purged:
            log.info(
                "janitor: %d archived, %d moved to the DLQ, %d purged from the archive",
                archived,
                dead,
                purged,
            )
        return report

    async def _repeat(self, step: Any, batch: int) -> int:
        total = 0
        for _ in range(MAX_BATCHES_PER_SWEEP):
            async with self._pool.connection() as conn:
                moved: int = await step(conn, batch)
            total += moved
            if moved < batch:
                break
        return total
