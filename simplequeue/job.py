"""The model: Job (what is inserted and read back), JobStatus, and JobResult (what a
handler returns). The JSON codec is `codec.py`; the checks of its fields, `validation.py`."""

from __future__ import annotations

import enum
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic

from typing_extensions import TypeVar

from simplequeue.codec import decode_data, encode_data
from simplequeue.columns import READ
from simplequeue.errors import InvalidJobError, QueueStateError
from simplequeue.stopping import StopSignal
from simplequeue.validation import (
    INT32_MAX,
    MAX_UNIQUE_FOR,
    as_seconds,
    as_timeout,
    check_int,
    check_key,
    check_time,
    seconds_of,
)

__all__ = [
    "DEAD_STATUSES",
    "FOREVER",
    "AttemptError",
    "Forever",
    "Job",
    "JobResult",
    "JobStatus",
    "ProgressUpdate",
    "ResultKind",
    "new_job_id",
]


class JobStatus(enum.StrEnum):
    """Where a job is in its life; the values are what the `status` column holds."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNPROCESSABLE = "unprocessable"
    CRITICAL_FAILURE = "critical_failure"
    BAD_JOB = "bad_job"

    @property
    def is_live(self) -> bool:
        """Pending or running: the job may still run."""
        return self in (JobStatus.PENDING, JobStatus.RUNNING)

    @property
    def is_dead(self) -> bool:
        """Ended without success: the janitor moves it to the DLQ."""
        return not self.is_live and self is not JobStatus.COMPLETED


DEAD_STATUSES = tuple(s.value for s in JobStatus if s.is_dead)


class Forever(enum.Enum):
    """The type of `FOREVER` (an enum of one member, so that type checkers know it)."""

    FOREVER = "forever"

    def __repr__(self) -> str:
        return "simplequeue.FOREVER"

    __str__ = __repr__


FOREVER = Forever.FOREVER
"""`Job(unique_key=..., unique_for=FOREVER)`: the key stays taken for good once a job
with it was inserted (until an operator releases it), whatever became of that job."""


def as_unique_for(value: object) -> float | Forever:
    """How long a job's unique key stays taken: FOREVER, or seconds (a number or a
    timedelta) from 1 microsecond (what PostgreSQL keeps of it) to a century (FOREVER
    beyond). A bool, a string or an infinite number is refused, not guessed at."""
    if value is FOREVER:
        return FOREVER
    seconds = seconds_of(value)
    if seconds is None:
        raise InvalidJobError(
            "unique_for must be seconds (a number), a timedelta or simplequeue.FOREVER, "
            f"got {value!r:.80}"
        )
    if math.isnan(seconds):
        raise InvalidJobError(f"unique_for must be a finite number of seconds, got {value!r}")
    if seconds <= 0:
        raise InvalidJobError(f"unique_for must be more than zero seconds, got {value!r:.80}")
    if seconds == math.inf and isinstance(value, float):
        raise InvalidJobError("unique_for is infinite: for no end, pass simplequeue.FOREVER")
    if seconds > MAX_UNIQUE_FOR:
        raise InvalidJobError(
            f"unique_for must be at most a century ({MAX_UNIQUE_FOR:g} seconds), got "
            f"{value!r:.80}; for no end, pass simplequeue.FOREVER"
        )
    if seconds < 1e-6:
        raise InvalidJobError(
            f"unique_for must be 1 microsecond or more (what PostgreSQL keeps), got {value!r}"
        )
    return seconds


def _read_unique_for(value: Any) -> float | Forever | None:
    """The unique_for_seconds column as read: NULL, seconds, or Infinity (FOREVER)."""
    if value is None or value is FOREVER:
        return value
    seconds = float(value)
    return FOREVER if math.isinf(seconds) else seconds


def _uuid_of(value: int) -> uuid.UUID:
    """`uuid.UUID(int=value)` without its argument checks (a value built to be one): half
    the cost, paid for every job built."""
    made = object.__new__(uuid.UUID)
    object.__setattr__(made, "int", value)
    object.__setattr__(made, "is_safe", uuid.SafeUUID.unknown)
    return made


class IdClock:
    """UUIDv7 ids that grow strictly within a process, even within one millisecond.

    RFC 9562's counter method: the 74 bits after the millisecond timestamp start at a
    random value (top bit clear, leaving room to count) at each new millisecond and go
    up by one per id within it, so jobs built in order are claimed in order. A clock
    that steps back keeps counting from the last id instead. A forked child starts afresh:
    it must not repeat its parent's sequence.
    """

    _COUNTER_BITS = 74
    _RAND_B = (1 << 62) - 1
    """The counter's low 62 bits, the id's last field; its top 12 are the field before."""

    def __init__(
        self,
        *,
        clock: Callable[[], int] = time.time_ns,
        entropy: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._clock = clock
        self._entropy = entropy
        self._lock = threading.Lock()
        self._ms = -1
        self._counter = 0
        self._base = 0

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._ms = -1

    @staticmethod
    def _base_of(ms: int, counter: int) -> int:
        """Every bit of the id but the counter's low 62: made again only when they change."""
        value = (ms & 0xFFFF_FFFF_FFFF) << 80
        value |= 0x7 << 76  # version 7
        value |= (counter >> 62) << 64  # rand_a: the counter's top 12 bits
        return value | 0b10 << 62  # variant

    def next(self) -> uuid.UUID:
        now = self._clock() // 1_000_000
        with self._lock:
            if now > self._ms:
                self._ms = now
                counter = int.from_bytes(self._entropy(10), "big") >> 7  # 73 random bits
                self._base = self._base_of(now, counter)
            else:
                counter = self._counter + 1
                if counter >> self._COUNTER_BITS:  # 2**74 ids in one millisecond
                    self._ms += 1
                    counter = 0
                    self._base = self._base_of(self._ms, counter)
                elif not counter & self._RAND_B:  # a carry into rand_a
                    self._base = self._base_of(self._ms, counter)
            self._counter = counter
            value = self._base | (counter & self._RAND_B)
        return _uuid_of(value)


