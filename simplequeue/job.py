"""Job (what is inserted and read back), JobStatus, and JobResult (what a handler returns)."""

from __future__ import annotations

import decimal
import enum
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from simplequeue.columns import READ
from simplequeue.errors import InvalidJobError

__all__ = ["Job", "JobResult", "JobStatus", "ResultKind", "new_job_id"]

INT32_MAX = 2**31 - 1
MAX_KEY_LENGTH = 1024
"""Longest queue name, unique key or fingerprint, in UTF-8 bytes: they are indexed, and a
btree entry must fit in a third of a page (2704 bytes)."""

MAX_DATA_DEPTH = 256
"""Deepest nesting of arrays and objects in job data: far enough below Python's recursion
limit that any process can decode the payload again, whatever its own stack depth."""

JSONB_MAX_BYTES = 2**28 - 1
"""PostgreSQL's limit on one jsonb value (and on any string in it): 256 MiB."""

NUMERIC_MAX_DIGITS = 131072
"""The most digits PostgreSQL's numeric (what jsonb stores numbers as) takes before the point."""

_JSONB_ENTRY_BYTES = 16
"""Upper bound of jsonb's own bytes per value, key and container (entry, header, padding)."""

EARLIEST_TIME = datetime(1, 1, 2, tzinfo=UTC)
LATEST_TIME = datetime(9999, 12, 30, tzinfo=UTC)
"""Times PostgreSQL stores and Python reads back in any session time zone (a day of margin
at either end of Python's years 1 to 9999)."""

_MAX_UTC_OFFSET = timedelta(hours=15, minutes=59, seconds=59)

# A JSON-escaped NUL that is not itself an escaped backslash followed by "u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# A JSON string token; alternatives after it match only outside strings.
_JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_EXPONENT_HINT = re.compile(r"\de\+")
_EXPONENT_FLOAT = re.compile(_JSON_STRING + r"|(-?\d+(?:\.\d+)?e\+\d+)", re.DOTALL)
_LONG_INT = re.compile(_JSON_STRING + rf"|(\d{{{NUMERIC_MAX_DIGITS + 1},}})", re.DOTALL)
_STRINGS = re.compile(_JSON_STRING, re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_ARRAYS = (list, tuple)


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


class _IdClock:
    """UUIDv7 ids that grow strictly within a process, even within one millisecond.

    RFC 9562's counter method: the 74 bits after the millisecond timestamp start at a
    random value (top bit clear, leaving room to count) at each new millisecond and go
    up by one per id within it, so jobs built in order are claimed in order. A clock
    that steps back keeps counting from the last id instead. A forked child starts afresh:
    it must not repeat its parent's sequence.
    """

    _COUNTER_BITS = 74

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = -1
        self._counter = 0

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._ms = -1

    def next(self) -> uuid.UUID:
        now = time.time_ns() // 1_000_000
        with self._lock:
            if now > self._ms:
                self._ms = now
                self._counter = int.from_bytes(os.urandom(10), "big") >> 7  # 73 random bits
            else:
                self._counter += 1
                if self._counter >> self._COUNTER_BITS:  # 2**74 ids in one millisecond
                    self._ms += 1
                    self._counter = 0
            ms, counter = self._ms, self._counter
        value = (ms & 0xFFFF_FFFF_FFFF) << 80
        value |= 0x7 << 76  # version 7
        value |= (counter >> 62) << 64  # rand_a: the counter's top 12 bits
        value |= 0b10 << 62  # variant
        value |= counter & ((1 << 62) - 1)  # rand_b: the rest
        return uuid.UUID(int=value)


_READ_ATTRIBUTES = tuple(c.attribute for c in READ if c.attribute)

_ID_CLOCK = _IdClock()
os.register_at_fork(after_in_child=_ID_CLOCK.reset)


def new_job_id() -> uuid.UUID:
    """A UUIDv7: time-ordered, so the primary key grows at its right edge like a sequence,
    and increasing within this process, so a batch is claimed in the order it was built."""
    return _ID_CLOCK.next()


_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))
"""Built once: json.dumps with non-default options builds a new encoder at every call."""


