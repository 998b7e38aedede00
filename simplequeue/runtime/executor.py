"""Runs one claimed job: heartbeat → strategy permit → payload → handler → result."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from pydantic import ValidationError

from simplequeue import tracing
from simplequeue.backoff import Fixed
from simplequeue.blocking import BlockingQueue
from simplequeue.errors import InvalidJobError
from simplequeue.handler import Handler
from simplequeue.job import Job, JobResult, JobStatus, ProgressReporter
from simplequeue.permits import Permit, StrategyDecision
from simplequeue.registry import QueueRegistry
from simplequeue.runtime.heartbeat import Heartbeater
from simplequeue.runtime.outage import describe
from simplequeue.runtime.outcomes import (
    DEFAULT_MAX_RESULT_BYTES,
    FALLBACK_DELAY,
    describe_error,
    outcome_for_failure,
    outcome_for_result,
    outcome_for_shutdown,
    outcome_for_success,
)
from simplequeue.runtime.results import ResultWriter
from simplequeue.stats import LATENCY_BUCKETS, Histogram
from simplequeue.stopping import StopReason
from simplequeue.store import Outcome

__all__ = ["Executor", "Leftover"]

log = logging.getLogger("simplequeue.executor")


_WAITED = 0.001
"""Seconds a strategy's acquire() may take and still count as not having waited. A job that
waited longer may have been cancelled or taken over meanwhile: it is checked first."""


class Executor:
    def __init__(
        self,
        queue: Any,
        registry: QueueRegistry,
        heartbeats: Heartbeater,
        results: ResultWriter,
        ownership: Callable[[Job], Awaitable[bool]],
        *,
        max_reprocess: int,
        threads: int,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        progress: ProgressReporter | None = None,
    ) -> None:
        """`queue` is what handlers receive as their first argument (the facade): the
        runtime passes it on and never calls it. `progress` is bound to each job it runs,
        for `job.set_progress` to reach the database."""
        self._queue = queue
        self._max_result_bytes = max_result_bytes
        self._progress = progress
        self._blocking: BlockingQueue | None = None  # what sync handlers receive instead
        self._registry = registry
        self._heartbeats = heartbeats
        self._results = results
        self._still_ours = ownership
        self._max_reprocess = max_reprocess
        self.handler_seconds = Histogram(LATENCY_BUCKETS)
        # As many threads as jobs may run: a sync job holds its permits until its thread
        # returns, so no job ever waits for a thread, and its timeout counts from its start.
        self._threads = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="simplequeue-job"
        )

    async def execute(self, job: Job) -> Leftover | None:
        """Process `job` and hand its outcome to the result writer.

        Returns the handler's work when it outlived its timeout and still runs (a thread
        cannot be interrupted; a task may ignore its cancellation): the job's permits stay
        taken until it ends. Cancelled (by a stop), the job goes back to pending without
        spending its attempt.
        """
        leftover: Leftover | None = None
        job._reporter = self._progress
        run_id, lease, queue = job._claim = (job.id, job.lease, job.queue)
        self._heartbeats.track(job)  # not a context manager: this is the per-job hot path
        try:
            try:
                outcome, leftover = await self.attempt(job)
            except asyncio.CancelledError:
                interrupted = outcome_for_shutdown(job)
                interrupted.job_id, interrupted.lease, interrupted.queue = run_id, lease, queue
                await self._results.submit(interrupted)
                log.info(
                    "job %s interrupted by shutdown; returned to pending", job.id, extra=_extra(job)
                )
                raise
            except Exception as exc:  # a bug of ours must not strand the job as running
                log.exception("job %s: processing failed unexpectedly", job.id, extra=_extra(job))
                outcome = outcome_for_failure(
                    job, f"internal error: {describe_error(exc)}", Fixed(FALLBACK_DELAY)
                )
            if outcome is not None:
                if outcome.error is not None:
                    _log_failure(job, outcome)
                # the run as claimed, whatever the handler did to the object; the queue's
                # durability decides how the write commits
                outcome.job_id, outcome.lease, outcome.queue = run_id, lease, queue
                await self._results.submit(outcome)
        finally:
            self._heartbeats.untrack(job)
            job._claim = None
        return leftover

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def attempt(self, job: Job) -> tuple[Outcome | None, Leftover | None]:
        """The outcome of this attempt (None: the job is no longer ours, nothing to write),
        and the handler's work if it outlived its timeout."""
        handler = self._registry.handlers[job.queue]
        backoff = self._registry.backoff(job.queue)
        try:
            job.decode_data()
        except InvalidJobError as exc:
            return Outcome(job.id, job.lease, JobStatus.UNPROCESSABLE, error=str(exc)), None
        strategy = self._registry.strategy(job.queue)
        asked = time.monotonic()
        try:
            permit = await strategy.acquire(job)
        except StrategyDecision as decision:  # the same verdicts as a handler's
            outcome = outcome_for_result(
                job, decision.result, backoff, self._max_reprocess, self._max_result_bytes
            )
            return outcome, None
        except BaseException as exc:
            _reraise_if_stopping(exc)
            log.exception("queue strategy failed for job %s", job.id, extra=_extra(job))
            return outcome_for_failure(job, f"strategy error: {describe_error(exc)}", backoff), None
        if not callable(getattr(permit, "release", None)):
            error = (
                f"strategy error: {type(strategy).__name__}.acquire() returned "
                f"{type(permit).__name__}, not a Permit (an object with release())"
            )
            log.error("job %s: %s", job.id, error, extra=_extra(job))
            return outcome_for_failure(job, error, backoff), None
        leftover = None
        try:
            if time.monotonic() - asked > _WAITED:
                owned = await self._owned(job)
                if owned is None:  # the database could not say: not run, attempt given back
                    return outcome_for_shutdown(job), None
                if not owned:
                    return None, None
            if handler.Payload is not None:
                try:
                    job.payload = handler.Payload.model_validate(job.data)
                except ValidationError as exc:
                    error = f"payload does not validate: {exc}"
                    return Outcome(job.id, job.lease, JobStatus.UNPROCESSABLE, error=error), None
            began = time.monotonic()
            try:
                with tracing.processing(job) as span:
                    result = await self._call(handler, job)
                    if span is not None and isinstance(result, JobResult):
                        span.set_attribute("simplequeue.result", result.kind.value)
            except HandlerTimeout as exc:
                leftover = exc.leftover
                return outcome_for_failure(job, str(exc), backoff), leftover
            except BaseException as exc:  # sys.exit() in a handler must not end the worker
                _reraise_if_stopping(exc)
                return outcome_for_failure(job, describe_error(exc), backoff), None
            finally:
                self.handler_seconds.observe(time.monotonic() - began)
        finally:
            if leftover is None or leftover.done():
                _release(permit, job)
            else:
                leftover.add_done_callback(lambda _: _release(permit, job))
        if isinstance(result, JobResult):
            outcome = outcome_for_result(
                job, result, backoff, self._max_reprocess, self._max_result_bytes
            )
            return outcome, None
        # None: a success without result; any other value is the job's result.
        return outcome_for_success(job, result, backoff, self._max_result_bytes), None

    async def _owned(self, job: Job) -> bool | None:
        """Still this worker's to run? Checked after a wait: a job cancelled (or reaped and
        claimed elsewhere) while it waited for its strategy permit must not run. None when
        the database could not answer (a lost connection, no free one in the pool): that
        is no verdict on the job, and must not spend its attempt."""
        try:
            ours = not self._heartbeats.is_lost(job) and await self._still_ours(job)
        except psycopg.OperationalError as exc:
            log.warning(
                "job %s: could not check it is still ours after its strategy wait (%s); "
                "returned to pending, attempt given back",
                job.id,
                describe(exc),
                extra=_extra(job),
            )
            return None
        if not ours:
            log.info(
                "job %s was cancelled or taken over while it waited for its strategy "
                "permit; not run",
                job.id,
                extra=_extra(job),
            )
            return False
        return True

    async def _call(self, handler: Handler, job: Job) -> Any:
        """The handler's result, or what it raised. Past its timeout the work is asked to
        stop (a task is cancelled; a thread cannot be) and HandlerTimeout carries it."""
        limit = job.timeout if job.timeout is not None else handler.timeout
        if handler.runs_in_thread:
            if self._blocking is None:
                self._blocking = BlockingQueue(self._queue, asyncio.get_running_loop())
            # plain calls, where the facade's coroutines could not be awaited
            call = functools.partial(handler.process, self._blocking, job)
            work: Leftover = asyncio.wrap_future(self._threads.submit(call))
        elif limit is None:
            return await _settled(handler.process(self._queue, job))  # the common, fast path
        else:
            work = asyncio.ensure_future(handler.process(self._queue, job))
        # A thread's future is not cancelled: that would mark it done while the thread runs.
        stoppable = isinstance(work, asyncio.Task)
        try:
            # asyncio.wait never cancels what it waits for: the work outlives a timeout.
            done, _ = await asyncio.wait([work], timeout=limit)
        except asyncio.CancelledError:
            if stoppable:
                work.cancel()  # stopping: the handler's task goes with us
            raise
        if not done:
            job.stopping.set(StopReason.TIMEOUT)  # a thread may see it and give up
            if stoppable:
                work.cancel()
            raise HandlerTimeout(f"timed out after {limit:g}s", work)
        return await _settled(work)


