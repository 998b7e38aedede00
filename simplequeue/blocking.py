"""BlockingQueue: the queue as a sync handler sees it, its methods plain calls.

A sync `process` runs in a thread, where the coroutines of `SimpleQueue` cannot be
awaited: `queue.insert_job(child)` there would return a coroutine that nobody runs, and
the child job would be lost without a word. Sync handlers receive this wrapper instead:
the same methods, each run on the worker's event loop while the handler's thread waits
for its result (or its exception).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from simplequeue.job import Job, JobStatus
from simplequeue.stats import QueueStats, QueueSummary

if TYPE_CHECKING:
    from simplequeue.config import QueueConfig
    from simplequeue.queue import SimpleQueue

__all__ = ["BlockingQueue"]

T = TypeVar("T")


class BlockingQueue:
    """`SimpleQueue`'s producer and operator methods as plain calls, from a handler thread.

    Each call runs on the worker's event loop and blocks the calling thread until it is
    done; it raises what the coroutine raised. `conn=` is not accepted: a sync handler's
    own transaction cannot be joined from the loop.
    """

    __slots__ = ("_loop", "queue")

    def __init__(self, queue: SimpleQueue, loop: asyncio.AbstractEventLoop) -> None:
        self.queue = queue
        """The `SimpleQueue` itself, for what is not a call (its `config`, its `pool`)."""
        self._loop = loop

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            # On the loop itself (an async function behind a plain decorator, which the
            # runtime took for a sync one): blocking here would never return. Hand back
            # the coroutine, which such a function awaits as it would have.
            return call  # type: ignore[return-value]
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    @property
    def config(self) -> QueueConfig:
        return self.queue.config

    @property
    def schema(self) -> str:
        return self.queue.schema

    def insert_job(self, job: Job) -> uuid.UUID | None:
        return self._run(self.queue.insert_job(job))

    def insert_jobs(self, jobs: Sequence[Job]) -> list[uuid.UUID | None]:
        return self._run(self.queue.insert_jobs(jobs))

    def get_job(self, job_id: uuid.UUID | str) -> Job | None:
        return self._run(self.queue.get_job(job_id))

    def get_job_by_unique_key(self, unique_key: str) -> Job | None:
        return self._run(self.queue.get_job_by_unique_key(unique_key))

    def cancel_job(self, job_id: uuid.UUID | str) -> bool:
        return self._run(self.queue.cancel_job(job_id))

    def cancel_job_by_unique_key(self, unique_key: str) -> bool:
        return self._run(self.queue.cancel_job_by_unique_key(unique_key))

    def cancel_jobs_by_fingerprint(self, fingerprint: str) -> int:
        return self._run(self.queue.cancel_jobs_by_fingerprint(fingerprint))

    def reschedule_job(self, job_id: uuid.UUID | str, run_at: datetime) -> bool:
        return self._run(self.queue.reschedule_job(job_id, run_at))

    def wait_for_job(self, job_id: uuid.UUID | str, timeout: float | None = None) -> Job:
        return self._run(self.queue.wait_for_job(job_id, timeout))

    def list_jobs(
        self,
        queue: str | None = None,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        limit: int = 50,
        *,
        after: uuid.UUID | str | None = None,
    ) -> list[Job]:
        return self._run(self.queue.list_jobs(queue, status, limit, after=after))

    def list_dlq(self, queue: str | None = None, limit: int = 50) -> list[Job]:
        return self._run(self.queue.list_dlq(queue, limit))

    def requeue_dlq_job(self, job_id: uuid.UUID | str) -> bool:
        return self._run(self.queue.requeue_dlq_job(job_id))

    def queue_summaries(self, window: float = 300.0) -> list[QueueSummary]:
        return self._run(self.queue.queue_summaries(window))

    def counts(self) -> dict[str, int]:
        return self._run(self.queue.counts())

    def stats(self) -> QueueStats:
        return self.queue.stats()
