"""The shape every background duty of a runtime shares.

A service is one loop (`run()`) that the runtime starts as a task, supervises and
stops. It meets database trouble the same way everywhere: a transient error
(`is_transient`) is logged once per outage and retried with backoff, and the time of the
failure goes into the runtime's `DatabaseHealth`, which the reaper consults. Duties done
now and then (the reaper, the janitor) are `PeriodicService`s: `run_once()` does one
round and returns its report, which operators may also call on their own. One that sets
`leader_only` runs in one worker of the schema, the elected leader (`runtime/leader.py`).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import psycopg

from simplequeue.runtime.outage import DatabaseHealth, Outage

__all__ = ["PeriodicService", "Service"]


class Service(ABC):
    """One background loop of a runtime."""

    name: ClassVar[str]
    """Its logger is `simplequeue.<name>`; its task, `simplequeue-<name>`."""

    label: ClassVar[str] = ""
    """What its log lines call it, when not its name."""

    def __init__(
        self, health: DatabaseHealth | None = None, *, max_retry_delay: float = 5.0
    ) -> None:
        """`health` is the runtime's (a service on its own gets one of its own);
        `max_retry_delay` bounds the wait between two tries while the database is away."""
        self.log = logging.getLogger(f"simplequeue.{self.name}")
        self.health = health if health is not None else DatabaseHealth()
        self.outage = Outage(
            self.log, self.label or self.name, self.health, max_delay=max_retry_delay
        )

    @abstractmethod
    async def run(self) -> None:
        """The loop: until cancelled, or until the service's own stop says it is done."""

    async def back_off(self, exc: BaseException) -> None:
        """After a transient failure: log it (once per outage), wait, then try again."""
        await asyncio.sleep(self.outage.failed(exc))


class PeriodicService(Service):
    """A duty done every so often: one round is `run_once()`.

    A round the database could not serve (a transient error) is tried again with backoff,
    not at the next period: the work it was to do is still waiting.
    """

    @abstractmethod
    async def run_once(self) -> Any:
        """One round now; returns its report."""

    @abstractmethod
    def seconds_until_next(self) -> float:
        """The wait before the next round, asked after each one (and before the first)."""

    def seconds_to_hold_off(self) -> float:
        """A wait before a round that is due, asked until it is 0 (the reaper's deferral)."""
        return 0.0

    first_round_at_start: ClassVar[bool] = False
    """Run the first round as soon as the service starts, rather than one period later."""

    leader_only: ClassVar[bool] = False
    """Run only in the worker that holds the schema's maintenance lease (started when it
    is elected, cancelled when it loses the lease); `run_once()` still runs anywhere."""

    _gate: Callable[[], bool] | None = None

    def guard(self, gate: Callable[[], bool]) -> None:
        """Skip every round while `gate()` is false (the leader's lease, which a loop
        blocked past its expiry no longer holds, though nothing has told it yet)."""
        self._gate = gate

    async def run(self) -> None:
        wait = 0.0 if self.first_round_at_start else self.seconds_until_next()
        while True:
            await asyncio.sleep(wait)
            if self._gate is not None and not self._gate():
                wait = self.seconds_until_next()
                continue
            hold = self.seconds_to_hold_off()
            if hold > 0:
                wait = hold  # then ask again: the trouble may have come back meanwhile
                continue
            try:
                await self.run_once()
            except psycopg.OperationalError as exc:
                wait = self.outage.failed(exc)
                continue
            self.outage.recovered()
            wait = self.seconds_until_next()
