"""Turns a verdict (a handler's or a strategy's, one vocabulary), or a shutdown, into the
row's next state."""

from __future__ import annotations

import logging
import traceback
from datetime import datetime

from simplequeue.backoff import BackoffStrategy, clamp_delay
from simplequeue.job import Job, JobResult, JobStatus, ResultKind
from simplequeue.store import Outcome

__all__ = [
    "describe_error",
    "outcome_for_failure",
    "outcome_for_result",
    "outcome_for_shutdown",
]

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


def outcome_for_result(
    job: Job, result: JobResult, backoff: BackoffStrategy, max_reprocess: int
) -> Outcome:
    kind = result.kind
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
