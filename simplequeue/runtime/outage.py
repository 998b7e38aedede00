"""Log a lost database once per outage, not once per failed statement."""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg_pool import PoolTimeout

__all__ = ["Outage", "describe", "is_transient", "seconds_since_trouble"]

_last_failure = float("-inf")


def seconds_since_trouble() -> float:
    """Seconds since a background loop of this process last failed to use the database.

    The reaper reads it: right after an outage, every worker's heartbeats look stale, the
    live ones' included, whether or not the reaper's own statements happened to fail.
    """
    return time.monotonic() - _last_failure


def is_transient(exc: BaseException) -> bool:
    """An error that trying again may cure: a lost or busy database, a statement timeout,
    a deadlock or serialization failure. Anything else the database will refuse again."""
    return isinstance(exc, psycopg.OperationalError)  # psycopg files all of these under it


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
    """Tracks one background loop's connection trouble and the backoff between retries."""

    def __init__(self, log: logging.Logger, what: str, *, max_delay: float = 5.0) -> None:
        self._log = log
        self._what = what
        self._max_delay = max_delay
        self._since: float | None = None
        self._delay = 0.05
        self.failures = 0

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> float:
        """Record a failure; returns how long to wait before the next try."""
        global _last_failure
        _last_failure = time.monotonic()
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
