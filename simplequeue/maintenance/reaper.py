"""The reaper: recovers jobs whose worker died, and ends jobs that can never run."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from psycopg_pool import AsyncConnectionPool

from simplequeue.config import QueueConfig
from simplequeue.connections import borrow
from simplequeue.drivers import run
from simplequeue.fleet import WORKER_FORGOTTEN_AFTER
from simplequeue.job import JobStatus
from simplequeue.maintenance.steps import Sweeper, batch_or_each
from simplequeue.runtime.outage import DatabaseHealth
from simplequeue.store import Store

__all__ = ["ReapReport", "Reaper"]

MAX_DEFER_FACTOR = 10

KEYS_PER_BATCH = 1000
MAX_KEY_BATCHES = 10
"""Expired unique keys one sweep deletes: batches of a thousand (each its own short
transaction) until one finds fewer, ten at most; the rest wait for the next sweep."""


@dataclass(frozen=True)
class ReapReport:
    """What one reaper sweep did."""

    recovered: int = 0
    """Stalled running jobs returned to pending (attempt given back, reprocess counted)."""
    poisoned: int = 0
    """Stalled jobs past `max_reprocess_count`, ended as bad_job."""
    exhausted: int = 0
    """Pending jobs with no attempt left, ended as failed."""
    forgotten_workers: int = 0
    """Rows of workers that died (not beaten for an hour past their expiry), deleted."""
    expired_keys: int = 0
    """Unique keys held for a period (`Job(unique_for=...)`) that has ended, deleted."""


class Reaper(Sweeper):
    """Stalled running jobs → pending (attempt given back, reprocess counted), or bad_job
    once poison; pending jobs with no attempts left → failed. On the way, it forgets what
    has run its course: rows of dead workers, ended parks, expired unique keys.

    After trouble with the database (any of this process's connections failing) it waits
    until `stall_after` has passed without any: an outage silences every worker's
    heartbeats, not only those of dead workers, and the live ones need that long to beat
    again. Reaping at once would take their jobs away and run them twice. Trouble that
    persists defers reaping by at most `MAX_DEFER_FACTOR` × `stall_after` at a time.
    """

    name = "reaper"
    first_round_at_start = True
    leader_only = True

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: Store,
        config: QueueConfig,
        *,
        health: DatabaseHealth | None = None,
        own_runs: Callable[[], Collection[tuple[uuid.UUID, int]]] = tuple,
    ) -> None:
        super().__init__(pool, store, config, health=health)
        self._own_runs = own_runs
        self._deferring_since: float | None = None

    def seconds_until_next(self) -> float:
        return self._config.reaper_interval or self._config.heartbeat_interval

    def seconds_to_hold_off(self) -> float:
        """Seconds to wait before the next sweep because of recent database trouble."""
        stall_after = self._config.stall_after
        wait = stall_after - self.health.seconds_since_trouble()
        now = time.monotonic()
        if wait <= 0:
            self._deferring_since = None
            return 0.0
        if self._deferring_since is None:
            self._deferring_since = now
            self.log.info(
                "reaper: database trouble in this runtime; waiting until heartbeats have "
                "had %.1fs to resume before reaping",
                stall_after,
            )
        if now - self._deferring_since >= MAX_DEFER_FACTOR * stall_after:
            self._deferring_since = now  # trouble that persists must not stop reaping
            return 0.0
        return wait

    async def run_once(self) -> ReapReport:
        """One sweep now."""
        stall, max_reprocess = self._config.stall_after, self._config.max_reprocess_count

        store = self._store
        reaped = await batch_or_each(
            self._pool, self.log, "reaper: returning stalled jobs",
            lambda only: store.reap_stalled(stall, max_reprocess, only=only, own=self._own_runs()),
            lambda: store.stalled_ids(stall, 1000),
        )  # fmt: skip
        failed = await batch_or_each(
            self._pool, self.log, "reaper: failing jobs out of attempts",
            lambda only: store.fail_exhausted(only=only),
            lambda: store.exhausted_ids(1000),
        )  # fmt: skip
        exhausted = len(failed)
        async with borrow(self._pool) as conn:
            forgotten = await run(conn, store.forget_workers(WORKER_FORGOTTEN_AFTER))
            # Before the controls: each statement commits on its own, so a later step the
            # database refuses does not keep expired keys from going.
            expired = 0
            for _ in range(MAX_KEY_BATCHES):
                deleted = await run(conn, store.forget_expired_keys(KEYS_PER_BATCH))
                expired += deleted
                if deleted < KEYS_PER_BATCH:
                    break
            await run(conn, store.forget_controls())
        poisoned = sum(1 for _, status in reaped if status == JobStatus.BAD_JOB)
        report = ReapReport(len(reaped) - poisoned, poisoned, exhausted, forgotten, expired)
        if reaped or exhausted:
            self.log.warning(
                "reaper: %d stalled job(s) returned to pending, %d poison job(s) ended as bad_job, "
                "%d job(s) out of attempts ended as failed",
                report.recovered,
                report.poisoned,
                report.exhausted,
            )
        return report