def encode_data(data: Any) -> str:
    """The job's data as JSON text, or InvalidJobError when it could not be stored in jsonb
    and read back equal: every check runs before anything is written.

    Refused: what JSON cannot express (NaN, infinities, sets, objects, lone surrogates,
    circular references), NUL characters, non-string object keys (JSON would turn them into
    strings), nesting deeper than MAX_DATA_DEPTH, integers longer than numeric allows, and
    documents over jsonb's 256 MiB. Floats of 1e16 and above are written out in full with a
    ".0", because jsonb would print "1e+16" back as the integer 10000000000000000.
    """
    if hasattr(data, "model_dump") and callable(data.model_dump):
        # JSON-compatible Python values, then our own checks: pydantic's JSON would write
        # NaN as null, and the payload would not read back as it was given.
        try:
            data = data.model_dump(mode="json")
        except ValueError as exc:  # pydantic's serialization errors are ValueErrors
            raise InvalidJobError(f"job data (a pydantic model) cannot be serialised: {exc}") from (
                exc
            )
    try:
        text = _ENCODER.encode(data)
        # ASCII text holds no lone surrogate and is its own size; the rest is encoded to check.
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidJobError(
            "job data must be JSON-serialisable as UTF-8: it contains the lone surrogate "
            f"{exc.object[exc.start : exc.end]!r}, which is not a unicode character"
        ) from exc
    except (TypeError, ValueError) as exc:
        hint = " (NaN and infinities have no JSON form)" if "float" in str(exc) else ""
        raise InvalidJobError(f"job data must be JSON-serialisable: {exc}{hint}") from exc
    except RecursionError as exc:
        raise InvalidJobError(_too_deep()) from exc
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise InvalidJobError(
            "job data contains a NUL character (\\u0000), which jsonb cannot store"
        )
    if size * (_JSONB_ENTRY_BYTES + 1) > JSONB_MAX_BYTES:
        entries = 1 + sum(text.count(char) for char in ",:[{")
        if size + entries * _JSONB_ENTRY_BYTES > JSONB_MAX_BYTES:
            raise InvalidJobError(
                f"job data is too large for jsonb: {size} bytes of JSON holding up to "
                f"{entries} values would exceed PostgreSQL's 256 MiB jsonb limit. Store "
                "large blobs elsewhere and pass a reference."
            )
    if text.count("[") + text.count("{") > MAX_DATA_DEPTH and _nesting(text) > MAX_DATA_DEPTH:
        raise InvalidJobError(_too_deep())
    _check_keys(data)
    digits = sys.get_int_max_str_digits()
    if (digits == 0 or digits > NUMERIC_MAX_DIGITS) and any(
        match.group(1) for match in _LONG_INT.finditer(text)
    ):
        raise InvalidJobError(
            f"job data holds an integer of more than {NUMERIC_MAX_DIGITS} digits, which "
            "PostgreSQL's numeric cannot store; pass it as a string"
        )
    if "e+" in text and _EXPONENT_HINT.search(text):
        text = _EXPONENT_FLOAT.sub(_positional, text)
    return text


def _too_deep() -> str:
    return (
        f"job data is nested more than {MAX_DATA_DEPTH} levels deep (arrays and objects); "
        "flatten it"
    )


def _nesting(text: str) -> int:
    """How deeply the arrays and objects of JSON text nest (brackets inside strings aside)."""
    depth = deepest = 0
    for char in _NOT_BRACKETS.sub("", _STRINGS.sub("", text)):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _check_keys(data: Any) -> None:
    """Refuse object keys that JSON would turn into strings: they would not be read back.
    (Tuples become lists, which read back equal enough to index the same way.)"""
    stack = [data]
    while stack:
        value = stack.pop()
        if type(value) is dict or isinstance(value, dict):
            for key in value:
                if type(key) is not str and not isinstance(key, str):
                    raise InvalidJobError(
                        f"job data has the {type(key).__name__} object key {key!r}: JSON "
                        "object keys are strings, so it would be read back as a different "
                        "key; convert the keys to strings first"
                    )
            stack.extend(value.values())
        elif type(value) is list or isinstance(value, _ARRAYS):
            stack.extend(value)


