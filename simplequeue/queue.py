"""SimpleQueue: the facade. Insert, cancel, reschedule, read and wait on jobs; start and
stop this process's workers. It never loops or sleeps in the background itself: that is
the job of `runtime/` and `maintenance/`."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
import warnings
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, Union

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.backoff import BackoffStrategy
from simplequeue.config import QueueConfig
from simplequeue.connections import borrow, owned_pool_settings
from simplequeue.drivers import PsycopgAsync, async_driver_for, check_async_conn, run
from simplequeue.durability import Durability
from simplequeue.errors import InvalidArgumentError, JobNotFoundError, QueueStateError
from simplequeue.fleet import QueueInfo, WorkerIdentity, WorkerInfo
from simplequeue.handler import Handler
from simplequeue.job import Job, JobStatus
from simplequeue.limits import QueueLimits, Rate
from simplequeue.maintenance.janitor import Janitor, JanitorReport
from simplequeue.maintenance.reaper import Reaper, ReapReport
from simplequeue.operations import (
    MAX_BULK,
    WAIT_POLL,
    Operations,
    as_uuid,
    first_attempt_over,
    seconds,
    wait_timed_out,
)
from simplequeue.permits import JobStrategy
from simplequeue.registry import QueueRegistry
from simplequeue.runtime.runtime import Runtime
from simplequeue.schedules import JobSource, Missed, Schedule, ScheduleBook, ScheduleInfo
from simplequeue.stats import QueueStats, QueueSummary
from simplequeue.store import Plan, Store

__all__ = ["SimpleQueue"]

T = TypeVar("T")

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection as SQLAlchemyConnection
    from sqlalchemy.ext.asyncio import AsyncSession

AsyncConn = Union[psycopg.AsyncConnection[Any], "AsyncSession", "SQLAlchemyConnection"]
"""What `conn=` takes: the connection (or session) whose transaction an insert joins."""

POOL_CLOSE_TIMEOUT = 1.0
"""Seconds leaving `async with queue` waits for the pool it owns to close."""


class SimpleQueue:
    """A job queue on a PostgreSQL schema, over an open `AsyncConnectionPool`.

    Delivery is at-least-once: a job whose worker dies, or whose result could not be
    written, runs again. Make handlers idempotent (or guard them with a unique key).
    """

    def __init__(self, pool: AsyncConnectionPool[Any], **config: Any) -> None:
        if not isinstance(pool, AsyncConnectionPool):
            hint = (
                "; for a connection string use SimpleQueue.from_url(dsn)"
                if isinstance(pool, str)
                else ""
            )
            raise InvalidArgumentError(
                f"SimpleQueue needs a psycopg_pool.AsyncConnectionPool, got "
                f"{type(pool).__name__}{hint}"
            )
        self.config = QueueConfig.build(**config)
        self._pool = pool
        self._owns_pool = False
        self._store = Store(self.config.schema_name)
        self._ops = Operations(self._store, self.config)
        self._registry = QueueRegistry(self.config)
        self._schedules = ScheduleBook()
        self._worker = WorkerIdentity()
        self._runtime: Runtime | None = None
        self._stopping: Runtime | None = None

    @classmethod
    def from_url(cls, dsn: str, **config: Any) -> SimpleQueue:
        """A queue that owns its pool: `async with` opens and closes it."""
        worker = WorkerIdentity()
        settings = owned_pool_settings(dsn, QueueConfig.build(**config), worker.application_name)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn, open=False, name="simplequeue", **settings
        )
        queue = cls(pool, **config)
        queue._owns_pool = True
        queue._worker = worker
        return queue

    @property
    def pool(self) -> AsyncConnectionPool[Any]:
        return self._pool

    @property
    def schema(self) -> str:
        return self.config.schema_name

    async def __aenter__(self) -> SimpleQueue:
        if self._owns_pool:
            try:
                await self._pool.open(wait=True)
            except BaseException:  # cancelled or timed out: leave no connection attempts behind
                await self._pool.close(timeout=POOL_CLOSE_TIMEOUT)
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if self._owns_pool:
            # Bounded: connection attempts the pool has under way wait on a silent network.
            await self._pool.close(timeout=POOL_CLOSE_TIMEOUT)

    # -- configuration -----------------------------------------------------------------

    def register_handler(self, handler: Handler) -> None:
        """Handle `handler.QUEUE` in this process; works before or after `start()`."""
        self._registry.register(handler)
        self._ops.handled_here(handler.QUEUE)

    @property
    def handled_queues(self) -> list[str]:
        """The queues this process has handlers for (and so claims from)."""
        return sorted(self._registry.handlers)

    def set_queue_permits(self, queue: str, n: int) -> None:
        self._registry.set_permits(queue, n)

    def set_queue_backoff(self, queue: str, strategy: BackoffStrategy) -> None:
        """The wait after a failed attempt of a job of `queue` (default: `backoff`)."""
        self._registry.set_backoff(queue, strategy)

    def set_backoff(self, queue: str, strategy: BackoffStrategy) -> None:
        """Deprecated name of `set_queue_backoff`."""
        warnings.warn("set_backoff() is now set_queue_backoff()", DeprecationWarning, stacklevel=2)
        self.set_queue_backoff(queue, strategy)

    def set_queue_strategy(self, queue: str, strategy: JobStrategy) -> None:
        self._registry.set_strategy(queue, strategy)

    def schedule(
        self,
        name: str,
        job: JobSource,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        missed: Missed = "skip",
    ) -> Schedule:
        """Enqueue `job` at every slot of `cron` (read in `timezone`; the `cron` extra) or
        `every` interval (seconds or a timedelta: its multiples since 1970-01-01 UTC), from
        the fleet's workers: each slot once, however many workers register it. `job` is
        a Job (a copy is enqueued per slot) or a callable returning one, given the slot's
        time if it takes an argument. `missed` says what a fleet that was down enqueues for
        the slots it missed: "skip" none, "latest" the last one, "all" each (at most 100).

        Like `register_handler`, it registers in this process, before or after `start()`;
        the running workers write it to the database and the maintenance leader enqueues
        it. Registering the same name again replaces it.
        """
        registered = Schedule.define(
            name, job, cron=cron, every=every, timezone=timezone, missed=missed
        )
        self._schedules.add(registered)
        return registered

    @property
    def schedules(self) -> list[Schedule]:
        """The schedules registered in this process."""
        return self._schedules.all()

    # -- workers ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._runtime is not None

    async def start(self) -> None:
        """Start the poller, reaper and (with the extra) janitor in this process."""
        if self._runtime is not None:
            raise QueueStateError("this queue is already started")
        if self._pool.closed:
            raise QueueStateError(
                "the connection pool is closed: use `async with queue:` or open your pool first"
            )
        self._runtime = Runtime(
            self,
            self._pool,
            self._store,
            self._registry,
            self.config,
            self._worker,
            self._schedules,
            self._ops.insert,
        )
        await self._runtime.start()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; running jobs get `timeout` seconds, then go back to pending.

        Called again while a stop is under way, it interrupts the running jobs at once.
        """
        timeout = seconds("timeout", timeout)
        runtime, self._runtime = self._runtime, None
        if runtime is None:
            if self._stopping is not None:
                self._stopping.interrupt()
            return
        self._stopping = runtime
        try:
            await runtime.stop(timeout)
        finally:
            self._stopping = None

    async def ready(self, timeout: float | None = None) -> None:
        """Wait until the started workers hear inserts at once (their LISTEN is in place;
        at once with `use_notify=False`, or once the listener stood down behind a pooler:
        see `listen_dsn`). Raises QueueStateError when not started and
        TimeoutError after `timeout` seconds; QueueStateError too when stopped meanwhile."""
        limit = None if timeout is None else seconds("timeout", timeout)
        runtime = self._runtime
        if runtime is None:
            raise QueueStateError("this queue is not started: call start() first")
        async with asyncio.timeout(limit):
            if not await runtime.ready():
                raise QueueStateError("this queue was stopped before its workers were ready")

    def stats(self) -> QueueStats:
        """Counters of this process's workers, from memory (no query): claims, results
        written, fenced off and buffered, running jobs, database failures, the listener."""
        runtime = self._runtime or self._stopping  # while stopping, the numbers matter most
        if runtime is None:
            return QueueStats()
        stats = runtime.stats()
        return stats if runtime is self._runtime else dataclasses.replace(stats, started=False)

    async def drain(self, timeout: float | None = None) -> dict[str, int]:
        """Run every due job of this process's handlers until none is due, none runs and
        every result is written; returns how many attempts ended in each status
        (`{"completed": 3, "pending": 1}`: one will retry later). For tests: it starts
        the workers if they are not started, and stops them again after."""
        limit = None if timeout is None else seconds("timeout", timeout)
        started_here = self._runtime is None
        if started_here:
            await self.start()
        runtime = self._runtime
        assert runtime is not None
        try:
            async with asyncio.timeout(limit):
                return await runtime.drain()
        finally:
            if started_here:
                await self.stop()

    # -- maintenance -----------------------------------------------------------------

    async def run_janitor(self) -> JanitorReport:
        """One janitor sweep now, whether or not this process runs workers or has the
        janitor extra: archive completed jobs, move dead ones to the DLQ, purge the
        archive past `archive_retention`."""
        return await Janitor(self._pool, self._store, self.config).run_once()

    async def reap(self) -> ReapReport:
        """One reaper sweep now: running jobs whose heartbeat is older than `stall_after`
        go back to pending (or end as bad_job once poison); pending jobs with no attempt
        left end as failed; unique keys whose period has ended are deleted. Jobs this
        process runs itself are left alone."""
        runtime = self._runtime or self._stopping  # a stopping one still runs jobs
        own = runtime.heartbeats.runs if runtime is not None else tuple
        return await Reaper(self._pool, self._store, self.config, own_runs=own).run_once()

    # -- producing -------------------------------------------------------------------

    async def insert_job(self, job: Job, *, conn: AsyncConn | None = None) -> uuid.UUID | None:
        """Insert one job; None when a live job already holds its unique key (or, for a
        job with `unique_for`, when an earlier job holds it still: see docs/unique.md).

        With `conn`, the insert joins that connection's transaction: it is rolled back
        with it, and workers see the job only once it commits. A Job object that an insert
        stored before is stored again as a new job, under a new id (`job.id` changes);
        retrying an insert that raised never stores a job twice.
        """
        check_async_conn(conn)
        return (await self._insert(self._ops.one_job(job), conn))[0]

    async def insert_jobs(
        self, jobs: Sequence[Job], *, conn: AsyncConn | None = None
    ) -> list[uuid.UUID | None]:
        """Insert jobs in one round trip; the result is aligned with `jobs` (None: deduplicated)."""
        check_async_conn(conn)
        return await self._insert(self._ops.jobs(jobs), conn)

    async def _insert(self, jobs: list[Job], conn: AsyncConn | None) -> list[uuid.UUID | None]:
        if not jobs:
            return []
        if conn is not None:
            driver = await async_driver_for(conn)
            return await driver.run(self._ops.insert(jobs, driver))
        async with borrow(self._pool) as own:
            driver = PsycopgAsync(own)
            return await driver.run(self._ops.insert(jobs, driver))

    # -- operating -------------------------------------------------------------------

    async def _run(self, plan: Plan[T], *, atomic: bool = False) -> T:
        async with borrow(self._pool) as conn:
            return await run(conn, plan, atomic=atomic)

    async def get_job(self, job_id: uuid.UUID | str) -> Job | None:
        """The job from the live table, the archive or the DLQ; None if unknown.

        Raises JobNotFoundError when the job is not live and this database role may not
        read the archive and the DLQ (the producer role of `simplequeue roles`).
        """
        return await self._run(self._ops.get_job(job_id))

    async def get_job_by_unique_key(self, unique_key: str) -> Job | None:
        """The live (pending or running) job holding `unique_key`: the one that made an
        insert with that key return None. None when no live job holds it."""
        return await self._run(self._ops.get_job_by_unique_key(unique_key))

    async def release_unique_key(self, unique_key: str) -> bool:
        """Free a unique key held over time (`Job(unique_for=...)`) before its period ends:
        the next insert with it is stored. True when it was still held; False when no
        period held it (never taken so, ended, or released already). It does not touch the
        job: while that one is live, the key stays taken, as any live job's."""
        return await self._run(self._ops.release_unique_key(unique_key))

    async def cancel_job(self, job_id: uuid.UUID | str) -> bool:
        """Cancel a pending or running job. A running one ends as cancelled whatever its
        handler returns afterwards."""
        return await self._run(self._ops.cancel_job(job_id))

    async def cancel_job_by_unique_key(self, unique_key: str) -> bool:
        """Cancel the live job holding `unique_key`; False if none does."""
        return await self._run(self._ops.cancel_job_by_unique_key(unique_key))

    async def cancel_jobs_by_fingerprint(self, fingerprint: str) -> int:
        """Cancel every pending or running job with this fingerprint; returns how many."""
        return await self._run(self._ops.cancel_jobs_by_fingerprint(fingerprint))

    async def reschedule_job(self, job_id: uuid.UUID | str, run_at: datetime) -> bool:
        """Move a pending job's due time; False if it is not pending."""
        return await self._run(self._ops.reschedule_job(job_id, run_at))

    async def wait_for_job(self, job_id: uuid.UUID | str, timeout: float | None = None) -> Job:
        """Wait until the job's first processing attempt has ended (from any process).

        Raises JobNotFoundError for an unknown id and TimeoutError after `timeout` seconds,
        however long the database takes to answer.
        """
        job_id = as_uuid(job_id)
        limit = None if timeout is None else seconds("timeout", timeout)
        last: Job | None = None
        delay, factor, longest = WAIT_POLL
        try:
            async with asyncio.timeout(limit):
                while True:
                    last = await self.get_job(job_id)
                    if last is None:
                        raise JobNotFoundError(f"no job with id {job_id}")
                    if first_attempt_over(last):
                        return last
                    await asyncio.sleep(delay)
                    delay = min(delay * factor, longest)
        except TimeoutError:
            raise wait_timed_out(job_id, last, timeout) from None

    async def list_jobs(
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
        """Jobs of the live table (pending, running, and finished ones the janitor has not
        moved yet) by id, the order they were built in. Each filter is optional: `queue`,
        `status` (one or several), `unique_key`, `fingerprint`, created `since`, claimed
        by `worker`; `after` (the last id of a page) pages through them."""
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
        return await self._run(plan)

    async def list_dlq(
        self,
        queue: str | None = None,
        limit: int = 50,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
    ) -> list[Job]:
        """Dead jobs, newest first: in the DLQ table or not yet moved there by the janitor;
        of one queue, of some dead statuses."""
        return await self._run(self._ops.list_dlq(queue, limit, status))

    async def retry_job(self, job_id: uuid.UUID | str) -> bool:
        """Run a job again now: a pending one (scheduled, or waiting out a backoff) becomes
        due; a dead one goes back to pending with fresh attempts. False when it is
        neither (running, completed, unknown), or a live job holds its unique key."""
        return await self._run(self._ops.retry_job(job_id), atomic=True)

    async def count_dlq(
        self,
        queue: str | None = None,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        before: datetime | None = None,
    ) -> int:
        """Dead jobs (in the DLQ or not moved there yet) of `queue`, with a dead `status`,
        ended `before` a time: what requeue_dlq and purge_dlq with the same filters take."""
        return await self._run(self._ops.count_dlq(self._ops.dead_filters(queue, status, before)))

    async def requeue_dlq(
        self,
        queue: str | None = None,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        before: datetime | None = None,
        limit: int = MAX_BULK,
    ) -> int:
        """Dead jobs that match (see count_dlq) back to pending with fresh attempts, at most
        `limit`; returns how many. One whose unique key a live job holds stays dead."""
        filters = self._ops.dead_filters(queue, status, before)
        return await self._run(self._ops.requeue_dlq(filters, limit), atomic=True)

    async def purge_dlq(
        self,
        queue: str | None = None,
        *,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
        before: datetime | None = None,
        limit: int = MAX_BULK,
    ) -> int:
        """Delete dead jobs that match (see count_dlq), at most `limit`; returns how many."""
        filters = self._ops.dead_filters(queue, status, before)
        return await self._run(self._ops.purge_dlq(filters, limit), atomic=True)

    async def purge_dlq_job(self, job_id: uuid.UUID | str) -> bool:
        """Delete one dead job; False when no dead job has this id."""
        return await self._run(self._ops.purge_dlq_job(job_id), atomic=True)

    # -- queues and workers ----------------------------------------------------------

    async def pause_queue(
        self,
        name: str,
        *,
        until: datetime | None = None,
        by: str | None = None,
        reason: str | None = None,
    ) -> QueueInfo:
        """Stop every worker of the fleet from claiming the queue's jobs, until
        `resume_queue()` (or `until`); jobs already running finish. Inserts still work.
        Effective for every claim that starts after it returns."""
        return await self._run(self._ops.pause_queue(name, until, by, reason))

    async def resume_queue(self, name: str) -> bool:
        """Lift a pause; idle workers of the queue hear of it at once (NOTIFY). False when
        the queue was not paused."""
        return await self._run(self._ops.resume_queue(name))

    async def configure_queue(
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
        """Set the queue's fleet-wide limits and durability, for every process (None: no
        limit; each call sets them all). `max_running`: jobs of the queue running at once
        across the fleet; `max_running_per_key`: per concurrency key
        (`Job(concurrency_key=...)`);
        `rate_limit` / `rate_limit_per_key`: job starts per window (`Rate(n, per=...)`);
        `fair`: claims take the next job of each key in turn, not the biggest key's first.
        Enforced by the claim itself; workers follow within a second.

        `durability` (`Durability.DURABLE`, the default, or `Durability.FAST`, or their
        values "durable" and "fast"): how workers commit their own writes for the queue's
        jobs. Fast returns before the WAL reaches the disk: a crash of the server may lose
        the last few hundred milliseconds of them, and those jobs run again; inserts
        stay durable (docs/durability.md). Part of "each call sets them all": a call
        that leaves it out makes the queue durable again, the safe side."""
        limits = QueueLimits(max_running, max_running_per_key, rate_limit, rate_limit_per_key, fair)
        return await self._run(self._ops.configure_queue(name, limits, durability))

    async def park(self, name: str, until: datetime, key: str | None = None) -> None:
        """No job of the queue (of its concurrency `key`, when given) starts before `until`,
        across the fleet; running ones finish. A park under way is never shortened: see
        `unpark()`."""
        await self._run(self._ops.park(name, until, key))

    async def unpark(self, name: str, key: str | None = None) -> bool:
        """Lift the park of the queue (or of its `key`); False when none was under way."""
        return await self._run(self._ops.unpark(name, key))

    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule the workers of the fleet registered: its rule, paused or not,
        its last and next slot, the jobs it enqueued, when a worker last registered it."""
        return await self._run(self._ops.list_schedules())

    async def pause_schedule(self, name: str) -> bool:
        """Stop enqueuing the schedule's slots, fleet-wide, until `resume_schedule()`;
        the slots that pass meanwhile are not enqueued later. False: no such schedule."""
        return await self._run(self._ops.pause_schedule(name, True)) is not None

    async def resume_schedule(self, name: str) -> bool:
        """Enqueue the schedule again from its next slot on. False: no such schedule."""
        return await self._run(self._ops.pause_schedule(name, False)) is not None

    async def delete_schedule(self, name: str) -> bool:
        """Forget a schedule no code registers any more (a worker that still registers
        it writes it again within a minute). False: no such schedule."""
        return await self._run(self._ops.delete_schedule(name))

    async def declare_queues(self, names: Iterable[str]) -> None:
        """Make queues known without a worker (inserts into them do not warn)."""
        await self._run(self._ops.declare_queues(names))

    async def list_queues(self) -> list[QueueInfo]:
        """Every declared queue: paused or not (who, since when, until when, why), when a
        worker or an operator last declared it, how many live workers handle it."""
        return await self._run(self._ops.list_queues())

    async def list_workers(self) -> list[WorkerInfo]:
        """Every worker of the fleet: host, pid, version, queues, last beat, alive or not,
        stopping or not, and how many jobs it runs now."""
        return await self._run(self._ops.list_workers())

    @property
    def worker_id(self) -> uuid.UUID:
        """This queue's worker id (new for each SimpleQueue): in `list_workers()`, in the
        `worker_id` of the jobs it claims, and in its connections' application_name."""
        return self._worker.id

    async def queue_summaries(self, window: float = 300.0) -> list[QueueSummary]:
        """Every queue with jobs, as the tables show it now (all processes): due,
        scheduled, running, dead (still in jobs) and DLQ counts, jobs completed within the
        last `window` seconds, and the wait of the oldest due job. Reads whole tables: for
        operators and dashboards, not hot paths; needs the worker role's privileges."""
        return await self._run(self._ops.queue_summaries(window))

    async def counts(self) -> dict[str, int]:
        """Jobs per status in the live table, and rows in `archive` and `dlq` (every key
        present, zero included). Counts whole tables: for dashboards, not hot paths."""
        return await self._run(self._ops.counts())

    async def requeue_dlq_job(self, job_id: uuid.UUID | str) -> bool:
        """Put a dead job back to pending with fresh attempts. False if no such dead job, or
        if a live job now holds its unique key."""
        return await self._run(self._ops.requeue_dlq_job(job_id), atomic=True)
