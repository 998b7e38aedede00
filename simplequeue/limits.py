"""Fleet-wide limits of a queue (`configure_queue`): how many of its jobs run at once and
start per window across every process, per queue and per concurrency key.

The limits live in the queue's row; the claim enforces them (sql/0007_fleet_limits.sql),
so no job is claimed only to be turned away.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from simplequeue.errors import InvalidArgumentError
from simplequeue.validation import as_seconds, check_int, check_time

__all__ = ["QueueLimits", "Rate", "check_park_until"]

MAX_RATE_PERIOD = 366 * 86400.0
"""The longest window a rate takes: a year (the starts of one window are kept as rows)."""


@dataclass(frozen=True)
class Rate:
    """At most `limit` job starts per `per` (seconds or a timedelta), in any window of
    that length: `Rate(10, per=timedelta(seconds=1))`."""

    limit: int
    per: timedelta

    def __init__(self, limit: int, per: float | timedelta) -> None:
        check_int("rate limit", limit, 1, error=InvalidArgumentError)
        seconds = as_seconds(
            "rate period",
            per,
            allow_zero=False,
            maximum=MAX_RATE_PERIOD,
            error=InvalidArgumentError,
        )
        period = timedelta(seconds=seconds)
        if period < timedelta(microseconds=1):  # what PostgreSQL keeps of it
            raise InvalidArgumentError(f"rate period must be 1 microsecond or more, got {per!r}")
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "per", period)

    @property
    def seconds(self) -> float:
        return self.per.total_seconds()

    @property
    def interval(self) -> float:
        """Seconds between starts at the full rate."""
        return self.seconds / self.limit

    @classmethod
    def from_columns(cls, limit: int | None, period: float | None) -> Rate | None:
        return None if limit is None or period is None else cls(limit, period)

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.limit, "per_seconds": self.seconds}

    def __repr__(self) -> str:
        return f"Rate({self.limit}, per={self.per!r})"


@dataclass(frozen=True)
class QueueLimits:
    """What `configure_queue` stores: None is no limit."""

    max_running: int | None = None
    max_running_per_key: int | None = None
    rate_limit: Rate | None = None
    rate_limit_per_key: Rate | None = None
    fair: bool = False

    def __post_init__(self) -> None:
        for name in ("max_running", "max_running_per_key"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, 1, error=InvalidArgumentError)
        for name in ("rate_limit", "rate_limit_per_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Rate):
                raise InvalidArgumentError(
                    f"{name} must be a simplequeue.Rate (e.g. Rate(10, per=timedelta(seconds=1)))"
                    f" or None, got {value!r}"
                )
        if not isinstance(self.fair, bool):
            raise InvalidArgumentError(f"fair must be True or False, got {self.fair!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_running": self.max_running,
            "max_running_per_key": self.max_running_per_key,
            "rate_limit": self.rate_limit.to_dict() if self.rate_limit else None,
            "rate_limit_per_key": (
                self.rate_limit_per_key.to_dict() if self.rate_limit_per_key else None
            ),
            "fair": self.fair,
        }

    def params(self) -> dict[str, Any]:
        """The queue row's columns."""
        return {
            "max_running": self.max_running,
            "max_running_per_key": self.max_running_per_key,
            "rate_limit": self.rate_limit.limit if self.rate_limit else None,
            "rate_period": self.rate_limit.seconds if self.rate_limit else None,
            "rate_limit_per_key": self.rate_limit_per_key.limit
            if self.rate_limit_per_key
            else None,
            "rate_period_per_key": (
                self.rate_limit_per_key.seconds if self.rate_limit_per_key else None
            ),
            "fair": self.fair,
        }


def check_park_until(until: object) -> datetime:
    """A park's end: an aware datetime PostgreSQL can store."""
    return check_time("until", until, error=InvalidArgumentError)
