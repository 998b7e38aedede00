"""Job (what is inserted and read back), JobStatus, and JobResult (what a handler returns)."""

from __future__ import annotations

import enum
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from simplequeue.errors import InvalidJobError

__all__ = ["Job", "JobResult", "JobStatus", "ResultKind", "new_job_id"]

INT32_MAX = 2**31 - 1
MAX_KEY_LENGTH = 1024
"""Longest queue name, unique key or fingerprint: they are indexed, so keep them short."""

# A JSON-escaped NUL that is not itself an escaped backslash followed by "u0000".
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


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


def new_job_id() -> uuid.UUID:
    """A UUIDv7: time-ordered, so the primary key grows at its right edge like a sequence."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 random bits: 12 for rand_a, 62 for rand_b
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


def encode_data(data: Any) -> str:
    """The job's data as JSON text, or InvalidJobError when PostgreSQL could not store it."""
    if hasattr(data, "model_dump_json") and callable(data.model_dump_json):
        data = json.loads(data.model_dump_json())
    try:
        text = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        text.encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(f"job data must be JSON-serialisable: {exc}") from exc
    except RecursionError as exc:
        raise InvalidJobError("job data is nested too deeply to encode as JSON") from exc
    if "\\u0000" in text and _ESCAPED_NUL.search(text):
        raise InvalidJobError(
            "job data contains a NUL character (\\u0000), which jsonb cannot store"
        )
    return text


def _check_key(name: str, value: Any, *, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str) or not value:
        raise InvalidJobError(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidJobError(
            f"{name} is {len(value)} characters long; the limit is {MAX_KEY_LENGTH}"
        )
    if "\x00" in value:
        raise InvalidJobError(
            f"{name} contains a NUL character, which PostgreSQL text cannot store"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidJobError(f"{name} is not valid unicode: {exc}") from exc


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= INT32_MAX:
        raise InvalidJobError(
            f"{name} must be an integer between {low} and {INT32_MAX}, got {value!r}"
        )


def require_aware(name: str, value: datetime) -> datetime:
    """Naive datetimes are ambiguous across hosts; refuse them instead of guessing a zone."""
    if not isinstance(value, datetime):
        raise InvalidJobError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidJobError(
            f"{name} is a naive datetime; pass a timezone-aware one, e.g. datetime.now(UTC)"
        )
    return value


class Job:
    """A unit of work: built by the application to insert, and read back with its state.

    `data` is any JSON value. When the queue's handler declares a `Payload` model,
    `payload` holds the validated model while the handler runs; otherwise it is `data`.
    """

    __slots__ = (
        "_encoded",
        "attempt",
        "completed_at",
        "created_at",
        "data",
        "fingerprint",
        "id",
        "last_error",
        "lease",
        "max_attempts",
        "payload",
        "priority",
        "queue",
        "reprocess_count",
        "run_at",
        "status",
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
    ) -> None:
        _check_key("queue", queue, required=True)
        _check_key("unique_key", unique_key, required=False)
        _check_key("fingerprint", fingerprint, required=False)
        _check_int("max_attempts", max_attempts, 1)
        _check_int("priority", priority, -INT32_MAX)
        if run_at is not None:
            require_aware("run_at", run_at)
        self._encoded: str | None = encode_data(data)
        self.id: uuid.UUID = new_job_id()
        self.queue = queue
        self.data = data
        self.payload: Any = data
        self.unique_key = unique_key
        self.fingerprint = fingerprint
        self.run_at = run_at
        self.max_attempts = max_attempts
        self.priority = priority
        self.status = JobStatus.PENDING
        self.attempt = 0
        self.reprocess_count = 0
        self.lease = 0
        self.created_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.completed_at: datetime | None = None
        self.last_error: str | None = None

    @property
    def encoded_data(self) -> str:
        """The data as JSON text, encoded once when the job was built."""
        if self._encoded is None:
            self._encoded = encode_data(self.data)
        return self._encoded

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Job:
        """A job read back from the database, in the column order of `store.JOB_COLUMNS`."""
        job = cls.__new__(cls)
        (
            job.id,
            job.queue,
            job.data,
            status,
            job.priority,
            job.attempt,
            job.max_attempts,
            job.reprocess_count,
            job.lease,
            job.unique_key,
            job.fingerprint,
            job.run_at,
            job.created_at,
            job.updated_at,
            job.completed_at,
            job.last_error,
        ) = row
        job.status = JobStatus(status)
        job.payload = job.data
        job._encoded = None
        return job

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
