"""The scheduler: writes this process's schedules to the database, and enqueues their due
slots while this worker leads the maintenance.

Every worker runs it: registering is every worker's (so operators see a schedule as soon
as one worker runs it), enqueuing the leader's alone. Each schedule's slots of a round are
taken in one transaction with their jobs (`Store.take_slots`), only if no one took them
first: two leaders that overlap, or workers without an election, enqueue each slot once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.connections import borrow
from simplequeue.drivers import PsycopgAsync, run
from simplequeue.job import Job
from simplequeue.operations import Connection
from simplequeue.runtime.outage import DatabaseHealth
from simplequeue.runtime.service import PeriodicService
from simplequeue.schedules import Schedule, ScheduleBook
from simplequeue.store import Plan, Store

__all__ = ["ScheduleReport", "Scheduler"]

TICK = 1.0
"""Seconds between two rounds: a slot is enqueued within about this much of its time."""

SEEN_REFRESH = 60.0
"""Seconds between two registrations of unchanged schedules (their row's `seen_at`, and
a row an operator deleted while the code still registers it comes back)."""

Insert = Callable[[Sequence[Job], Connection], Plan[list[uuid.UUID | None]]]


@dataclass(frozen=True)
class ScheduleReport:
    """What one round of the scheduler did."""

    enqueued: int = 0
    """Jobs enqueued for due slots."""
    missed: int = 0
    """Due slots passed over by their `missed` policy."""


class Scheduler(PeriodicService):
    """Registers the schedules of `book` and, while `leading()`, enqueues their slots."""

    name = "scheduler"
    first_round_at_start = True

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: Store,
        book: ScheduleBook,
        insert: Insert,
        *,
        leading: Callable[[], bool],
        health: DatabaseHealth | None = None,
    ) -> None:
        super().__init__(health)
        self._pool = pool
        self._store = store
        self._book = book
        self._insert = insert
        self._leading = leading
        self._registered: tuple[int, float] | None = None
        """The book's version last written, and when (monotonic)."""
        self._failing: dict[str, str] = {}
        """The last error of each schedule whose slots could not be enqueued."""

    def seconds_until_next(self) -> float:
        return TICK

    async def run_once(self) -> ScheduleReport:
        schedules = self._book.all()
        if not schedules:
            return ScheduleReport()
        await self._register(schedules)
        if not self._leading():
            return ScheduleReport()
        async with borrow(self._pool) as conn:
            due = await run(conn, self._store.schedules_due([s.name for s in schedules]))
        enqueued = missed = 0
        for name, last_slot, now in due:
            schedule = self._book.get(name)
            if schedule is None:
                continue
            n, passed = await self._enqueue(schedule, last_slot, now)
            enqueued, missed = enqueued + n, missed + passed
        return ScheduleReport(enqueued, missed)

    async def _register(self, schedules: list[Schedule]) -> None:
        version, now = self._book.version, time.monotonic()
        if self._registered is not None:
            written, at = self._registered
            if written == version and now - at < SEEN_REFRESH:
                return
        # next_slot is shown to operators until the first enqueue: this host's clock will do
        moment = datetime.now().astimezone()
        definitions = [schedule.definition(moment) for schedule in schedules]
        async with borrow(self._pool) as conn:
            await run(conn, self._store.register_schedules(definitions))
        self._registered = (version, now)

    async def _enqueue(self, schedule: Schedule, seen: datetime, now: datetime) -> tuple[int, int]:
        """Enqueue the slots of `schedule` due by `now`; (jobs enqueued, slots passed over)."""
        plan = schedule.plan(seen, now)
        if plan is None:
            return 0, 0
        try:
            jobs = [schedule.job_for(slot) for slot in plan.slots]
        except Exception as exc:  # a bug in the schedule's callable: its slots pass over
            self.log.exception(
                "scheduler: schedule %r could not build its job; %d slot(s) passed over: %s",
                schedule.name,
                len(plan.slots),
                exc,
            )
            jobs = []
        queue = jobs[-1].queue if jobs else None
        store = self._store
        try:
            async with borrow(self._pool) as conn, conn.transaction():
                driver = PsycopgAsync(conn)
                taken = await driver.run(
                    store.take_slots(
                        schedule.name, seen, plan.last_slot, schedule.next_after(now), queue
                    )
                )
                if not taken:  # another enqueuer took them, or an operator paused it
                    return 0, 0
                ids = await driver.run(self._insert(jobs, driver)) if jobs else []
                stored = [job_id for job_id in ids if job_id is not None]
                await driver.run(store.slots_enqueued(schedule.name, len(stored), stored[-1:]))
        except psycopg.OperationalError:
            raise  # the database is away: the round is tried again with backoff
        except Exception as exc:  # refused by the database (strict_queues, a grant): tried again
            if self._failing.get(schedule.name) != str(exc):
                self.log.error("scheduler: schedule %r could not enqueue: %s", schedule.name, exc)
            self._failing[schedule.name] = str(exc)
            return 0, 0
        self._failing.pop(schedule.name, None)
        passed = len(plan.slots) - len(jobs) + plan.missed
        if passed:
            self.log.warning(
                "scheduler: schedule %r passed over %d slot(s) up to %s (missed=%r)",
                schedule.name,
                passed,
                plan.last_slot.isoformat(),
                schedule.missed,
            )
        return len(stored), passed
