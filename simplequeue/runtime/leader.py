"""Leadership: one worker of a schema runs the maintenance duties (the `leader_only`
periodic services: the reaper, the janitor), elected through a lease row in the database.

The lease is taken and renewed in one statement (`Store.lead`), on the database clock,
every third of its TTL, from the event loop: the loop the duties run on. A leader whose
loop is blocked (a handler that never awaits) renews nothing, so its lease expires and
another worker takes over, rather than the fleet going without a reaper. Locally, the
lease counts as held until its TTL has passed since the renewal was *sent* (monotonic
clock), never longer than the database holds it: past that, duties are cancelled at once
(a timer) and skip their rounds (`PeriodicService.guard`) until a renewal succeeds. A
graceful stop gives the lease up at once. Every step of the duties stays correct when two
leaders briefly overlap (a loop that wakes up past its lease, a renewal in flight): they
lock what they change with SKIP LOCKED, or are fenced, or take an advisory lock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.connections import borrow
from simplequeue.drivers import run
from simplequeue.errors import SchemaNotFoundError
from simplequeue.runtime.outage import DatabaseHealth
from simplequeue.runtime.service import PeriodicService, Service
from simplequeue.store import INSUFFICIENT_PRIVILEGE, MISSING_SCHEMA_OBJECT, Store, sqlstate

__all__ = ["MAINTENANCE", "Leadership"]

MAINTENANCE = "maintenance"
"""The name of the lease the maintenance duties run under (one row per schema)."""

RESIGN_TIMEOUT = 0.5
"""Seconds a stop gives the lease's release; past that, the lease expires on its own."""


class Leadership(Service):
    """Takes and renews the maintenance lease, and runs the leader-only duties while it
    holds it (each duty as a task of the runtime, cancelled the moment the lease is lost)."""

    name = "leader"

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: Store,
        worker_id: uuid.UUID,
        ttl: float,
        launch: Callable[[Service], asyncio.Task[None]],
        *,
        health: DatabaseHealth | None = None,
    ) -> None:
        """`launch` starts a duty as a supervised task of the runtime."""
        super().__init__(health, max_retry_delay=ttl / 3)
        self._pool = pool
        self._store = store
        self._worker_id = worker_id
        self._ttl = ttl
        self._launch = launch
        self._duties: list[PeriodicService] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._until: float | None = None
        """Monotonic time until which the lease is surely ours (None: not held)."""
        self._expiry: asyncio.TimerHandle | None = None
        self._unelected = False
        self.term: int | None = None
        """The term of the lease held now (None: not the leader)."""
        self.elected = 0
        """Times this worker became the leader."""

    def add(self, duty: PeriodicService) -> None:
        """Run `duty` only while this worker leads (before `run()` starts)."""
        duty.guard(self.may_run_duties)
        self._duties.append(duty)

    @property
    def leading(self) -> bool:
        """This worker holds the lease now: the database would refuse it to any other."""
        return self._until is not None and time.monotonic() < self._until

    def running_duties(self) -> list[str]:
        """The names of the duties running now (none unless leading)."""
        running = zip(self._duties, self._tasks, strict=False)  # no tasks while not leading
        return [duty.name for duty, task in running if not task.done()]

    def may_run_duties(self) -> bool:
        """This worker leads now, or no worker can (no lease to be had: every one runs them)."""
        return self._unelected or self.leading

    async def run(self) -> None:
        try:
            while True:
                wait = await self._attempt()
                if wait is None:  # no lease to be had here: the duties run unelected
                    await asyncio.Event().wait()  # until the runtime stops
                    continue
                await asyncio.sleep(wait)
        finally:
            self._step_down()

    async def _attempt(self) -> float | None:
        """One try to take or renew the lease; the wait before the next (None: never)."""
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self._ttl), borrow(self._pool) as conn:
                lease = await run(conn, self._store.lead(MAINTENANCE, self._worker_id, self._ttl))
        except (psycopg.OperationalError, TimeoutError) as exc:
            # The timer steps down once the lease may have expired; until then, the duties
            # go on (they meet the same outage and retry on their own).
            return min(self.outage.failed(exc), self._ttl / 3)
        except (psycopg.Error, SchemaNotFoundError) as exc:  # a missing table, explained
            if sqlstate(exc) not in (INSUFFICIENT_PRIVILEGE, *MISSING_SCHEMA_OBJECT):
                raise
            self.log.warning(
                "leader: the maintenance lease cannot be taken (%s); the reaper and the "
                "janitor run in this worker without an election, as in every other such "
                "worker. Run `simplequeue migrate` and `simplequeue roles`, then restart",
                exc,
            )
            self._unelected = True
            self._start_duties()
            return None
        self.outage.recovered()
        if lease.ours:
            self._hold(sent + self._ttl, lease.term)
        elif self.term is not None:
            self.log.warning(
                "leader: lost the maintenance lease (term %d) to worker %s (term %d); "
                "leader-only duties stopped",
                self.term,
                lease.holder,
                lease.term,
            )
            self._step_down()
        return self._ttl / 3

    def _hold(self, until: float, term: int) -> None:
        if until <= time.monotonic():
            return  # renewed too late to count on: the next try tells
        if self._expiry is not None:
            self._expiry.cancel()
        self._until = until
        self._expiry = asyncio.get_running_loop().call_later(
            max(until - time.monotonic(), 0.0), self._expired
        )
        if self.term != term:
            self.term = term
            self.elected += 1
            self.log.info(
                "leader: this worker leads the maintenance (term %d): %s",
                term,
                ", ".join(d.name for d in self._duties) or "no duty",
            )
            self._start_duties()

    def _expired(self) -> None:
        """The timer: the lease was not renewed in time, the database may give it away."""
        if self.term is not None and not self.leading:
            self.log.warning(
                "leader: the maintenance lease (term %d) was not renewed within %gs; "
                "leader-only duties stopped",
                self.term,
                self._ttl,
            )
            self._step_down()

    def _start_duties(self) -> None:
        self._stop_duties()
        self._tasks = [self._launch(duty) for duty in self._duties]

    def _stop_duties(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    def _step_down(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self._until = None
        self.term = None
        if not self._unelected:
            self._stop_duties()

    async def resign(self) -> None:
        """Stop the duties and give the lease up now (a graceful stop), so that another
        worker takes over at its next try; bounded by RESIGN_TIMEOUT, after which the
        lease is left to expire. Call once `run()` has ended."""
        self._step_down()
        self._stop_duties()
        try:
            async with asyncio.timeout(RESIGN_TIMEOUT), borrow(self._pool) as conn:
                if await run(conn, self._store.resign(MAINTENANCE, self._worker_id)):
                    self.log.info("leader: the maintenance lease was given up")
        except (psycopg.Error, SchemaNotFoundError, TimeoutError) as exc:
            self.log.info("leader: the lease could not be given up (%s); it expires", exc)
