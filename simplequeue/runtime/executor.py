"""Runs one claimed job: heartbeat → strategy permit → payload → handler → result."""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from simplequeue.backoff import Fixed
from simplequeue.errors import InvalidJobError
from simplequeue.handler import Handler
from simplequeue.job import Job, JobResult, JobStatus
from simplequeue.permits import CancelJob, MarkCompleted, RetryJob, TryAfter
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


class Executor:
    def __init__(
        self,
        queue: SimpleQueue,
        registry: QueueRegistry,
        heartbeats: Heartbeater,
        results: ResultWriter,
        *,
        max_reprocess: int,
        threads: int,
    ) -> None:
        self._queue = queue
        self._registry = registry
        self._heartbeats = heartbeats
        self._results = results
        self._max_reprocess = max_reprocess
        self._threads = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="simplequeue-job"
        )

    async def execute(self, job: Job) -> None:
        """Process `job` and hand its outcome to the result writer.

        Cancelled (by a stop), the job goes back to pending without spending its attempt.
        """
        self._heartbeats.track(job)  # not a context manager: this is the per-job hot path
        try:
            try:
                outcome = await self._attempt(job)
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
            await self._results.submit(outcome)
        finally:
            self._heartbeats.untrack(job)

    def shutdown(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _attempt(self, job: Job) -> Outcome:
        handler = self._registry.handlers[job.queue]
        backoff = self._registry.backoff(job.queue)
        try:
            job.decode_data()
        except InvalidJobError as exc:
            return Outcome(job.id, job.lease, JobStatus.UNPROCESSABLE, error=str(exc))
        try:
            permit = await self._registry.strategy(job.queue).acquire(job)
        except CancelJob:
            return Outcome(job.id, job.lease, JobStatus.CANCELLED, error="cancelled by strategy")
        except MarkCompleted:
            return Outcome(job.id, job.lease, JobStatus.COMPLETED)
        except TryAfter as wait:
            return outcome_for_try_after(job, wait.seconds)
        except RetryJob as retry:
            return outcome_for_failure(job, retry.error, backoff)
        except Exception as exc:
            log.exception("queue strategy failed for job %s", job.id, extra=_extra(job))
            return outcome_for_failure(job, f"strategy error: {describe_error(exc)}", backoff)
        try:
            if handler.Payload is not None:
                try:
                    job.payload = handler.Payload.model_validate(job.data)
                except ValidationError as exc:
                    return Outcome(
                        job.id,
                        job.lease,
                        JobStatus.UNPROCESSABLE,
                        error=f"payload does not validate: {exc}",
                    )
            try:
                result = await self._call(handler, job)
            except HandlerTimeout as exc:
                return outcome_for_failure(job, str(exc), backoff)
            except Exception as exc:
                log.warning("job %s raised %s", job.id, type(exc).__name__, extra=_extra(job))
                return outcome_for_failure(job, describe_error(exc), backoff)
        finally:
            permit.release()
        if result is None:
            result = JobResult.success()
        elif not isinstance(result, JobResult):
            return outcome_for_failure(
                job,
                f"handler returned {type(result).__name__}; expected JobResult or None",
                backoff,
            )
        return outcome_for_result(job, result, backoff, self._max_reprocess)

    async def _call(self, handler: Handler, job: Job) -> Any:
        if handler.runs_in_thread:
            loop = asyncio.get_running_loop()
            call = functools.partial(handler.process, self._queue, job)
            work = loop.run_in_executor(self._threads, call)
        else:
            work = handler.process(self._queue, job)
        limit = job.timeout if job.timeout is not None else handler.timeout
        if limit is None:
            return await work
        try:
            async with asyncio.timeout(limit) as scope:
                return await work
        except TimeoutError:
            if scope.expired():
                raise HandlerTimeout(f"timed out after {limit:g}s") from None
            raise


class HandlerTimeout(Exception):
    """The handler ran past its timeout and was cancelled."""


def _extra(job: Job) -> dict[str, Any]:
    return {"job_id": str(job.id), "queue": job.queue, "attempt": job.attempt}