Leftover = asyncio.Future[Any]
"""A handler's work (its task, or its thread's future) that may outlive its attempt."""


async def _settled(work: Awaitable[Any]) -> Any:
    """Await the handler's work; a `process` that returned an awaitable (an async
    function behind a plain decorator, run in a thread) is awaited in turn."""
    result = await work
    while inspect.isawaitable(result):
        result = await result
    return result


def _reraise_if_stopping(exc: BaseException) -> None:
    """A CancelledError is a stop only when this task is being cancelled; one that a
    handler or a strategy raised itself (a cancelled inner task) is a failed attempt, and
    would otherwise give the attempt back and run the job again and again."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise exc


def _release(permit: Permit, job: Job) -> None:
    """Release a strategy permit; one whose release() raises must not change the outcome."""
    try:
        permit.release()
    except Exception:
        log.exception("the strategy permit of job %s failed to release", job.id, extra=_extra(job))


class HandlerTimeout(Exception):
    """The handler ran past its timeout: a task was cancelled, a thread left running."""

    def __init__(self, message: str, leftover: Leftover) -> None:
        super().__init__(message)
        self.leftover = leftover


LOGGED_ERROR_CHARS = 1000
"""A log line keeps this much of an error's text, on one line; the job's row keeps it all
(up to MAX_ERROR_CHARS), line breaks included."""


def _log_failure(job: Job, outcome: Outcome) -> None:
    """A failed attempt, with its error and what comes next: the next run, or the end."""
    error = " ".join((outcome.error or "")[:LOGGED_ERROR_CHARS].split())  # one line
    tried = f"attempt {job.attempt}/{job.max_attempts}"
    if outcome.status == JobStatus.PENDING:
        when = f"in {outcome.delay:g}s"
        if outcome.not_before is not None:  # due at the later of the two, as the row says
            due = outcome.not_before
            with contextlib.suppress(OverflowError):  # a delay past year 9999: clamped later
                due = max(due, datetime.now(UTC) + timedelta(seconds=outcome.delay))
            when = f"at {due.isoformat(timespec='seconds')}"
        log.warning("job %s %s failed: %s; runs again %s", job.id, tried, error, when,
                    extra=_extra(job))  # fmt: skip
    else:
        log.warning("job %s ended %s after %s: %s", job.id, outcome.status, tried, error,
                    extra=_extra(job))  # fmt: skip


def _extra(job: Job) -> dict[str, Any]:
    return {"job_id": str(job.id), "queue": job.queue, "attempt": job.attempt}
