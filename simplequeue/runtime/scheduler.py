"""The scheduler: writes this process's schedules to the database, and enqueues their due
slots while this worker leads the maintenance.

Every worker runs it: registering is every worker's (so operators see a schedule as soon
as one worker runs it), enqueuing the leader's alone. Each schedule's slots of a round are
taken in one transaction with their jobs (`Store.take_slots`), only if no one took them
first: two leaders that overlap, or workers without an election, enqueue each slot once.
A schedule's own code (its callable) runs off the event loop, and whatever goes wrong
with one schedule is logged and leaves the others alone.
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
from simplequeue.store import Plan, Store, StoredSchedule

__all__ = ["TICK", "ScheduleReport", "Scheduler"]

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
    passed: int = 0
    """Due slots passed over: missed (by their `missed` policy), or their job not built."""


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
        failover: float,
        health: DatabaseHealth | None = None,
    ) -> None:
        """`failover`: the seconds a dead leader's slots may wait for the next one; they
        are not missed meanwhile."""
        super().__init__(health)
        self._pool = pool
        self._store = store
        self._book = book
        self._insert = insert
        self._leading = leading
        self._min_grace = failover + 2 * TICK
        self._registered: tuple[int, float] | None = None
        """The book's version last written, and when (monotonic)."""
        self._refused: dict[str, frozenset[datetime]] = {}
        """Slots whose insert the database refused: still on time when tried again."""
        self._said: dict[tuple[str, str], str] = {}
        """What was last logged of each schedule's trouble, by kind (said once, not every
        round)."""

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
        enqueued = passed = 0
        for stored in due:
            schedule = self._book.get(stored.name)
            if schedule is None:
                continue
            try:
                n, skipped = await self._enqueue(schedule, stored)
            except psycopg.OperationalError:
                raise  # the database is away: the round is tried again with backoff
            except Exception as exc:  # one schedule's trouble stops no other
                self._say(schedule.name, "error", f"could not enqueue: {exc}")
                continue
            enqueued, passed = enqueued + n, passed + skipped
        return ScheduleReport(enqueued, passed)

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

    async def _enqueue(self, schedule: Schedule, stored: StoredSchedule) -> tuple[int, int]:
        """Enqueue the slots of `schedule` due by the database's now; (jobs enqueued, slots
        passed over)."""
        if not schedule.same_rule(stored.cron, stored.every, stored.timezone):
            self._say(
                schedule.name,
                "rule",
                f"the fleet registers it with another rule than this leader's "
                f"({schedule.rule()}): the leader's runs",
            )
        plan = schedule.plan(
            stored.last_slot,
            stored.now,
            min_grace=self._min_grace,
            tried=self._refused.get(schedule.name, ()),
        )
        if plan is None:
            return 0, 0
        jobs = []
        for slot in plan.slots:
            try:
                jobs.append(await schedule.make_job(slot))
            except Exception as exc:  # a bug in the schedule's own code: that slot passes
                self.log.error(
                    "scheduler: schedule %r could not build the job of its slot %s, which is "
                    "passed over: %s",
                    schedule.name,
                    slot.isoformat(),
                    exc,
                    exc_info=exc,
                )
        queue = jobs[-1].queue if jobs else None
        next_slot = schedule.next_after(stored.now)
        store = self._store
        try:
            async with borrow(self._pool) as conn, conn.transaction():
                driver = PsycopgAsync(conn)
                take = store.take_slots(
                    schedule, stored.last_slot, plan.last_slot, next_slot, queue
                )
                if not await driver.run(take):  # another enqueuer took them, or it was paused
                    return 0, 0
                ids = await driver.run(self._insert(jobs, driver)) if jobs else []
                stored_ids = [job_id for job_id in ids if job_id is not None]
                await driver.run(
                    store.slots_enqueued(schedule.name, len(stored_ids), stored_ids[-1:])
                )
        except psycopg.OperationalError:
            raise
        except Exception:  # refused (strict_queues, a grant): the slots stay due
            self._refused[schedule.name] = frozenset(plan.slots)
            raise
        self._refused.pop(schedule.name, None)
        self._said.pop((schedule.name, "error"), None)
        passed = len(plan.slots) - len(jobs) + plan.missed
        if plan.missed:
            self.log.warning(
                "scheduler: schedule %r missed %d slot(s) up to %s (missed=%r)",
                schedule.name,
                plan.missed,
                plan.last_slot.isoformat(),
                schedule.missed,
            )
        return len(stored_ids), passed

    def _say(self, name: str, kind: str, what: str) -> None:
        """Log a schedule's trouble once, until it changes (an error: or until the schedule
        enqueues again)."""
        if self._said.get((name, kind)) == what:
            return
        self._said[name, kind] = what
        if kind == "error":
            self.log.error("scheduler: schedule %r %s", name, what)
        else:
            self.log.warning("scheduler: schedule %r: %s", name, what)
