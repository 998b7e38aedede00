"""The janitor: moves finished jobs out of the live table, in bounded batches.

Completed jobs go to the archive; dead ones (failed, cancelled, critical_failure,
unprocessable, bad_job) go to the DLQ. Keeping the live table small keeps its indexes and
vacuum cheap. The archive is partitioned by time: the janitor makes its partitions ahead
and drops those past `archive_retention` whole, so retiring old rows leaves no dead tuples
behind, whatever the throughput. Sweeps run every `janitor_interval`, or on the cron
expression `janitor_schedule`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import psycopg

from simplequeue.connections import borrow
from simplequeue.drivers import run
from simplequeue.maintenance.steps import Sweeper, batch_or_each
from simplequeue.store import Plan

__all__ = ["Janitor", "JanitorReport"]

T = TypeVar("T")

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
    """Archived jobs deleted after `archive_retention` (with their partitions, or one by
    one from the archive's DEFAULT partition)."""
    partitions_created: int = 0
    """Partitions of the archive made ahead of time."""
    partitions_dropped: int = 0
    """Partitions of the archive dropped, their every row past `archive_retention`."""
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
        """One sweep now: make the archive's partitions, archive, dead-letter, retire old
        partitions and purge, each step on its own. A step the database refuses is logged
        and the others still run (archived rows no partition covers go to the DEFAULT
        one); a move refused for one row (a trigger of the user's) is made job by job for
        the others. A lost database ends the sweep (OperationalError), to be tried again
        with backoff."""
        batch = self._config.janitor_batch_size
        retention = self._config.archive_retention
        store = self._store
        counts = dict.fromkeys(
            (
                "archived",
                "dead_lettered",
                "purged",
                "partitions_created",
                "partitions_dropped",
                "stuck",
            ),
            0,
        )

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

        async def prepare() -> None:
            width = self._config.archive_partition_width
            made = await self._in_own_transaction(lambda: store.prepare_archive(width))
            counts["partitions_created"] = made

        async def archive() -> None:
            counts["archived"] = await self._repeat(
                lambda: moved("archiving", store.archive_completed, store.completed_ids)
            )

        async def dead_letter() -> None:
            counts["dead_lettered"] = await self._repeat(
                lambda: moved("dead-lettering", store.move_dead, store.dead_ids)
            )

        async def retire() -> None:
            dropped, rows = await self._in_own_transaction(lambda: store.retire_archive(retention))
            counts["partitions_dropped"] = dropped
            counts["purged"] += rows

        async def purge() -> None:
            counts["purged"] += await self._repeat(
                lambda: self._in_own_transaction(lambda: store.purge_archive(retention, batch))
            )

        async def stuck() -> None:
            counts["stuck"] = await self._in_own_transaction(store.stuck_finished)

        steps: dict[str, Callable[[], Awaitable[None]]] = {
            "partitions": prepare,
            "archive": archive,
            "dead-letter": dead_letter,
            "retire": retire,
            "purge": purge,
            "stuck": stuck,
        }
        failed: list[str] = []
        for name, step in steps.items():
            try:
                await step()
            except psycopg.errors.LockNotAvailable as exc:  # a long query held the archive
                failed.append(name)
                self.log.warning("janitor: the %s step waited too long, skipped: %s", name, exc)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                failed.append(name)
                self.log.error("janitor: the %s step failed, skipped this sweep: %s", name, exc)
        report = JanitorReport(failed_steps=tuple(failed), **counts)
        if report.archived or report.dead_lettered or report.purged:
            self.log.info(
                "janitor: %d archived, %d moved to the DLQ, %d purged from the archive",
                report.archived,
                report.dead_lettered,
                report.purged,
            )
        if report.partitions_created or report.partitions_dropped:
            self.log.info(
                "janitor: %d archive partition(s) made, %d dropped",
                report.partitions_created,
                report.partitions_dropped,
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

    async def _in_own_transaction(self, step: Callable[[], Plan[T]]) -> T:
        async with borrow(self._pool) as conn:
            return await run(conn, step())
