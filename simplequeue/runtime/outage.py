"""Database trouble: noticed once per runtime, logged once per outage."""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg_pool import PoolTimeout

__all__ = ["DatabaseHealth", "Outage", "describe", "is_transient"]


class DatabaseHealth:
    """When the services of one runtime last failed to use the database.

    Shared by the services of one runtime, and only them: another queue in the same
    process (another database, perhaps) has its own. The reaper reads it: right after an
    outage every worker's heartbeats look stale, the live ones' included, whether or not
    the reaper's own statements happened to fail.
    """

    def __init__(self) -> None:
        self._last_failure = float("-inf")
        self.failures = 0

    def failed(self) -> None:
        self._last_failure = time.monotonic()
        self.failures += 1

    def seconds_since_trouble(self) -> float:
        return time.monotonic() - self._last_failure


def is_transient(exc: BaseException) -> bool:
    """An error that trying again may cure: a lost or busy database, a pool with no free
    connection, a statement timeout, a deadlock or serialization failure. Anything else
    the database will refuse again."""
    return isinstance(exc, psycopg.OperationalError)  # PoolTimeout and all those included


def describe(exc: BaseException) -> str:
    """What went wrong, in the words an operator searches the logs for."""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # libpq's are multi-line
    if isinstance(exc, PoolTimeout):
        return f"no free connection in the pool ({detail}); is the connection pool exhausted?"
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return f"statement cancelled ({detail})"
    if isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.LockNotAvailable):
        return f"lock conflict ({detail})"
    return f"database unreachable ({detail})"


class Outage:
    """One service's connection trouble and the backoff between its retries."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        health: DatabaseHealth,
        *,
        max_delay: float = 5.0,
    ) -> None:
        self._log = log
        self._what = what
        self._health = health
        self._max_delay = max_delay
        self._since: float | None = None
        self._delay = 0.05
        self.failures = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns how long to wait before the next try."""
        self._health.failed()
        self.failures += 1
        if self._since is None:
            self._since = time.monotonic()
            self._delay = 0.05
            self._log.warning("%s: %s; retrying with backoff", self._what, describe(exc))
        else:
            self._delay = min(self._delay * 2, self._max_delay)
        return self._delay

    def recovered(self) -> None:
        if self._since is not None:
            self._log.warning(
                "%s: database reachable again after %.1fs",
                self._what,
                time.monotonic() - self._since,
            )
            self._since = None
