"""The three permit tiers: global (per process), per queue, and the queue's JobStrategy.

The poller counts global and queue permits *before* it claims, so it never claims a job
it cannot start; the strategy tier is asked after the claim and may also turn the job away.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Protocol, runtime_checkable

from simplequeue.errors import ConfigError
from simplequeue.job import Job, JobResult
from simplequeue.validation import as_seconds

__all__ = [
    "CancelJob",
    "ConcurrencyLimit",
    "Immediate",
    "JobStrategy",
    "MarkCompleted",
    "Permit",
    "PermitCounter",
    "RetryJob",
    "StrategyDecision",
    "TryAfter",
]


class PermitCounter:
    """A count of free slots that the poller reads before claiming and fills after."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    @property
    def free(self) -> int:
        return max(self.limit - self.in_use, 0)

    def take(self) -> None:
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1


class Permit(Protocol):
    """What a strategy hands out; released when the job's processing ends."""

    def release(self) -> None: ...


class StrategyDecision(Exception):
    """Raised by `JobStrategy.acquire` to turn a job away instead of running it now, with
    a verdict from the handlers' vocabulary: `raise StrategyDecision(JobResult.snooze(5))`.
    The subclasses below name the common ones."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(result.error or result.kind.value)
        self.result = result


class CancelJob(StrategyDecision):
    """End the job as cancelled without running it."""

    def __init__(self, error: str = "cancelled by strategy") -> None:
        super().__init__(JobResult.cancel(error))


class RetryJob(StrategyDecision):
    """Count a failed attempt and retry after the queue's backoff."""

    def __init__(self, error: str = "turned away by the queue's strategy") -> None:
        super().__init__(JobResult.failed(error))
        self.error = error


class MarkCompleted(StrategyDecision):
    """End the job as completed without running it (e.g. the work was already done)."""

    def __init__(self) -> None:
        super().__init__(JobResult.success())


class TryAfter(StrategyDecision):
    """Snooze: try again after `delay`, without spending an attempt or counting a
    reprocess (`JobResult.snooze`)."""

    def __init__(self, delay: float | timedelta) -> None:
        self.seconds = as_seconds("TryAfter.delay", delay)
        super().__init__(JobResult.snooze(self.seconds))


@runtime_checkable
class JobStrategy(Protocol):
    """The handler tier: decides, per job, whether and when it may run."""

    async def acquire(self, job: Job) -> Permit: ...


class _NoPermit:
    def release(self) -> None:
        return None


_NO_PERMIT = _NoPermit()


class Immediate:
    """The default strategy: every claimed job runs at once."""

    async def acquire(self, job: Job) -> Permit:
        return _NO_PERMIT


class _SemaphorePermit:
    __slots__ = ("_semaphore",)

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore = semaphore

    def release(self) -> None:
        self._semaphore.release()


class ConcurrencyLimit:
    """At most `n` jobs of the queue run at once in this process; the others wait."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"ConcurrencyLimit needs a positive integer, got {n!r}")
        self.limit = n
        self._semaphore = asyncio.Semaphore(n)

    async def acquire(self, job: Job) -> Permit:
        await self._semaphore.acquire()
        return _SemaphorePermit(self._semaphore)