def _positional(match: re.Match[str]) -> str:
    """A float written with a positive exponent, in full and with a fraction, so that jsonb
    prints it back as a float (strings, matched first, stay as they are)."""
    number = match.group(1)
    if number is None:
        return match.group(0)
    text = format(decimal.Decimal(number), "f")
    return text if "." in text else text + ".0"


def check_key(name: str, value: Any, *, required: bool) -> None:
    """A queue name, unique key or fingerprint as PostgreSQL text and its index can hold."""
    if value is None and not required:
        return
    if not isinstance(value, str) or not value:
        raise InvalidJobError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidJobError(
            f"{name} is {len(value)} characters long; the limit is {MAX_KEY_LENGTH} bytes"
        )
    if "\x00" in value:
        raise InvalidJobError(
            f"{name} contains a NUL character, which PostgreSQL text cannot store"
        )
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidJobError(f"{name} is not valid unicode: {exc}") from exc
    if size > MAX_KEY_LENGTH:
        raise InvalidJobError(
            f"{name} is {size} bytes long in UTF-8; the limit is {MAX_KEY_LENGTH} bytes "
            "(it is indexed, and index entries must stay small)"
        )


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= INT32_MAX:
        raise InvalidJobError(
            f"{name} must be an integer between {low} and {INT32_MAX}, got {value!r}"
        )


MAX_TIMEOUT = 366 * 86400.0
"""A year: longer than any attempt should run, short enough to be a plain float of seconds."""


def _check_timeout(value: Any) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidJobError(f"timeout must be seconds or a timedelta, got {value!r}")
    if not 0 < value <= MAX_TIMEOUT:  # NaN fails this too
        raise InvalidJobError(
            f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, got {value!r}"
        )
    return float(value)


def require_aware(name: str, value: datetime) -> datetime:
    """Naive datetimes are ambiguous across hosts; refuse them instead of guessing a zone."""
    if not isinstance(value, datetime):
        raise InvalidJobError(f"{name} must be a datetime, got {type(value).__name__}")
    offset = value.utcoffset()
    if value.tzinfo is None or offset is None:
        raise InvalidJobError(
            f"{name} is a naive datetime; pass a timezone-aware one, e.g. datetime.now(UTC)"
        )
    if offset % timedelta(seconds=1) or abs(offset) > _MAX_UTC_OFFSET:
        raise InvalidJobError(
            f"{name} has the UTC offset {offset}, which PostgreSQL does not accept (whole "
            f"seconds up to ±15:59:59); convert it first, e.g. {name}.astimezone(UTC)"
        )
    if not EARLIEST_TIME <= value <= LATEST_TIME:
        raise InvalidJobError(
            f"{name} {value.isoformat()} is out of range: use a time between "
            f"{EARLIEST_TIME:%Y-%m-%d} and {LATEST_TIME:%Y-%m-%d} UTC, which PostgreSQL stores "
            "and Python reads back in any time zone"
        )
    return value


