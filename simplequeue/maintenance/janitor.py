"""The janitor: moves finished jobs out of the live table, in bounded batches.

Completed jobs go to the archive (deleted after `archive_retention`); dead ones (failed,
cancelled, critical_failure, unprocessable, bad_job) go to the DLQ. Keeping the live table
small keeps its indexes and vacuum cheap. Sweeps run every `janitor_interval`, or on the
cron expression `janitor_schedule`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from croniter import croniter
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from simplequeue.config import QueueConfig
from simplequeue.connections import borrow
from simplequeue.maintenance.steps import batch_or_each
from simplequeue.runtime.outage import Outage
from simplequeue.store import AnyConn, Store

__all__ = ["Janitor", "JanitorReport"]

log = logging.getLogger("simplequeue.janitor")

MAX_BATCHES_PER_SWEEP = 100
"""Bounds one sweep's work; what is left waits for the next sweep."""


@dataclass(frozen=True)
class JanitorReport:
    archived: int = 0
    dead_lettered: int = 0
    purged: int = 0
    stuck: int = 0
    """Finished jobs left in the jobs table: the archive or the DLQ holds their id already."""
    failed_steps: tuple[str, ...] = ()
    """Steps the database refused this sweep (logged); the others ran all the same."""


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
        """Archive, dead-letter and purge, each step on its own: one the database refuses
        is logged and the others still run, and a move refused for one row (a trigger of
        the user's) is made job by job for the others. A lost database ends the sweep
        (OperationalError): the next one is the retry."""
        batch = self._config.janitor_batch_size
        retention = self._config.archive_retention
        store = self._store

        async def moved(
            what: str,
            move: Callable[[AnyConn, int, uuid.UUID | None], Awaitable[list[uuid.UUID]]],
            candidates: Callable[[AnyConn, int], Awaitable[list[uuid.UUID]]],
        ) -> int:
            changed = await batch_or_each(
                self._pool,
                log,
                f"janitor: {what}",
                lambda conn, only: move(conn, batch, only),
                lambda conn: candidates(conn, batch),
            )
            return len(changed)

        steps: dict[str, Callable[[], Awaitable[int]]] = {
            "archive": lambda: moved("archiving", store.archive_completed, store.completed_ids),
            "dead-letter": lambda: moved("dead-lettering", store.move_dead, store.dead_ids),
            "purge": lambda: self._in_own_transaction(
                lambda conn: store.purge_archive(conn, retention, batch)
            ),
        }
        counts: dict[str, int] = {}
        failed: list[str] = []
        for name, step in steps.items():
            try:
                counts[name] = await self._repeat(step)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                failed.append(name)
                log.error("janitor: the %s step failed, skipped this sweep: %s", name, exc)
        stuck = await self._in_own_transaction(store.stuck_finished)
        report = JanitorReport(
            counts.get("archive", 0),
            counts.get("dead-letter", 0),
            counts.get("purge", 0),
            stuck,
            tuple(failed),
        )
        if report.archived or report.dead_lettered or report.purged:
            log.info(
                "janitor: %d archived, %d moved to the DLQ, %d purged from the archive",
                report.archived,
                report.dead_lettered,
                report.purged,
            )
        if report.stuck:
            log.warning(
                "janitor: %d finished job(s) stay in the jobs table because the archive or "
                "the DLQ already holds a row with the same id (written there by hand?); "
                "delete one of the two rows",
                report.stuck,
            )
        return report

    async def _repeat(self, step: Callable[[], Awaitable[int]]) -> int:
        """Run a step in batches, each in its own transaction, until one moves fewer rows
        than a batch holds."""
        batch = self._config.janitor_batch_size
        total = 0
        for _ in range(MAX_BATCHES_PER_SWEEP):
            moved = await step()
            total += moved
            if moved < batch:
                break
        return total

    async def _in_own_transaction(self, step: Callable[[AnyConn], Awaitable[int]]) -> int:
        async with borrow(self._pool) as conn:
            return await step(conn)
