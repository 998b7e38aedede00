"""SyncQueue: the producer and operator side of a queue for sync code (Flask, Django,
scripts), as plain calls on a sync psycopg pool.

The same operations as `SimpleQueue` (`operations.py`), the same statements and the same
semantics; only the driver that runs them differs. Workers are async: run them with
`simplequeue worker` or `SimpleQueue.start()`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, Union

import psycopg
from psycopg_pool import ConnectionPool

from simplequeue.config import QueueConfig
from simplequeue.connections import borrow_sync, owned_pool_settings
from simplequeue.drivers import PsycopgSync, SyncDriver, check_sync_conn, sync_driver_for
from simplequeue.durability import Durability
from simplequeue.errors import InvalidArgumentError, JobNotFoundError
from simplequeue.fleet import QueueInfo, WorkerInfo
from simplequeue.job import Job, JobStatus
from simplequeue.limits import QueueLimits, Rate
from simplequeue.operations import (
    MAX_BULK,
    WAIT_POLL,
    Operations,
    as_uuid,
    first_attempt_over,
    seconds,
    wait_timed_out,
)
from simplequeue.schedules import ScheduleInfo
from simplequeue.stats import QueueSummary
from simplequeue.store import Plan, Store

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SQLAlchemyConnection
    from sqlalchemy.orm import Session

__all__ = ["SyncQueue"]

T = TypeVar("T")

SyncConn = Union[psycopg.Connection[Any], "Session", "SQLAlchemyConnection", Any]
"""What `conn=` takes: a psycopg Connection, a SQLAlchemy Session or Connection (psycopg or
psycopg2 driver), or `django.db.connection`."""

POOL_CLOSE_TIMEOUT = 1.0
"""Seconds closing a queue waits for the pool it owns to close."""


class SyncQueue:
    """A job queue on a PostgreSQL schema, for sync code, over a `psycopg_pool.ConnectionPool`.

    `SyncQueue(pool)` uses a pool you opened; `SyncQueue.from_url(dsn)` owns one, opened by
    `with queue:` (or `open()`) and closed at its end (or `close()`). Thread-safe as its
    pool is: share one per process.
    """

    def __init__(self, pool: ConnectionPool[Any], **config: Any) -> None:
        if not isinstance(pool, ConnectionPool):
            hint = (
                "; for a connection string use SyncQueue.from_url(dsn)"
                if isinstance(pool, str)
                else ""
            )
            raise InvalidArgumentError(
                f"SyncQueue needs a psycopg_pool.ConnectionPool, got {type(pool).__name__}{hint}"
            )
        self.config = QueueConfig.build(**config)
        self._pool = pool
        self._owns_pool = False
        self._ops = Operations(Store(self.config.schema_name), self.config)

    @classmethod
    def from_url(cls, dsn: str, **config: Any) -> SyncQueue:
        """A queue that owns its pool: `with queue:` (or `open()`) opens it."""
        settings = owned_pool_settings(dsn, QueueConfig.build(**config), sync=True)
        pool: ConnectionPool[Any] = ConnectionPool(
            dsn, open=False, name="simplequeue-sync", **settings
        )
        queue = cls(pool, **config)
        queue._owns_pool = True
        return queue

    @property
    def pool(self) -> ConnectionPool[Any]:
        return self._pool

    @property
    def schema(self) -> str:
        return self.config.schema_name

    def open(self, timeout: float = 30.0) -> None:
        """Open the pool this queue owns (waiting up to `timeout` s for its first
        connections); nothing to do for a pool you passed in."""
        if self._owns_pool and self._pool.closed:
            try:
                self._pool.open(wait=True, timeout=seconds("timeout", timeout))
            except BaseException:
                self._pool.close(timeout=POOL_CLOSE_TIMEOUT)
                raise

    def close(self) -> None:
        """Close the pool this queue owns."""
        if self._owns_pool:
            self._pool.close(timeout=POOL_CLOSE_TIMEOUT)

    def __enter__(self) -> SyncQueue:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- producing -------------------------------------------------------------------

    def insert_job(self, job: Job, *, conn: SyncConn | None = None) -> uuid.UUID | None:
        """Insert one job; None when a live job already holds its unique key (or, with
        `unique_for`, an earlier job holds it still). With `conn`, the insert joins that
        connection's transaction (see `SimpleQueue.insert_job`)."""
        check_sync_conn(conn)
        return self._insert(self._ops.one_job(job), conn)[0]

    def insert_jobs(
        self, jobs: Sequence[Job], *, conn: SyncConn | None = None
    ) -> list[uuid.UUID | None]:
        """Insert jobs in one round trip; the result is aligned with `jobs` (None: deduplicated)."""
        check_sync_conn(conn)
        return self._insert(self._ops.jobs(jobs), conn)

    def _insert(self, jobs: list[Job], conn: SyncConn | None) -> list[uuid.UUID | None]:
        if not jobs:
            return []
        if conn is not None:
            driver = sync_driver_for(conn)
            return driver.run(self._ops.insert(jobs, driver))
        with self._driver() as own:
            return own.run(self._ops.insert(jobs, own))

    @contextmanager
    def _driver(self, *, atomic: bool = False) -> Iterator[SyncDriver]:
        """A driver on a connection of the queue's own; with `atomic`, in one transaction."""
        with borrow_sync(self._pool) as conn, conn.transaction() if atomic else nullcontext():
            yield PsycopgSync(conn)

    # -- operating -------------------------------------------------------------------

    def _run(self, plan: Plan[T], *, atomic: bool = False) -> T:
        with self._driver(atomic=atomic) as driver:
            return driver.run(plan)

    def get_job(self, job_id: uuid.UUID | str) -> Job | None:
        """The job from the live table, the archive or the DLQ; None if unknown."""
        return self._run(self._ops.get_job(job_id))

    def get_job_by_unique_key(self, unique_key: str) -> Job | None:
        """The live (pending or running) job holding `unique_key`; None if none does."""
        return self._run(self._ops.get_job_by_unique_key(unique_key))

    def release_unique_key(self, unique_key: str) -> bool:
        """Free a unique key held over time before its period ends; True when it was still
        held (see SimpleQueue)."""
        return self._run(self._ops.release_unique_key(unique_key))

    def cancel_job(self, job_id: uuid.UUID | str) -> bool:
        """Cancel a pending or running job."""
        return self._run(self._ops.cancel_job(job_id))

    def cancel_job_by_unique_key(self, unique_key: str) -> bool:
        """Cancel the live job holding `unique_key`; False if none does."""
        return self._run(self._ops.cancel_job_by_unique_key(unique_key))

    def cancel_jobs_by_fingerprint(self, fingerprint: str) -> int:
        """Cancel every pending or running job with this fingerprint; returns how many."""
        return self._run(self._ops.cancel_jobs_by_fingerprint(fingerprint))

    def reschedule_job(self, job_id: uuid.UUID | str, run_at: datetime) -> bool:
        """Move a pending job's due time; False if it is not pending."""
        return self._run(self._ops.reschedule_job(job_id, run_at))

    def wait_for_job(self, job_id: uuid.UUID | str, timeout: float | None = None) -> Job:
        """Wait until the job's first processing attempt has ended (from any process).

        Raises JobNotFoundError for an unknown id and TimeoutError once `timeout` seconds
        have passed (checked between reads of the job).
        """
        job_id = as_uuid(job_id)
        limit = None if timeout is None else seconds("timeout", timeout)
        deadline = None if limit is None else time.monotonic() + limit
        delay, factor, longest = WAIT_POLL
        last: Job | None = None
        while deadline is None or time.monotonic() < deadline:
            last = self.get_job(job_id)
            if last is None:
                raise JobNotFoundError(f"no job with id {job_id}")
            if first_attempt_over(last):
                return last
            pause = delay if deadline is None else min(delay, deadline - time.monotonic())
            time.sleep(max(pause, 0.0))
            delay = min(delay * factor, longest)
        raise wait_timed_out(job_id, last, timeout)

    def list_jobs(
        self,
        queue: str | None = None,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        limit: int = 50,
        *,
        after: uuid.UUID | str | None = None,
        unique_key: str | None = None,
        fingerprint: str | None = None,
        since: datetime | None = None,
        worker: uuid.UUID | str | None = None,
    ) -> list[Job]:
        """Jobs of the live table by id, each filter optional (see SimpleQueue)."""
        plan = self._ops.list_jobs(
            queue,
            status,
            after,
            limit,
            unique_key=unique_key,
            fingerprint=fingerprint,
            since=since,
            worker=worker,
        )
        return self._run(plan)

    def list_dlq(
        self,
        queue: str | None = None,
        limit: int = 50,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
    ) -> list[Job]:
        """Dead jobs, newest first: in the DLQ table or not yet moved there by the janitor."""
        return self._run(self._ops.list_dlq(queue, limit, status))

    def retry_job(self, job_id: uuid.UUID | str) -> bool:
        """Run a job again now: a pending one becomes due, a dead one goes back to pending
        with fresh attempts (see SimpleQueue)."""
        return self._run(self._ops.retry_job(job_id), atomic=True)

    def count_dlq(
        self,
        queue: str | None = None,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        before: datetime | None = None,
    ) -> int:
        """Dead jobs that match (see SimpleQueue)."""
        return self._run(self._ops.count_dlq(self._ops.dead_filters(queue, status, before)))

    def requeue_dlq(
        self,
        queue: str | None = None,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        before: datetime | None = None,
        limit: int = MAX_BULK,
    ) -> int:
        """Dead jobs that match back to pending with fresh attempts (see SimpleQueue)."""
        filters = self._ops.dead_filters(queue, status, before)
        return self._run(self._ops.requeue_dlq(filters, limit), atomic=True)

    def purge_dlq(
        self,
        queue: str | None = None,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        before: datetime | None = None,
        limit: int = MAX_BULK,
    ) -> int:
        """Delete dead jobs that match (see SimpleQueue)."""
        filters = self._ops.dead_filters(queue, status, before)
        return self._run(self._ops.purge_dlq(filters, limit), atomic=True)

    def purge_dlq_job(self, job_id: uuid.UUID | str) -> bool:
        """Delete one dead job; False when no dead job has this id."""
        return self._run(self._ops.purge_dlq_job(job_id), atomic=True)

    # -- queues and workers ----------------------------------------------------------

    def pause_queue(
        self,
        name: str,
        *,
        until: datetime | None = None,
        by: str | None = None,
        reason: str | None = None,
    ) -> QueueInfo:
        """Stop every worker from claiming the queue's jobs (see SimpleQueue)."""
        return self._run(self._ops.pause_queue(name, until, by, reason))

    def resume_queue(self, name: str) -> bool:
        """Lift a pause and wake the queue's idle workers; False when it was not paused."""
        return self._run(self._ops.resume_queue(name))

    def configure_queue(
        self,
        name: str,
        *,
        max_running: int | None = None,
        max_running_per_key: int | None = None,
        rate_limit: Rate | None = None,
        rate_limit_per_key: Rate | None = None,
        fair: bool = False,
        durability: Durability | str = Durability.DURABLE,
    ) -> QueueInfo:
        """Set the queue's fleet-wide limits and durability (see SimpleQueue)."""
        limits = QueueLimits(max_running, max_running_per_key, rate_limit, rate_limit_per_key, fair)
        return self._run(self._ops.configure_queue(name, limits, durability))

    def park(self, name: str, until: datetime, key: str | None = None) -> None:
        """No job of the queue (or of its `key`) starts before `until` (see SimpleQueue)."""
        self._run(self._ops.park(name, until, key))

    def unpark(self, name: str, key: str | None = None) -> bool:
        """Lift the park of the queue (or of its `key`); False when none was under way."""
        return self._run(self._ops.unpark(name, key))

    def list_schedules(self) -> list[ScheduleInfo]:
        """`SimpleQueue.list_schedules`."""
        return self._run(self._ops.list_schedules())

    def pause_schedule(self, name: str) -> bool:
        """`SimpleQueue.pause_schedule`."""
        return self._run(self._ops.pause_schedule(name, True)) is not None

    def resume_schedule(self, name: str) -> bool:
        """`SimpleQueue.resume_schedule`."""
        return self._run(self._ops.pause_schedule(name, False)) is not None

    def delete_schedule(self, name: str) -> bool:
        """`SimpleQueue.delete_schedule`."""
        return self._run(self._ops.delete_schedule(name))

    def declare_queues(self, names: Iterable[str]) -> None:
        """Make queues known without a worker (inserts into them do not warn)."""
        self._run(self._ops.declare_queues(names))

    def list_queues(self) -> list[QueueInfo]:
        """Every declared queue, paused or not (see SimpleQueue)."""
        return self._run(self._ops.list_queues())

    def list_workers(self) -> list[WorkerInfo]:
        """Every worker of the fleet (see SimpleQueue)."""
        return self._run(self._ops.list_workers())

    def queue_summaries(self, window: float = 300.0) -> list[QueueSummary]:
        """Every queue with jobs, as the tables show it now (see SimpleQueue)."""
        return self._run(self._ops.queue_summaries(window))

    def counts(self) -> dict[str, int]:
        """Jobs per status in the live table, and rows in `archive` and `dlq`."""
        return self._run(self._ops.counts())

    def requeue_dlq_job(self, job_id: uuid.UUID | str) -> bool:
        """Put a dead job back to pending with fresh attempts. False if no such dead job, or
        if a live job now holds its unique key."""
        return self._run(self._ops.requeue_dlq_job(job_id), atomic=True)