class Job:
    """A unit of work: built by the application to insert, and read back with its state.

    `data` is any JSON value. When the queue's handler declares a `Payload` model,
    `payload` holds the validated model while the handler runs; otherwise it is `data`.
    """

    __slots__ = (
        "_encoded",
        "_encoded_of",
        "_id",
        "_sent",
        "_stored",
        "attempt",
        "completed_at",
        "created_at",
        "data",
        "fingerprint",
        "last_error",
        "lease",
        "max_attempts",
        "payload",
        "priority",
        "queue",
        "reprocess_count",
        "run_at",
        "status",
        "timeout",
        "unique_key",
        "updated_at",
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
    ) -> None:
        self.queue = queue
        self.unique_key = unique_key
        self.fingerprint = fingerprint
        self.max_attempts = max_attempts
        self.priority = priority
        self.run_at = run_at
        self.timeout: float | None = None if timeout is None else _check_timeout(timeout)
        self._check()
        self._encoded: str | None = encode_data(data)
        self._encoded_of: Any = data
        self._id = new_job_id()
        self._sent = False  # an insert of it was sent: retrying it must not store it twice
        self._stored = False  # an insert committed it: inserting it again is a new job
        self.data = data
        self.payload: Any = data
        self.status = JobStatus.PENDING
        self.attempt = 0
        self.reprocess_count = 0
        self.lease = 0
        self.created_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.completed_at: datetime | None = None
        self.last_error: str | None = None

    @property
    def id(self) -> uuid.UUID:
        """Set when the job is built (so it can be stored beside your own rows first), and
        anew when a committed job is inserted again; not settable: two jobs never share one."""
        return self._id

    def _check(self) -> None:
        """Refuse what the table cannot store: when the job is built, and again at each
        insert, for the attributes that changed since (they are plain attributes)."""
        check_key("queue", self.queue, required=True)
        check_key("unique_key", self.unique_key, required=False)
        check_key("fingerprint", self.fingerprint, required=False)
        _check_int("max_attempts", self.max_attempts, 1)
        _check_int("priority", self.priority, -INT32_MAX)
        if self.run_at is not None:
            require_aware("run_at", self.run_at)
        if self.timeout is not None:
            _check_timeout(self.timeout)

    def _begin_insert(self) -> bool:
        """Ready the job for an insert; True when an insert of it was sent before and may
        have stored it (a retry after an error: it must not be stored twice).

        A job already stored gets a new id first: inserting it again is a new job.
        """
        if self._stored:
            self._id = new_job_id()
            self._stored = self._sent = False
        sent, self._sent = self._sent, True
        return sent

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
        job._sent = job._stored = True
        data = job.data
        job._encoded = data if encoded else None
        job.data = job.payload = job._encoded_of = None if encoded else data
        return job

    def decode_data(self) -> None:
        """Decode data claimed as JSON text; InvalidJobError if Python cannot read it."""
        if self._encoded is None or self.data is not None:
            return
        try:
            self.data = self.payload = self._encoded_of = json.loads(self._encoded)
        except (ValueError, RecursionError) as exc:
            raise InvalidJobError(f"stored payload cannot be decoded: {exc}") from None

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id}, queue={self.queue!r}, status={self.status.value}, "
            f"attempt={self.attempt}/{self.max_attempts})"
        )


class ResultKind(enum.Enum):
    """What a handler decided; the result writer turns each into one fenced transition."""

    SUCCESS = "success"
    FAILED = "failed"
    RETRY_AT = "retry_at"
    RESCHEDULE_AT = "reschedule_at"
    CANCEL = "cancel"
    CRITICAL = "critical"
    UNPROCESSABLE = "unprocessable"


@dataclass(frozen=True, slots=True)
class JobResult:
    """A handler's verdict on one attempt. Returning None from a handler means success."""

    kind: ResultKind
    error: str | None = None
    at: datetime | None = None

    @classmethod
    def success(cls) -> JobResult:
        return cls(ResultKind.SUCCESS)

    @classmethod
    def failed(cls, error: str | None = None) -> JobResult:
        """Retry after the queue's backoff; consumes the attempt."""
        return cls(ResultKind.FAILED, error)

    @classmethod
    def retry_at(cls, when: datetime, error: str | None = None) -> JobResult:
        """Retry at `when` (never sooner than the backoff allows); consumes the attempt."""
        return cls(ResultKind.RETRY_AT, error, require_aware("retry_at", when))

    @classmethod
    def reschedule_at(cls, when: datetime) -> JobResult:
        """Run again at `when` without consuming the attempt; counts as a reprocess."""
        return cls(ResultKind.RESCHEDULE_AT, None, require_aware("reschedule_at", when))

    @classmethod
    def cancel(cls) -> JobResult:
        return cls(ResultKind.CANCEL)

    @classmethod
    def critical(cls, error: str | None = None) -> JobResult:
        """Give up at once: no retry, straight to the DLQ."""
        return cls(ResultKind.CRITICAL, error)

    @classmethod
    def unprocessable(cls, error: str | None = None) -> JobResult:
        """The job can never succeed as it is (bad input): no retry."""
        return cls(ResultKind.UNPROCESSABLE, error)