@dataclass(frozen=True)
class AttemptError:
    """Why one attempt of a job did not succeed: a job keeps one per failed attempt (the
    newest MAX_ATTEMPT_ERRORS), so its detail shows why attempts 1 and 2 failed, not only
    the last error."""

    attempt: int
    at: datetime
    error: str
    status: str
    """What the attempt led to: `pending` (runs again), or how the job ended."""
    worker_id: uuid.UUID | None = None

    @classmethod
    def from_json(cls, value: object) -> AttemptError | None:
        """One entry as stored; None for one this library did not write (a row changed by
        hand): unreadable history must never stop a job from being read or claimed."""
        if not isinstance(value, dict):
            return None
        try:
            worker = value.get("worker_id")
            at = datetime.fromisoformat(str(value["at"]))
            return cls(
                attempt=int(value.get("attempt", 0)),
                at=at if at.tzinfo else at.replace(tzinfo=UTC),
                error=str(value.get("error", "")),
                status=str(value.get("status", "")),
                worker_id=uuid.UUID(str(worker)) if worker else None,
            )
        except (KeyError, TypeError, ValueError, OverflowError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": self.at.isoformat(),
            "error": self.error,
            "status": self.status,
            "worker_id": None if self.worker_id is None else str(self.worker_id),
        }


MAX_ATTEMPT_ERRORS = 20
"""The most attempt errors a job keeps (the newest): reaped and retried without end, a
poison job must not grow its row without bound."""


def _attempt_errors(value: Any) -> tuple[AttemptError, ...]:
    """The errors column as read: JSON text (claims, asyncpg) or decoded by the driver;
    what is not a list of entries this library wrote is left out."""
    if value == "[]" or value == []:  # nearly every claimed job
        return ()
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return ()
    if not isinstance(value, list):
        return ()
    found = (AttemptError.from_json(item) for item in value)
    return tuple(error for error in found if error is not None)


