"""Runs one claimed job: heartbeat → strategy permit → payload → handler → result."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from simplequeue.backoff import Fixed
from simplequeue.errors import InvalidJobError
from simplequeue.handler import Handler
from simplequeue.job import Job, JobResult, JobStatus
from simplequeue.permits import CancelJob, MarkCompleted, Permit, RetryJob, TryAfter
from simplequeue.registry import QueueRegistry
from simplequeue.runtime.heartbeat import Heartbeater
from simplequeue.runtime.outcomes import (
    FALLBACK_DELAY,
    describe_error,
    outcome_for_failure,
    outcome_for_result,
    outcome_for_shutdown,
    outcome_for_try_after,
)
from simplequeue.runtime.results import ResultWriter
from simplequeue.store import Outcome

if TYPE_CHECKING:
    from simplequeue.queue import SimpleQueue

__all__ = ["Executor"]

log = logging.getLogger("simplequeue.executor")


_WAITED = 0.001
"""Seconds a strategy's acquire() may take and still count as not having waited. A job that
waited longer may have been cancelled or taken over meanwhile: it is checked first."""


class Executor:
    def __init__(
        self,
        queue: SimpleQueue,
        registry: QueueRegistry,
        heartbeats: Heartbeater,
        results: ResultWriter,
        ownership: Callable[[Job], Awaitable[bool]],
        *,
        max_reprocess: int,
        threads: int,
    ) -> None:
        self._queue = queue
        self._registry = registry
        self._heartbeats = heartbeats
        self._results = results
        self._still_ours = ownership
        self._max_reprocess = max_reprocess
        self._straggling: set[asyncio.Task[Any]] = set()
        # As many threads as jobs may run: a sync job holds its permits until its thread
        # returns, so no job ever waits for a thread, and its timeout counts from its start.
        self._threads = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="simplequeue-job"
        )

    async def execute(self, job: Job) -> None:
        """Process `job` and hand its outcome to the result writer; return once nothing of
        it runs any more (a sync handler past its timeout holds its permits until then).

        Cancelled (by a stop), the job goes back to pending without spending its attempt.
        """
        straggler: Straggler | None = None
        self._heartbeats.track(job)  # not a context manager: this is the per-job hot path
        try:
            try:
                outcome, straggler = await self._attempt(job)
            except asyncio.CancelledError:
                await self._results.submit(outcome_for_shutdown(job))
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
                await self._results.submit(outcome)
        finally:
            self._heartbeats.untrack(job)
        if straggler is not None:
            task = asyncio.current_task()
            assert task is not None  # execute() always runs in a task
            self._straggling.add(task)
            try:
                await straggler.finished()
            finally:
                self._straggling.discard(task)

    def stop_waiting_for_threads(self) -> None:
        """At a stop, stop holding permits for threads past their timeout: their results
        are written, and nothing will be claimed any more."""
        for task in list(self._straggling):
            task.cancel()

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _attempt(self, job: Job) -> tuple[Outcome | None, Straggler | None]:
        """The outcome of this attempt (None: the job is no longer ours, nothing to write),
        and the thread of a sync handler that outlived its timeout."""
        handler = self._registry.handlers[job.queue]
        backoff = self._registry.backoff(job.queue)
        try:
            job.decode_data()
        except InvalidJobError as exc:
            return Outcome(job.id, job.lease, JobStatus.UNPROCESSABLE, error=str(exc)), None
        asked = time.monotonic()
        try:
            permit = await self._registry.strategy(job.queue).acquire(job)
        except CancelJob:
            outcome = Outcome(job.id, job.lease, JobStatus.CANCELLED, error="cancelled by strategy")
            return outcome, None
        except MarkCompleted:
            return Outcome(job.id, job.lease, JobStatus.COMPLETED), None
        except TryAfter as wait:
            return outcome_for_try_after(job, wait.seconds), None
        except RetryJob as retry:
            return outcome_for_failure(job, retry.error, backoff), None
        except Exception as exc:
            log.exception("queue strategy failed for job %s", job.id, extra=_extra(job))
            return outcome_for_failure(job, f"strategy error: {describe_error(exc)}", backoff), None
        if not callable(getattr(permit, "release", None)):
            error = (
                f"strategy error: {type(self._registry.strategy(job.queue)).__name__}.acquire() "
                f"returned {type(permit).__name__}, not a Permit (an object with release())"
            )
            log.error("job %s: %s", job.id, error, extra=_extra(job))
            return outcome_for_failure(job, error, backoff), None
        straggler = None
        try:
            if time.monotonic() - asked > _WAITED and not await self._owned(job):
                return None, None
            if handler.Payload is not None:
                try:
                    job.payload = handler.Payload.model_validate(job.data)
                except ValidationError as exc:
                    error = f"payload does not validate: {exc}"
                    return Outcome(job.id, job.lease, JobStatus.UNPROCESSABLE, error=error), None
            try:
                result = await self._call(handler, job)
            except HandlerTimeout as exc:
                straggler = exc.straggler
                if straggler is not None:
                    straggler.permit = permit
                return outcome_for_failure(job, str(exc), backoff), straggler
            except Exception as exc:
                log.warning("job %s raised %s", job.id, type(exc).__name__, extra=_extra(job))
                return outcome_for_failure(job, describe_error(exc), backoff), None
        finally:
            if straggler is None:
                permit.release()
        if result is None:
            result = JobResult.success()
        elif not isinstance(result, JobResult):
            error = f"handler returned {type(result).__name__}; expected JobResult or None"
            return outcome_for_failure(job, error, backoff), None
        return outcome_for_result(job, result, backoff, self._max_reprocess), None

    async def _owned(self, job: Job) -> bool:
        """Still this worker's to run? Checked after a wait: a job cancelled (or reaped and
        claimed elsewhere) while it waited for its strategy permit must not run."""
        if self._heartbeats.is_lost(job) or not await self._still_ours(job):
            log.info(
                "job %s was cancelled or taken over while it waited for its strategy "
                "permit; not run",
                job.id,
                extra=_extra(job),
            )
            return False
        return True

    async def _call(self, handler: Handler, job: Job) -> Any:
        limit = job.timeout if job.timeout is not None else handler.timeout
        if not handler.runs_in_thread:
            work = handler.process(self._queue, job)
            if limit is None:
                return await work
            try:
                async with asyncio.timeout(limit) as scope:
                    return await work
            except TimeoutError:
                if scope.expired():
                    raise HandlerTimeout(f"timed out after {limit:g}s") from None
                raise
        call = functools.partial(handler.process, self._queue, job)
        thread = asyncio.wrap_future(self._threads.submit(call))
        # asyncio.wait never cancels what it waits for: past the timeout the thread runs on.
        done, _ = await asyncio.wait([thread], timeout=limit)
        if done:
            return thread.result()
        raise HandlerTimeout(f"timed out after {limit:g}s", Straggler(thread))


class Straggler:
    """A sync handler's thread still running after its attempt ended (timed out): a
    thread cannot be interrupted, so its permits stay taken until it returns."""

    def __init__(self, thread: asyncio.Future[Any]) -> None:
        self._thread = thread
        self.permit: Permit | None = None

    async def finished(self) -> None:
        try:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._thread)
        finally:
            if self.permit is not None:
                self.permit.release()


class HandlerTimeout(Exception):
    """The handler ran past its timeout and was cancelled (or, in a thread, left running)."""

    def __init__(self, message: str, straggler: Straggler | None = None) -> None:
        super().__init__(message)
        self.straggler = straggler


def _extra(job: Job) -> dict[str, Any]:
    return {"job_id": str(job.id), "queue": job.queue, "attempt": job.attempt}
