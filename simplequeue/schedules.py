"""Schedules: a job enqueued on a cron expression or every fixed interval (`queue.schedule()`).

A schedule is registered in each process that runs it, like a handler; the workers keep
its row in the database (`schedules`, sql/0010_schedules.sql). The maintenance leader
enqueues its slots (`runtime/scheduler.py`): each slot in the transaction that moves the
row's `last_slot` past it, on the condition that `last_slot` still holds what it read, so
a slot is enqueued once whatever the number of workers, their restarts or their clocks.
Slots are computed here, from the database's clock.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import zoneinfo
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from simplequeue.errors import ConfigError, InvalidArgumentError
from simplequeue.fleet import jsonable
from simplequeue.job import Job
from simplequeue.validation import as_seconds, check_key

__all__ = [
    "MAX_MISSED_SLOTS",
    "Missed",
    "Schedule",
    "ScheduleBook",
    "ScheduleInfo",
    "SlotPlan",
]

Missed = Literal["skip", "latest", "all"]
"""What a fleet that was down enqueues for the slots it missed: `skip` none of them,
`latest` the most recent one, `all` each of them (the latest `MAX_MISSED_SLOTS`)."""
MISSED_POLICIES: tuple[str, ...] = get_args(Missed)

MAX_MISSED_SLOTS = 100
"""The most slots one round enqueues for a schedule (`missed="all"` after an outage)."""

MIN_GRACE = 5.0
MAX_GRACE = 60.0
"""A slot not enqueued within one period of its time (at least MIN_GRACE, at most
MAX_GRACE seconds) was missed: the fleet was down, or had no leader."""

MIN_EVERY = timedelta(seconds=1)
MAX_EVERY = timedelta(days=366)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 1, 1, tzinfo=UTC)
"""No slot after it (times past it cannot be stored as a due time)."""
"""The slots of `every=` are its multiples since then: the same on every host."""

JobSource = (
    Job
    | Callable[[datetime], Job]
    | Callable[[], Job]
    | Callable[[datetime], Awaitable[Job]]
    | Callable[[], Awaitable[Job]]
)
"""What a schedule enqueues per slot: a copy of a Job, or what a callable returns or its
coroutine gives (called with the slot's time, when it takes an argument)."""


@dataclass(frozen=True)
class SlotPlan:
    """What one round enqueues for a schedule."""

    slots: tuple[datetime, ...]
    """The slots to enqueue, oldest first."""
    last_slot: datetime
    """Every slot up to it is enqueued or passed over once this plan commits."""
    missed: int
    """Due slots passed over (counted up to MAX_MISSED_SLOTS + 1)."""


@dataclass(frozen=True, eq=False)
class Schedule:
    """A registered schedule: its rule and what it enqueues (`queue.schedule()`)."""

    name: str
    job: JobSource
    cron: str | None = None
    every: timedelta | None = None
    timezone: str = "UTC"
    missed: Missed = "skip"
    _zone: ZoneInfo = field(init=False, repr=False)
    _takes_slot: bool = field(init=False, repr=False)
    _is_async: bool = field(init=False, repr=False, default=False)

    @classmethod
    def define(
        cls,
        name: str,
        job: JobSource,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        missed: Missed = "skip",
    ) -> Schedule:
        """A schedule, checked; `every` in seconds or as a timedelta."""
        interval = None if every is None else _check_every(name, every)
        return cls(name, job, cron=cron, every=interval, timezone=timezone, missed=missed)

    def __post_init__(self) -> None:
        check_key("schedule name", self.name, required=True, error=InvalidArgumentError)
        if len(self.name) > 200:
            raise InvalidArgumentError(
                f"schedule name is {len(self.name)} characters long; the limit is 200"
            )
        if (self.cron is None) == (self.every is None):
            raise InvalidArgumentError(
                f"schedule {self.name!r}: give exactly one of cron= and every="
            )
        if self.every is not None:
            _check_every(self.name, self.every)
        object.__setattr__(self, "_zone", _zone(self.name, self.timezone))
        if self.cron is not None:
            _check_cron(self.name, self.cron)
            if self.next_after(datetime.now(UTC)) is None:
                raise InvalidArgumentError(
                    f"schedule {self.name!r}: the cron expression {self.cron!r} has no slot "
                    "from now on"
                )
        if self.every is not None and self.timezone != "UTC":
            raise InvalidArgumentError(
                f"schedule {self.name!r}: timezone= applies to cron= only (the slots of "
                "every= are multiples of it since 1970-01-01 UTC)"
            )
        if self.missed not in MISSED_POLICIES:
            raise InvalidArgumentError(
                f"schedule {self.name!r}: missed must be one of {', '.join(MISSED_POLICIES)}, "
                f"got {self.missed!r}"
            )
        if isinstance(self.job, Job):
            self.job._check()
            if self.job.run_at is not None:
                raise InvalidArgumentError(
                    f"schedule {self.name!r}: its Job has a run_at; each slot's job is due at "
                    "its slot (a callable may set run_at from the slot)"
                )
            takes_slot = False
        elif callable(self.job):
            takes_slot = _takes_an_argument(self.name, self.job)
            object.__setattr__(self, "_is_async", _is_async(self.job))
        else:
            raise InvalidArgumentError(
                f"schedule {self.name!r}: job must be a Job or a callable returning one, "
                f"got {type(self.job).__name__}"
            )
        object.__setattr__(self, "_takes_slot", takes_slot)

    @property
    def queue(self) -> str | None:
        """The queue its jobs go to, when known before a slot (a Job, not a callable)."""
        return self.job.queue if isinstance(self.job, Job) else None

    def rule(self) -> str:
        """The rule, as operators read it."""
        return rule_text(self.cron, self.every, self.timezone)

    def plan(
        self,
        last_slot: datetime,
        now: datetime,
        *,
        min_grace: float = MIN_GRACE,
        tried: Collection[datetime] = (),
    ) -> SlotPlan | None:
        """The slots after `last_slot` due by `now` (the database's clock) that this round
        enqueues, by the `missed` policy; None when no slot is due. A slot is on time
        within one period of its time, at least `min_grace` seconds (what a leader's
        failover takes) and at most MAX_GRACE; so is a slot `tried` on time before (its
        insert was refused)."""
        due = self._due(last_slot, now, MAX_MISSED_SLOTS + 1)
        if not due:
            return None
        newest = due[-1]
        period = self._period(newest).total_seconds()
        grace = max(min(max(period, MIN_GRACE), MAX_GRACE), min_grace)
        on_time = [s for s in due if (now - s).total_seconds() <= grace or s in tried]
        if self.missed == "all":
            take = due[-MAX_MISSED_SLOTS:]
        elif on_time or self.missed == "skip":
            take = on_time[-MAX_MISSED_SLOTS:]
        else:  # latest: the outage's slots, once
            take = [newest]
        return SlotPlan(tuple(take), newest, len(due) - len(take))

    def next_after(self, moment: datetime) -> datetime | None:
        """The first slot after `moment`; None when the rule has none (before MAX_TIME)."""
        if self.every is not None:
            step = _micros(self.every)
            following = EPOCH + timedelta(microseconds=(_micros(moment - EPOCH) // step + 1) * step)
            return following if following <= MAX_TIME else None
        try:
            it = _cron(self.cron or "", moment.astimezone(self._zone))
            while True:
                slot: datetime = it.get_next(datetime)
                if slot > MAX_TIME:
                    return None
                if not _repeated(slot):
                    return slot.astimezone(UTC)
        except (ValueError, OverflowError, _cron_error()):
            return None

    def job_for(self, slot: datetime) -> Job:
        """A new job for `slot`: a copy of the Job, or of what the callable returns (a
        callable that returns one object every time makes a new job every time)."""
        source = self.job
        if isinstance(source, Job):
            return _copy(source)
        if self._is_async:
            raise InvalidArgumentError(f"schedule {self.name!r}: its callable is async")
        return self._checked(_called(source, self._arguments(slot)))

    async def make_job(self, slot: datetime) -> Job:
        """`job_for`, off the event loop: a sync callable runs in a thread (it may read a
        file or a database), an async one is awaited."""
        source = self.job
        if isinstance(source, Job):
            return _copy(source)
        if self._is_async:
            made = await source(*self._arguments(slot))  # type: ignore[misc]
        else:
            made = await asyncio.to_thread(_called, source, self._arguments(slot))
        return self._checked(made)

    def _arguments(self, slot: datetime) -> tuple[datetime, ...]:
        return (slot.astimezone(self._zone),) if self._takes_slot else ()

    def _checked(self, made: object) -> Job:
        if not isinstance(made, Job):
            raise InvalidArgumentError(
                f"schedule {self.name!r}: its callable returned {type(made).__name__}, not a Job"
            )
        made._check()
        return _copy(made)

    def same_rule(self, cron: str | None, every: timedelta | None, timezone: str) -> bool:
        """Whether a stored definition has this rule."""
        return (cron, every, timezone) == (self.cron, self.every, self.timezone)

    def _due(self, last_slot: datetime, now: datetime, most: int) -> list[datetime]:
        """Slots s with last_slot < s <= now: the latest `most` of them, oldest first."""
        due: list[datetime] = []
        if self.every is not None:
            step = _micros(self.every)
            slot = _micros(now - EPOCH) // step * step
            floor = _micros(last_slot - EPOCH)
            while slot > floor and len(due) < most:
                due.append(EPOCH + timedelta(microseconds=slot))
                slot -= step
        else:
            it = _cron(self.cron or "", now.astimezone(self._zone))
            while len(due) < most:
                try:
                    slot_at: datetime = it.get_prev(datetime)
                except _cron_error():  # no slot before (a rule that starts in the future)
                    break
                if slot_at <= last_slot:
                    break
                if not _repeated(slot_at):
                    due.append(slot_at.astimezone(UTC))
        due.reverse()
        return due

    def _period(self, slot: datetime) -> timedelta:
        if self.every is not None:
            return self.every
        try:
            before: datetime = _cron(self.cron or "", slot.astimezone(self._zone)).get_prev(
                datetime
            )
        except _cron_error():  # its first slot: as late as a slot may be
            return timedelta(seconds=MAX_GRACE)
        return slot - before

    def definition(self, now: datetime) -> tuple[Any, ...]:
        """Its row's definition columns, and its next slot after `now`."""
        return (
            self.name,
            self.queue,
            self.cron,
            self.every,
            self.timezone,
            self.missed,
            self.next_after(now),
        )


@dataclass(frozen=True)
class ScheduleInfo:
    """A schedule as the database keeps it (`list_schedules()`)."""

    name: str
    queue: str | None
    """Where its jobs go (None until a callable's first job, when it has a callable)."""
    cron: str | None
    every: timedelta | None
    timezone: str
    missed: str
    paused: bool
    paused_at: datetime | None
    last_slot: datetime
    """Every slot up to it is enqueued or passed over."""
    next_slot: datetime | None
    last_job_id: Any
    last_enqueued_at: datetime | None
    enqueued: int
    """Jobs enqueued by it so far."""
    created_at: datetime
    seen_at: datetime
    """When a worker last registered it: a schedule no running code registers keeps its
    row, and nothing enqueues it."""

    @classmethod
    def from_row(cls, row: Any) -> ScheduleInfo:
        return cls(*row)

    @property
    def rule(self) -> str:
        """The rule, as operators read it."""
        return rule_text(self.cron, self.every, self.timezone)

    def to_dict(self) -> dict[str, Any]:
        data = jsonable(self)
        data["every_seconds"] = None if self.every is None else self.every.total_seconds()
        del data["every"]
        return data


class ScheduleBook:
    """The schedules registered in this process; `version` grows with every change, so
    the workers know when to write them to the database again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._schedules: dict[str, Schedule] = {}
        self.version = 0

    def add(self, schedule: Schedule) -> None:
        """Register it, or replace the one of the same name (a changed rule, a new job)."""
        with self._lock:
            self._schedules[schedule.name] = schedule
            self.version += 1

    def get(self, name: str) -> Schedule | None:
        return self._schedules.get(name)

    def all(self) -> list[Schedule]:
        with self._lock:
            return sorted(self._schedules.values(), key=lambda s: s.name)


def rule_text(cron: str | None, every: timedelta | None, timezone: str) -> str:
    """A schedule's rule in words: `cron */5 * * * * (UTC)`, `every 0:01:00`."""
    return f"cron {cron} ({timezone})" if cron else f"every {every}"


def _check_cron(name: str, cron: object) -> None:
    if not isinstance(cron, str) or not cron.strip() or len(cron) > 200:
        raise InvalidArgumentError(
            f"schedule {name!r}: cron must be a cron expression, got {cron!r}"
        )
    fields = cron.split()
    if len(fields) != 5 and not (len(fields) == 1 and fields[0].startswith("@")):
        raise InvalidArgumentError(
            f"schedule {name!r}: {cron!r} is not a cron expression of five fields (minute "
            "hour day month weekday) or an @alias such as @daily"
        )
    if not _croniter().is_valid(cron):
        raise InvalidArgumentError(f"schedule {name!r}: {cron!r} is not a valid cron expression")


def _check_every(name: str, every: object) -> timedelta:
    seconds = as_seconds(
        f"schedule {name!r}: every",
        every,
        allow_zero=False,
        maximum=MAX_EVERY.total_seconds(),
        error=InvalidArgumentError,
    )
    interval = timedelta(seconds=seconds)
    if interval < MIN_EVERY:
        raise InvalidArgumentError(
            f"schedule {name!r}: every must be 1 second or more, got {every!r}"
        )
    return interval


def _zone(name: str, timezone: object) -> ZoneInfo:
    if not isinstance(timezone, str) or not timezone or "\x00" in timezone:
        raise InvalidArgumentError(f"schedule {name!r}: timezone must be a name, got {timezone!r}")
    # not "localtime" and the like: a zone every host reads the same
    if timezone != "UTC" and timezone not in _iana_zones():
        raise InvalidArgumentError(
            f"schedule {name!r}: unknown timezone {timezone!r} (an IANA name, e.g. 'Europe/Paris')"
        )
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgumentError(
            f"schedule {name!r}: timezone {timezone!r} is not installed on this host"
        ) from None


@functools.cache
def _iana_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - {"localtime", "posixrules", "Factory"}


def _is_async(source: Callable[..., Any]) -> bool:
    call = getattr(source, "__call__", None)  # noqa: B004 (a callable object's method)
    return inspect.iscoroutinefunction(source) or inspect.iscoroutinefunction(call)


def _called(source: Callable[..., Any], arguments: tuple[datetime, ...]) -> object:
    """The callable's result; what it raises, as an Exception (a SystemExit too), so that
    it cannot end the scheduler."""
    try:
        made = source(*arguments)
    except Exception:
        raise
    except BaseException as exc:
        raise RuntimeError(f"the schedule's callable raised {exc!r}") from exc
    if inspect.isawaitable(made):
        close = getattr(made, "close", None)
        if close is not None:
            close()  # never awaited: not left to warn
        raise InvalidArgumentError("the schedule's callable returned an awaitable, not a Job")
    return made


def _repeated(slot: datetime) -> bool:
    """The second time of a wall time the autumn change repeats (one slot: the first)."""
    return slot.utcoffset() != slot.replace(fold=0).utcoffset()


_POSITIONAL = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
)


def _takes_an_argument(name: str, source: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(source).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: given the slot
        return True
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    required = [
        p
        for p in parameters
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if len(required) > 1 or any(p.kind is p.KEYWORD_ONLY for p in required):
        raise InvalidArgumentError(
            f"schedule {name!r}: its callable takes the slot's time or nothing, not "
            f"{inspect.signature(source)}"
        )
    return bool(positional)


def _copy(job: Job) -> Job:
    copy = Job(
        job.queue,
        job.data,
        unique_key=job.unique_key,
        fingerprint=job.fingerprint,
        max_attempts=job.max_attempts,
        priority=job.priority,
        timeout=job.timeout,
        concurrency_key=job.concurrency_key,
    )
    copy.trace_context = job.trace_context
    return copy


def _micros(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError:
        raise ConfigError(
            "cron schedules need croniter: pip install 'simplequeue[cron]' (every= does not)"
        ) from None
    return croniter


def _cron(expression: str, start: datetime) -> Any:
    return _croniter()(expression, start)


def _cron_error() -> type[Exception]:
    from croniter import CroniterError

    error: type[Exception] = CroniterError
    return error
