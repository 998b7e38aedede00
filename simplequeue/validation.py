"""Checks of the values the modules share (names, integers, times, durations): each
raises the error class its caller names, directly, with a message that says what fits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from simplequeue.errors import ConfigError, InvalidJobError

__all__ = [
    "EARLIEST_TIME",
    "INT32_MAX",
    "LATEST_TIME",
    "MAX_KEY_LENGTH",
    "MAX_TIMEOUT",
    "MAX_UNIQUE_FOR",
    "as_seconds",
    "as_timeout",
    "check_int",
    "check_key",
    "check_time",
]

INT32_MAX = 2**31 - 1
MAX_KEY_LENGTH = 1024
"""Longest queue name, unique key or fingerprint, in UTF-8 bytes: they are indexed, and a
btree entry must fit in a third of a page (2704 bytes)."""

EARLIEST_TIME = datetime(1, 1, 2, tzinfo=UTC)
LATEST_TIME = datetime(9999, 12, 30, tzinfo=UTC)
"""Times PostgreSQL stores and Python reads back in any session time zone (a day of margin
at either end of Python's years 1 to 9999)."""

_MAX_UTC_OFFSET = timedelta(hours=15, minutes=59, seconds=59)


Error = type[Exception]
"""The class a check raises: InvalidJobError for a job's fields, InvalidArgumentError for
other arguments, ConfigError for settings (and plain ValueError inside pydantic)."""


def check_key(name: str, value: Any, *, required: bool, error: Error = InvalidJobError) -> None:
    """A queue name, unique key or fingerprint as PostgreSQL text and its index can hold."""
    if value is None and not required:
        return
    # Nearly every key: ASCII (whose length is its size in UTF-8), short, without NUL.
    if (
        type(value) is str
        and value.isascii()
        and 0 < len(value) <= MAX_KEY_LENGTH
        and "\x00" not in value
    ):
        return
    if not isinstance(value, str) or not value:
        raise error(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_KEY_LENGTH:
        raise error(f"{name} is {len(value)} characters long; the limit is {MAX_KEY_LENGTH} bytes")
    if "\x00" in value:
        raise error(f"{name} contains a NUL character, which PostgreSQL text cannot store")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise error(f"{name} is not valid unicode: {exc}") from exc
    if size > MAX_KEY_LENGTH:
        raise error(
            f"{name} is {size} bytes long in UTF-8; the limit is {MAX_KEY_LENGTH} bytes "
            "(it is indexed, and index entries must stay small)"
        )


def check_int(name: str, value: Any, low: int, *, error: Error = InvalidJobError) -> int:
    """An integer a PostgreSQL integer column holds, from `low`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= INT32_MAX:
        raise error(f"{name} must be an integer between {low} and {INT32_MAX}, got {value!r}")
    return value


def check_time(name: str, value: Any, *, error: Error = InvalidJobError) -> datetime:
    """A timezone-aware datetime PostgreSQL stores and Python reads back: naive ones are
    ambiguous across hosts, so they are refused rather than given a guessed zone."""
    if not isinstance(value, datetime):
        raise error(f"{name} must be a datetime, got {type(value).__name__}")
    offset = value.utcoffset()
    if value.tzinfo is None or offset is None:
        raise error(
            f"{name} is a naive datetime; pass a timezone-aware one, e.g. datetime.now(UTC)"
        )
    if offset % timedelta(seconds=1) or abs(offset) > _MAX_UTC_OFFSET:
        raise error(
            f"{name} has the UTC offset {offset}, which PostgreSQL does not accept (whole "
            f"seconds up to ±15:59:59); convert it first, e.g. {name}.astimezone(UTC)"
        )
    if not EARLIEST_TIME <= value <= LATEST_TIME:
        raise error(
            f"{name} {value.isoformat()} is out of range: use a time between "
            f"{EARLIEST_TIME:%Y-%m-%d} and {LATEST_TIME:%Y-%m-%d} UTC, which PostgreSQL stores "
            "and Python reads back in any time zone"
        )
    return value


def seconds_of(value: object) -> float | None:
    """The seconds of a number or a timedelta (an int past the float range is infinite);
    None for anything else, a bool included."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return float("inf")
    return None


def as_seconds(
    name: str,
    value: Any,
    *,
    allow_zero: bool = True,
    maximum: float | None = None,
    error: Error = ConfigError,
) -> float:
    """The one rule for durations: seconds (a number) or a timedelta, finite, not negative
    (nor zero unless allowed), at most `maximum` when given."""
    seconds = seconds_of(value)
    if seconds is None:
        raise error(f"{name} must be seconds (a number) or a timedelta, got {value!r}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise error(f"{name} must be a finite duration, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise error(f"{name} must be {bound} seconds, got {value!r}")
    if maximum is not None and seconds > maximum:
        raise error(f"{name} must be at most {maximum:g} seconds, got {value!r}")
    return seconds


MAX_TIMEOUT = 366 * 86400.0
"""The longest timeout of a job or a handler: a year is longer than any attempt should
run; for none at all, leave the timeout None."""


def as_timeout(name: str, value: Any, *, error: Error = InvalidJobError) -> float:
    """A job's or a handler's timeout: more than zero, at most MAX_TIMEOUT."""
    return as_seconds(name, value, allow_zero=False, maximum=MAX_TIMEOUT, error=error)


MAX_UNIQUE_FOR = 100 * 365.25 * 86400.0
"""The longest a unique key is held for a period: a century (its end, counted from the
insert, must stay a time PostgreSQL stores and Python reads); beyond, say FOREVER."""