def _trace_context(value: Any) -> dict[str, str] | None:
    """The trace_context column as read (JSON text, or decoded by the driver); anything but
    an object of strings is no trace context."""
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}


_READ_ATTRIBUTES = tuple(c.attribute for c in READ if c.attribute)

_STOPPING_MADE = threading.Lock()
"""Held only while a job's StopSignal is made (once per job, when first asked for)."""

_ID_CLOCK = IdClock()
os.register_at_fork(after_in_child=_ID_CLOCK.reset)


def new_job_id() -> uuid.UUID:
    """A UUIDv7: time-ordered, so the primary key grows at its right edge like a sequence,
    and increasing within this process, so a batch is claimed in the order it was built."""
    return _ID_CLOCK.next()


PayloadT = TypeVar("PayloadT", default=Any)
"""What `job.payload` holds while a handler runs: its `Payload` model (`Job[SendEmail.Payload]`)."""


class Job(Generic[PayloadT]):
    """A unit of work: built by the application to insert, and read back with its state.

    `data` is any JSON value. When the queue's handler declares a `Payload` model,
    `payload` holds the validated model while the handler runs; otherwise it is `data`.
    `Job[Model]` types `payload` as that model, for handlers declared `Handler[Model]`.
    While it runs, `stopping` tells the handler when the job is no longer its to finish
    (cancelled or taken over, the worker stopping, or its timeout passed).
    """

    __slots__ = (
        "_claim",
        "_encoded",
        "_encoded_of",
        "_id",
        "_reporter",
        "_sent",
        "_stopping",
        "_stored",
        "attempt",
        "completed_at",
        "concurrency_key",
        "created_at",
        "data",
        "errors",
        "fingerprint",
        "last_error",
        "lease",
        "max_attempts",
        "payload",
        "priority",
        "progress",
        "progress_at",
        "progress_message",
        "queue",
        "reprocess_count",
        "result",
        "run_at",
        "status",
        "timeout",
        "trace_context",
        "unique_for",
        "unique_key",
        "updated_at",
        "worker_id",
    )

    def __init__(
        self,
        queue: str,
        data: Any,
        *,
        unique_key: str | None = None,
        fingerprint: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int = 3,
        priority: int = 0,
        timeout: float | timedelta | None = None,
        concurrency_key: str | None = None,
        unique_for: float | timedelta | Forever | None = None,
    ) -> None:
        self.queue = queue
        self.unique_key = unique_key
        self.unique_for: float | Forever | None = (
            None if unique_for is None else as_unique_for(unique_for)
        )
        self.concurrency_key = concurrency_key
        self.fingerprint = fingerprint
        self.max_attempts = max_attempts
        self.priority = priority
        self.run_at = run_at
        self.timeout: float | None = None if timeout is None else as_timeout("timeout", timeout)
        self._check()
        self._encoded: str | None = encode_data(data)
        self._encoded_of: Any = data
        self._id = new_job_id()
        self._claim: tuple[uuid.UUID, int, str] | None = None
        """The run (id, lease, queue) its handler processes now, as claimed: what the
        worker writes for it, whatever the handler does to the object meanwhile."""
        self._sent = False  # an insert of it was sent: retrying it must not store it twice
        self._stored = False  # an insert committed it: inserting it again is a new job
        self.data = data
        self.payload: PayloadT = data
        self.status = JobStatus.PENDING
        self.attempt = 0
        self.reprocess_count = 0
        self.lease = 0
        self.created_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.completed_at: datetime | None = None
        self.last_error: str | None = None
        self.worker_id: uuid.UUID | None = None
        self.errors: tuple[AttemptError, ...] = ()
        self.trace_context: dict[str, str] | None = None
        self.result: Any = None
        self.progress: Any = None
        self.progress_message: str | None = None
        self.progress_at: datetime | None = None
        self._stopping: StopSignal | None = None  # made when first asked for (below)
        self._reporter: ProgressReporter | None = None

    @property
    def stopping(self) -> StopSignal:
        """Set when the job is no longer its handler's to finish (see `StopSignal`).

        Made when first asked for, not with every job built: two objects fewer for the
        garbage collector to track, which is a third of what building a batch costs."""
        signal = self._stopping
        if signal is None:
            with _STOPPING_MADE:  # two threads asking first get the same one
                signal = self._stopping
                if signal is None:
                    signal = self._stopping = StopSignal()
        return signal

    @property
    def id(self) -> uuid.UUID:
        """Set when the job is built (so it can be stored beside your own rows first), and
        anew when a committed job is inserted again; not settable: two jobs never share one."""
        return self._id

    def _check(self) -> None:
        """Refuse what the table cannot store: when the job is built, and again at each
        insert, for the attributes that changed since (they are plain attributes)."""
        check_key("queue", self.queue, required=True)
        if self.unique_key is not None:  # the optional keys: nearly always None
            check_key("unique_key", self.unique_key, required=False)
        if self.fingerprint is not None:
            check_key("fingerprint", self.fingerprint, required=False)
        if self.concurrency_key is not None:
            check_key("concurrency_key", self.concurrency_key, required=False)
        check_int("max_attempts", self.max_attempts, 1)
        check_int("priority", self.priority, -INT32_MAX)
        if self.run_at is not None:
            check_time("run_at", self.run_at)
        if self.timeout is not None:
            # Seconds, as the constructor keeps it: one set since may be a timedelta.
            self.timeout = as_timeout("timeout", self.timeout)
        if self.unique_for is not None:
            as_unique_for(self.unique_for)
            if self.unique_key is None:
                raise InvalidJobError(
                    "unique_for needs a unique_key: it says how long that key stays taken "
                    "(Job(..., unique_key='welcome:42', unique_for=timedelta(hours=1)))"
                )

    def _run_as_claimed(self) -> tuple[uuid.UUID, int, str]:
        """The run its handler processes (id, lease, queue), as claimed; or as it is now,
        when no handler runs it."""
        return self._claim or (self._id, self.lease, self.queue)

    def _begin_insert(self) -> bool:
        """Ready the job for an insert; True when an insert of it was sent before and may
        have stored it (a retry after an error: it must not be stored twice).

        A job already stored gets a new id first: inserting it again is a new job.
        """
        if self._claim is not None:
            raise InvalidJobError(
                f"job {self._id} is being processed: it cannot be inserted again while its "
                "handler runs (that would take its id from the run). Insert a new Job, e.g. "
                "Job(job.queue, job.data)"
            )
        if self._stored:
            self._id = new_job_id()
            self._stored = self._sent = False
        sent, self._sent = self._sent, True
        return sent

    @property
    def unique_for_seconds(self) -> float | None:
        """How long the unique key stays taken, as the insert stores it: seconds, infinity
        for FOREVER, None when the job asks only that no two live jobs share its key."""
        if self.unique_for is None:
            return None
        period = as_unique_for(self.unique_for)
        return math.inf if isinstance(period, Forever) else period

    @property
    def trace_context_json(self) -> str | None:
        """The trace context as the insert stores it."""
        return None if self.trace_context is None else json.dumps(self.trace_context)

    @property
    def encoded_data(self) -> str:
        """The data as JSON text, encoded when the job was built, and again if `data` was
        given another value since (a value changed in place is not seen)."""
        if self._encoded is None or self._encoded_of is not self.data:
            self._encoded = encode_data(self.data)
            self._encoded_of = self.data
        return self._encoded

    @classmethod
    def from_row(cls, row: Sequence[Any], *, encoded: bool = False) -> Job:
        """A job read back from the database: `row` holds the columns of `columns.READ`,
        in their order, each read into the attribute that list names.

        With `encoded`, the data column is JSON text still to be decoded by `decode_data()`.
        """
        job = cls.__new__(cls)
        for attribute, value in zip(_READ_ATTRIBUTES, row, strict=True):
            setattr(job, attribute, value)
        job.status = JobStatus(job.status)
        job.errors = _attempt_errors(job.errors)
        job.trace_context = _trace_context(job.trace_context)
        job.unique_for = _read_unique_for(job.unique_for)
        job._sent = job._stored = True
        job._claim = None
        job._stopping = StopSignal()  # a claimed job: its worker signals it
        job._reporter = None  # bound by the worker that runs it
        data = job.data
        job._encoded = data if encoded else None
        job.data = job._encoded_of = None if encoded else data
        job.payload = job.data  # a model only once a handler's Payload validated it
        return job

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-ready values (what a web framework can return as it is): every
        column it was read with, the id as a string, times in ISO 8601."""
        values: dict[str, Any] = {}
        for column in READ:
            if column.name == "data":  # as JSON reads it back, a pydantic model included
                values["data"] = decode_data(self.encoded_data)
                continue
            if column.name == "errors":
                values["errors"] = [error.to_dict() for error in self.errors]
                continue
            value = getattr(self, column.attribute or column.name)
            if isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, enum.Enum):
                value = value.value
            values["id" if column.name == "id" else (column.attribute or column.name)] = value
        return values

    def _as_claimed(self) -> Job[PayloadT]:
        """This job as a claim hands it to a worker: running, its attempt and lease
        counted, its data JSON text still to decode (what a stored job gives a handler)."""
        as_stored = {
            "data": self.encoded_data,
            "errors": [e.to_dict() for e in self.errors],
            "trace_context": self.trace_context_json,
        }
        row = [as_stored.get(name, getattr(self, name)) for name in _READ_ATTRIBUTES]
        claimed: Job[PayloadT] = Job.from_row(row, encoded=True)
        claimed.status = JobStatus.RUNNING
        claimed.attempt += 1
        claimed.lease += 1
        return claimed

    def set_progress(self, value: Any, message: str | None = None) -> ProgressUpdate:
        """Record how far this attempt has come: any JSON value (at most
        `max_progress_bytes`), and an optional short text. `get_job`, the command line,
        the HTTP API and the dashboard show the latest; the next claim clears it.

        `await job.set_progress(...)` in an async handler; in a sync handler (its thread)
        it is a plain call that returns once written. Either way the answer is True when
        recorded, False when this run no longer holds the job (cancelled, or reaped and
        claimed elsewhere): nothing changes then. QueueStateError when no worker runs this
        job object (one built or read by the application).
        """
        reporter = self._reporter
        if reporter is None:
            raise QueueStateError(
                f"job {self.id} is not being processed by a worker: set_progress() is for "
                "the handler running it (the job its process() received)"
            )
        return reporter(self, value, message)

    def decode_data(self) -> None:
        """Decode data claimed as JSON text; InvalidJobError if Python cannot read it."""
        if self._encoded is None or self.data is not None:
            return
        self.data = self.payload = self._encoded_of = decode_data(self._encoded)

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id}, queue={self.queue!r}, status={self.status.value}, "
            f"attempt={self.attempt}/{self.max_attempts})"
        )


class ProgressUpdate:
    """What `Job.set_progress` returns. In an async handler, await it: the write happens
    then (an update never awaited is never written, as with any coroutine). In a sync
    handler's thread the write is already done. Awaited, or taken as a bool once done, it
    says whether the progress was recorded (False: the run no longer holds the job)."""

    __slots__ = ("_pending", "_recorded")

    def __init__(
        self, pending: Coroutine[Any, Any, bool] | None = None, *, recorded: bool = False
    ) -> None:
        self._pending = pending
        self._recorded = recorded

    def __await__(self) -> Generator[Any, None, bool]:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._recorded = yield from pending.__await__()
        return self._recorded

    def __bool__(self) -> bool:
        if self._pending is not None:
            raise TypeError(
                "in an async handler, await the progress update: `await job.set_progress(...)`"
            )
        return self._recorded

    def __repr__(self) -> str:
        state = "not awaited yet" if self._pending is not None else f"recorded={self._recorded}"
        return f"ProgressUpdate({state})"


ProgressReporter = Callable[["Job[Any]", Any, "str | None"], ProgressUpdate]
"""What a worker binds to each job it runs: writes one progress update of that run."""


class ResultKind(enum.Enum):
    """A verdict on one attempt, a handler's or a strategy's: the result writer turns each
    into one fenced transition (the table in docs/concepts.md, "Verdicts")."""

    SUCCESS = "success"
    FAILED = "failed"
    RETRY_AT = "retry_at"
    RESCHEDULE_AT = "reschedule_at"
    SNOOZE = "snooze"
    PARK = "park"
    CANCEL = "cancel"
    CRITICAL = "critical"
    UNPROCESSABLE = "unprocessable"


@dataclass(frozen=True, slots=True)
class JobResult:
    """A verdict on one attempt: what a handler returns (None means success), and what
    a strategy's decision carries."""

    kind: ResultKind
    error: str | None = None
    at: datetime | None = None
    seconds: float = 0.0
    """How long a snooze lasts."""
    result: Any = None
    """A success's value, stored as the job's `result` (JSON; None: no result)."""

    @classmethod
    def success(cls, result: Any = None) -> JobResult:
        """Completed; `result` (any JSON value, at most `max_result_bytes`) is stored as
        the job's `result`. Returning the value itself from `process` does the same."""
        return cls(ResultKind.SUCCESS, result=result)

    @classmethod
    def failed(cls, error: str | None = None) -> JobResult:
        """Retry after the queue's backoff; consumes the attempt."""
        return cls(ResultKind.FAILED, error)

    @classmethod
    def retry_at(cls, when: datetime, error: str | None = None) -> JobResult:
        """Retry at `when` (never sooner than the backoff allows); consumes the attempt."""
        return cls(ResultKind.RETRY_AT, error, check_time("retry_at", when))

    @classmethod
    def reschedule_at(cls, when: datetime) -> JobResult:
        """Run again at `when` without consuming the attempt; counts as a reprocess."""
        return cls(ResultKind.RESCHEDULE_AT, None, check_time("reschedule_at", when))

    @classmethod
    def snooze(cls, delay: float | timedelta) -> JobResult:
        """Run again after `delay` (seconds or a timedelta) as if this attempt had not
        happened: no attempt spent, no reprocess counted. For "not now" (a rate limit, a
        resource busy), not for failures: a job snoozed forever never ends."""
        return cls(
            ResultKind.SNOOZE, seconds=as_seconds("snooze delay", delay, error=InvalidJobError)
        )

    @classmethod
    def park(cls, until: datetime) -> JobResult:
        """Not before `until`, for this job and every job of its concurrency key (of its
        queue, when it has none): none of them starts before then, across the fleet. No
        attempt is spent. For a service that said "not now" (a 429 with Retry-After)."""
        return cls(ResultKind.PARK, at=check_time("park until", until))

    @classmethod
    def cancel(cls, error: str | None = None) -> JobResult:
        """End as cancelled: no retry, to the DLQ."""
        return cls(ResultKind.CANCEL, error)

    @classmethod
    def critical(cls, error: str | None = None) -> JobResult:
        """Give up at once: no retry, straight to the DLQ."""
        return cls(ResultKind.CRITICAL, error)

    @classmethod
    def unprocessable(cls, error: str | None = None) -> JobResult:
        """The job can never succeed as it is (bad input): no retry."""
        return cls(ResultKind.UNPROCESSABLE, error)
