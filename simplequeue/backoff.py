"""How long a failed job waits before its next attempt: Fixed, Linear, Exponential, Custom."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, runtime_checkable

from simplequeue.errors import ConfigError
from simplequeue.validation import as_seconds

__all__ = [
    "MAX_DELAY",
    "BackoffStrategy",
    "Custom",
    "Exponential",
    "Fixed",
    "Linear",
    "clamp_delay",
]

MAX_DELAY = 10_000 * 365.25 * 86400.0
"""Ten thousand years: longer than any due time the jobs table can hold (the write caps
`run_at` at its latest storable time), short enough for a timedelta and an interval."""


def clamp_delay(seconds: float) -> float:
    """A wait as long as asked, but no longer than a job can be put off, and not negative
    (a strategy of the user's may compute one)."""
    return max(min(seconds, MAX_DELAY), 0.0)


@runtime_checkable
class BackoffStrategy(Protocol):
    """Anything with `delay(attempt) -> timedelta` plugs in; `attempt` starts at 1."""

    def delay(self, attempt: int) -> timedelta: ...


@dataclass(frozen=True)
class Fixed:
    """The same wait after every failure."""

    wait: float | timedelta

    def __post_init__(self) -> None:
        as_seconds("Fixed.wait", self.wait)

    def delay(self, attempt: int) -> timedelta:
        return timedelta(seconds=clamp_delay(as_seconds("Fixed.wait", self.wait)))


@dataclass(frozen=True)
class Linear:
    """`step × attempt`: 5 s, 10 s, 15 s… with the default step."""

    step: float | timedelta = 5.0

    def __post_init__(self) -> None:
        as_seconds("Linear.step", self.step)

    def delay(self, attempt: int) -> timedelta:
        step = as_seconds("Linear.step", self.step)
        return timedelta(seconds=clamp_delay(step * max(attempt, 1)))


@dataclass(frozen=True)
class Exponential:
    """`base × factor^(attempt-1)`, capped at `max_delay`, with optional full jitter.

    `jitter` is the fraction of the delay drawn at random (0 = none, 1 = anywhere in
    [0, delay]); it spreads retries of jobs that failed together.
    """

    base: float | timedelta = 1.0
    factor: float = 2.0
    max_delay: float | timedelta = 3600.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        as_seconds("Exponential.base", self.base)
        as_seconds("Exponential.max_delay", self.max_delay)
        factor = self.factor
        if (
            isinstance(factor, bool)
            or not isinstance(factor, int | float)
            or not (1 <= factor < math.inf)
        ):
            raise ConfigError(f"Exponential.factor must be a number >= 1, got {self.factor!r}")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ConfigError(f"Exponential.jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, attempt: int) -> timedelta:
        base = as_seconds("base", self.base)
        cap = as_seconds("max_delay", self.max_delay)
        exponent = max(attempt, 1) - 1
        # Compare logarithms before computing the power: it may not fit in a float.
        if base == 0 or cap == 0:
            seconds = 0.0
        else:
            log_delay = math.log(base) + exponent * math.log(self.factor)
            if log_delay >= math.log(cap):
                seconds = cap
            else:
                try:
                    seconds = base * self.factor**exponent
                except OverflowError:  # a tiny base times a power past the float range
                    seconds = math.exp(log_delay)
        if self.jitter:
            seconds -= random.uniform(0, seconds * self.jitter)
        return timedelta(seconds=clamp_delay(seconds))


@dataclass(frozen=True)
class Custom:
    """Wraps a function `attempt -> timedelta | seconds`."""

    fn: Callable[[int], timedelta | float]

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ConfigError(f"Custom backoff needs a callable, got {self.fn!r}")

    def delay(self, attempt: int) -> timedelta:
        value = self.fn(attempt)
        return timedelta(seconds=clamp_delay(as_seconds("Custom backoff result", value)))


def check_backoff(name: str, strategy: object) -> BackoffStrategy:
    """Refuse, at configuration time, anything that is not a backoff strategy."""
    if not isinstance(strategy, BackoffStrategy) or isinstance(strategy, type):
        raise ConfigError(
            f"{name} must be a backoff strategy (Fixed, Linear, Exponential, Custom or any "
            f"object with delay(attempt) -> timedelta), got {strategy!r}"
        )
    return strategy
