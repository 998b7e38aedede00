"""Turns a verdict (a handler's or a strategy's, one vocabulary), or a shutdown, into the
row's next state."""

from __future__ import annotations

import logging
import traceback
from datetime import datetime
from typing import Any

from simplequeue.backoff import BackoffStrategy, clamp_delay
from simplequeue.codec import encode_data
from simplequeue.errors import InvalidJobError
from simplequeue.job import Job, JobResult, JobStatus, ResultKind
from simplequeue.store import Outcome

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "describe_error",
    "outcome_for_failure",
    "outcome_for_result",
    "outcome_for_shutdown",
    "outcome_for_success",
]

DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
"""QueueConfig.max_result_bytes' default, for executors built without a config."""

log = logging.getLogger("simplequeue.executor")

_TERMINAL = {
    ResultKind.SUCCESS: JobStatus.COMPLETED,
    ResultKind.CANCEL: JobStatus.CANCELLED,
    ResultKind.CRITICAL: JobStatus.CRITICAL_FAILURE,
    ResultKind.UNPROCESSABLE: JobStatus.UNPROCESSABLE,
}


def describe_error(exc: BaseException) -> str:
    """What `last_error` keeps of an exception: its type, message and where it was raised."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the job's outcome with it
        message = "<the exception's message could not be rendered>"
    text = f"{type(exc).__name__}: {message}".rstrip(": ")
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {last.filename}:{last.lineno} in {last.name})"
    return text


FALLBACK_DELAY = 60.0
"""Seconds before a retry when the queue's backoff strategy itself fails."""


def backoff_delay(backoff: BackoffStrategy, attempt: int) -> float:
    """The strategy's delay, in seconds; a strategy that raises must not strand the job."""
    try:
        return clamp_delay(backoff.delay(attempt).total_seconds())
    except Exception:
        log.exception("backoff strategy %r failed; retrying in %gs", backoff, FALLBACK_DELAY)
        return FALLBACK_DELAY


def outcome_for_failure(
    job: Job, error: str, backoff: BackoffStrategy, not_before: datetime | None = None
) -> Outcome:
    """The attempt is spent: retry after backoff (never before `not_before`), or give up."""
    if job.attempt >= job.max_attempts:
        return Outcome(job.id, job.lease, JobStatus.FAILED, error=error)
    delay = backoff_delay(backoff, job.attempt)
    return Outcome(
        job.id, job.lease, JobStatus.PENDING, delay=delay, not_before=not_before, error=error
    )


def outcome_for_success(
    job: Job, value: Any, backoff: BackoffStrategy, max_result_bytes: int
) -> Outcome:
    """Completed, with the handler's value as JSON text. A value that cannot be stored
    (not JSON, or over `max_result_bytes`) is the handler's bug: the attempt fails, saying
    why, and is retried like any failure; the worker goes on."""
    if value is None:
        return Outcome(job.id, job.lease, JobStatus.COMPLETED)
    try:
        text = encode_data(value, "the handler's result")
    except InvalidJobError as exc:
        return outcome_for_failure(job, f"result not stored: {exc}", backoff)
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > max_result_bytes:
        error = (
            f"result not stored: the handler's result is {size} bytes of JSON; the limit is "
            f"{max_result_bytes} (max_result_bytes). Store large results elsewhere and "
            "return a reference."
        )
        return outcome_for_failure(job, error, backoff)
    return Outcome(job.id, job.lease, JobStatus.COMPLETED, result=text)


def outcome_for_result(
    job: Job,
    result: JobResult,
    backoff: BackoffStrategy,
    max_reprocess: int,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> Outcome:
    kind = result.kind
    if kind is ResultKind.SUCCESS and result.error is None:
        return outcome_for_success(job, result.result, backoff, max_result_bytes)
    if kind in _TERMINAL:
        return Outcome(job.id, job.lease, _TERMINAL[kind], error=result.error)
    if kind is ResultKind.FAILED:
        return outcome_for_failure(job, result.error or "failed", backoff)
    if kind is ResultKind.RETRY_AT:
        return outcome_for_failure(job, result.error or "retry requested", backoff, result.at)
    if kind is ResultKind.PARK and result.at is not None:  # its key waits with it
        return Outcome(
            job.id,
            job.lease,
            JobStatus.PENDING,
            refund=1,
            not_before=result.at,
            park_until=result.at,
        )
    if kind is ResultKind.SNOOZE:  # as if the attempt had not happened
        delay = clamp_delay(result.seconds)
        return Outcome(job.id, job.lease, JobStatus.PENDING, refund=1, delay=delay)
    # RESCHEDULE_AT: the attempt is given back; too many reschedules make a poison job.
    if job.reprocess_count + 1 >= max_reprocess:
        return Outcome(
            job.id,
            job.lease,
            JobStatus.BAD_JOB,
            refund=1,
            reprocess=1,
            error=f"poison job: rescheduled or stalled {job.reprocess_count + 1} "
            "times (max_reprocess_count)",
        )
    delay = backoff_delay(backoff, max(job.attempt, 1))
    return Outcome(
        job.id,
        job.lease,
        JobStatus.PENDING,
        refund=1,
        reprocess=1,
        delay=delay,
        not_before=result.at,
    )


def outcome_for_shutdown(job: Job) -> Outcome:
    """Interrupted by a stop: back to pending at once, attempt given back."""
    return Outcome(job.id, job.lease, JobStatus.PENDING, refund=1)
