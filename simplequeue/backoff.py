"""How long a failed job waits before its next attempt: Fixed, Linear, Exponential, Custom."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol, runtime_checkable

from simplequeue.errors import ConfigError

__all__ = ["BackoffStrategy", "Custom", "Exponential", "Fixed", "Linear", "as_seconds"]


@runtime_checkable
class BackoffStrategy(Protocol):
    """Anything with `delay(attempt) -> timedelta` plugs in; `attempt` starts at 1."""

    def delay(self, attempt: int) -> timedelta: ...


def as_seconds(name: str, value: float | timedelta, *, allow_zero: bool = True) -> float:
    """Durations are accepted as seconds or timedelta; refuse negatives (and zero if asked)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigError(f"{name} must be seconds (a number) or a timedelta, got {value!r}")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ConfigError(f"{name} must be a finite duration, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise ConfigError(f"{name} must be {bound} seconds, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Fixed:
    """The same wait after every failure."""

    wait: float | timedelta

    def __post_init__(self) -> None:
        as_seconds("Fixed.wait", self.wait)

    def delay(self, attempt: int) -> timedelta:
        return timedelta(seconds=as_seconds("Fixed.wait", self.wait))


@dataclass(frozen=True)
class Linear:
    """`step × attempt`: 5 s, 10 s, 15 s… with the default step."""

    step: float | timedelta = 5.0

    def __post_init__(self) -> None:
        as_seconds("Linear.step", self.step)

    def delay(self, attempt: int) -> timedelta:
        return timedelta(seconds=as_seconds("Linear.step", self.step) * max(attempt, 1))


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
        if not isinstance(self.factor, int | float) or self.factor < 1:
            raise ConfigError(f"Exponential.factor must be a number >= 1, got {self.factor!r}")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ConfigError(f"Exponential.jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, attempt: int) -> timedelta:
        base = as_seconds("base", self.base)
        cap = as_seconds("max_delay", self.max_delay)
        exponent = max(attempt, 1) - 1
        # Compare exponents before computing the power: it may not fit in a float.
        seconds = cap if exponent > 1024 else min(cap, base * self.factor**exponent)
        if self.jitter:
            seconds -= random.uniform(0, seconds * self.jitter)
        return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Custom:
    """Wraps a function `attempt -> timedelta | seconds`."""

    fn: Callable[[int], timedelta | float]

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ConfigError(f"Custom backoff needs a callable, got {self.fn!r}")

    def delay(self, attempt: int) -> timedelta:
        value = self.fn(attempt)
        return timedelta(seconds=as_seconds("Custom backoff result", value))


def check_backoff(name: str, strategy: object) -> BackoffStrategy:
    """Refuse, at configuration time, anything that is not a backoff strategy."""
    if not isinstance(strategy, BackoffStrategy) or isinstance(strategy, type):
        raise ConfigError(
            f"{name} must be a backoff strategy (Fixed, Linear, Exponential, Custom or any "
            f"object with delay(attempt) -> timedelta), got {strategy!r}"
        )
    return strategy
