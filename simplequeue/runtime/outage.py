"""Log a lost database once per outage, not once per failed statement."""

from __future__ import annotations

import logging
import time

__all__ = ["Outage"]


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
        self.failures += 1
        if self._since is None:
            self._since = time.monotonic()
            self._delay = 0.05
            self._log.warning(
                "%s: database unreachable (%s); retrying with backoff",
                self._what,
                str(exc).strip() or type(exc).__name__,
            )
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
