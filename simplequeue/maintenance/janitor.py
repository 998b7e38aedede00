"""The janitor: moves finished jobs out of the live table, in bounded batches.

Completed jobs go to the archive (deleted after `archive_retention`); dead ones (failed,
cancelled, critical_failure, unprocessable, bad_job) go to the DLQ. Keeping the live table
small keeps its indexes and vacuum cheap. Sweeps run every `janitor_interval`, or on the
cron expression `janitor_schedule`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from simplequeue.connections import borrow
from simplequeue.drivers import run
from simplequeue.maintenance.steps import Sweeper, batch_or_each
from simplequeue.store import Plan

__all__ = ["Janitor", "JanitorReport"]

MAX_BATCHES_PER_SWEEP = 100
"""Bounds one sweep's work; what is left waits for the next sweep."""


@dataclass(frozen=True)
class JanitorReport:
    """What one janitor sweep did."""

    archived: int = 0
    """Completed jobs moved to the archive."""
    dead_lettered: int = 0
    """Dead jobs (failed, cancelled, critical_failure, unprocessable, bad_job) moved to the DLQ."""
    purged: int = 0
    """Archived jobs deleted after `archive_retention`."""
    stuck: int = 0
    """Finished jobs left in the jobs table: the archive or the DLQ holds their id already."""
    failed_steps: tuple[str, ...] = ()
    """Steps the database refused this sweep (logged); the others ran all the same."""


class Janitor(Sweeper):
    name = "janitor"
    leader_only = True

    def seconds_until_next(self, now: datetime | None = None) -> float:
        if self._config.janitor_schedule is None:
            return self._config.janitor_interval
        from croniter import croniter  # a schedule is only accepted with the extra installed

        now = now or datetime.now(UTC)
        following: datetime = croniter(self._config.janitor_schedule, now).get_next(datetime)
        return max((following - now).total_seconds(), 0.0)

    async def run_once(self) -> JanitorReport:
        """One sweep now: archive, dead-letter and purge, each step on its own. A step the
        database refuses is logged and the others still run; a move refused for one row (a
        trigger of the user's) is made job by job for the others. A lost database ends the
        sweep (OperationalError), to be tried again with backoff."""
        batch = self._config.janitor_batch_size
        retention = self._config.archive_retention
        store = self._store

        async def moved(
            what: str,
            move: Callable[[int, uuid.UUID | None], Plan[list[uuid.UUID]]],
            candidates: Callable[[int], Plan[list[uuid.UUID]]],
        ) -> int:
            changed = await batch_or_each(
                self._pool,
                self.log,
                f"janitor: {what}",
                lambda only: move(batch, only),
                lambda: candidates(batch),
            )
            return len(changed)

        steps: dict[str, Callable[[], Awaitable[int]]] = {
            "archive": lambda: moved("archiving", store.archive_completed, store.completed_ids),
            "dead-letter": lambda: moved("dead-lettering", store.move_dead, store.dead_ids),
            "purge": lambda: self._in_own_transaction(
                lambda: store.purge_archive(retention, batch)
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
                self.log.error("janitor: the %s step failed, skipped this sweep: %s", name, exc)
        stuck = await self._in_own_transaction(store.stuck_finished)
        report = JanitorReport(
            counts.get("archive", 0),
            counts.get("dead-letter", 0),
            counts.get("purge", 0),
            stuck,
            tuple(failed),
        )
        if report.archived or report.dead_lettered or report.purged:
            self.log.info(
                "janitor: %d archived, %d moved to the DLQ, %d purged from the archive",
                report.archived,
                report.dead_lettered,
                report.purged,
            )
        if report.stuck:
            self.log.warning(
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

    async def _in_own_transaction(self, step: Callable[[], Plan[int]]) -> int:
        async with borrow(self._pool) as conn:
            return await run(conn, step())
