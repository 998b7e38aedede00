"""The handlers chaos worker processes run: `python -m simplequeue worker chaos.app:configure`.

Every job carries a *plan* in its data (`{"plan": "raise_once", "work": 0.01}`) that decides,
from the attempt number alone, what the handler does; so the final state of every job is
known in advance whatever crashes happen in between (see `expected()`). Each execution is
recorded in `chaos.executions` before the handler does anything else, in its own
transaction on its own connection, so the record survives a SIGKILL a moment later.

Settings come from the environment, set by the runner:
    CHAOS_RECORD_DSN  where to record executions (no statement_timeout on it)
    CHAOS_SETTINGS    JSON: QueueConfig overrides the CLI has no flag for
    CHAOS_BACKOFF     seconds of fixed backoff between attempts
    CHAOS_POOL_TIMEOUT seconds the worker pool waits for a free connection
    CHAOS_HOG_SECONDS how long SIGUSR1 holds every connection of the worker's pool
    CHAOS_QUEUES      comma list of the queues to handle (default: all)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

import simplequeue as sq

log = logging.getLogger("chaos.app")

TIMEOUT = 2.0
"""Handler.timeout of the `chaos` handlers; the `timeout` plans run past it, `slow` ones not."""

MAX_ATTEMPTS = 3
TIMEOUT_MAX_ATTEMPTS = 2

# plan -> (final status, final attempt); max_attempts is MAX_ATTEMPTS unless noted.
EXPECTED: dict[str, tuple[str, int]] = {
    "ok": ("completed", 1),  # returns None
    "success": ("completed", 1),  # JobResult.success()
    "slow": ("completed", 1),  # works for `work` seconds (long enough to be killed mid-job)
    "raise": ("failed", MAX_ATTEMPTS),  # raises on every attempt
    "raise_once": ("completed", 2),  # raises on attempt 1, then succeeds
    "failed": ("failed", MAX_ATTEMPTS),  # JobResult.failed() on every attempt
    "retry_at": ("completed", 2),  # JobResult.retry_at(now + 0.2s) once, then succeeds
    "reschedule": ("completed", 1),  # JobResult.reschedule_at(now + 0.2s) once: no attempt spent
    "cancel": ("cancelled", 1),
    "critical": ("critical_failure", 1),
    "unprocessable": ("unprocessable", 1),
    "timeout": ("failed", TIMEOUT_MAX_ATTEMPTS),  # runs past Handler.timeout every time
    "timeout_once": ("completed", 2),  # runs past Handler.timeout on attempt 1 only
    "hung": ("failed", TIMEOUT_MAX_ATTEMPTS),  # a sync handler blocking past its timeout
}


def max_attempts(plan: str) -> int:
    return TIMEOUT_MAX_ATTEMPTS if plan in ("timeout", "hung") else MAX_ATTEMPTS


def expected(plan: str) -> tuple[str, int]:
    return EXPECTED[plan]


class Planned(Exception):
    """The failure a plan asks for."""


def _decide(job: sq.Job) -> tuple[float, Any]:
    """(seconds of work, what to return or raise) for this attempt of the job."""
    plan: str = job.data["plan"]
    work = float(job.data.get("work", 0.0))
    first = job.attempt == 1
    soon = datetime.now(UTC) + timedelta(seconds=0.2)
    if plan == "timeout" or (plan == "timeout_once" and first):
        return TIMEOUT + 0.5, None  # cancelled at TIMEOUT
    if plan in ("raise",) or (plan == "raise_once" and first):
        return work, Planned(f"planned failure of {plan} on attempt {job.attempt}")
    if plan == "failed":
        return work, sq.JobResult.failed("planned JobResult.failed")
    if plan == "retry_at" and first:
        return work, sq.JobResult.retry_at(soon, "planned retry_at")
    if plan == "reschedule" and job.reprocess_count == 0:
        # A reaped run also counts as a reprocess: then this run simply succeeds.
        return work, sq.JobResult.reschedule_at(soon)
    verdict = {
        "success": sq.JobResult.success(),
        "cancel": sq.JobResult.cancel(),
        "critical": sq.JobResult.critical("planned critical"),
        "unprocessable": sq.JobResult.unprocessable("planned unprocessable"),
    }.get(plan)
    return work, verdict


_RECORD = (
    "INSERT INTO chaos.executions (job_id, lease, attempt, reprocess, pid, queue, plan) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s)"
)


def _record_params(job: sq.Job) -> list[Any]:
    return [
        job.id,
        job.lease,
        job.attempt,
        job.reprocess_count,
        os.getpid(),
        job.queue,
        job.data["plan"],
    ]


_RECORD_END = (
    "UPDATE chaos.executions SET ended = clock_timestamp() "
    "WHERE job_id = %s AND lease = %s AND pid = %s"
)

RECORD_GIVE_UP = 120.0


class _Recorder:
    """Records executions on its own pools; waits out a database outage rather than fail."""

    def __init__(self) -> None:
        self._dsn = os.environ.get("CHAOS_RECORD_DSN", "")
        self._apool: AsyncConnectionPool[Any] | None = None
        self._spool: ConnectionPool[Any] | None = None
        self._slock = threading.Lock()

    async def record(self, job: sq.Job) -> None:
        if not self._dsn:
            return
        if self._apool is None:
            self._apool = AsyncConnectionPool(
                self._dsn,
                min_size=1,
                max_size=6,
                timeout=5,
                kwargs={"autocommit": True},
                open=False,
                name="chaos-record",
            )
            await self._apool.open()
        deadline = time.monotonic() + RECORD_GIVE_UP
        while True:
            try:
                async with self._apool.connection() as conn:
                    await conn.execute(_RECORD, _record_params(job))
                return
            except (psycopg.OperationalError, PoolTimeout):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def record_sync(self, job: sq.Job, *, end: bool = False) -> None:
        if not self._dsn:
            return
        with self._slock:
            if self._spool is None:
                self._spool = ConnectionPool(
                    self._dsn,
                    min_size=1,
                    max_size=3,
                    timeout=5,
                    kwargs={"autocommit": True},
                    name="chaos-record-sync",
                )
        deadline = time.monotonic() + RECORD_GIVE_UP
        while True:
            try:
                with self._spool.connection() as conn:
                    if end:
                        conn.execute(_RECORD_END, [job.id, job.lease, os.getpid()])
                    else:
                        conn.execute(_RECORD, _record_params(job))
                return
            except (psycopg.OperationalError, PoolTimeout):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


RECORDER = _Recorder()


class Chaos(sq.Handler):
    """An async handler that follows its job's plan."""

    QUEUE = "chaos"
    timeout: ClassVar[float | None] = TIMEOUT

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
        await RECORDER.record(job)
        work, verdict = _decide(job)
        if work:
            await asyncio.sleep(work)
        if isinstance(verdict, BaseException):
            raise verdict
        return verdict


class ChaosSync(sq.Handler):
    """The same, as a plain `def` run in the executor's threads."""

    QUEUE = "chaos_sync"
    timeout: ClassVar[float | None] = TIMEOUT

    def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
        RECORDER.record_sync(job)
        work, verdict = _decide(job)
        if work:
            time.sleep(work)
        if isinstance(verdict, BaseException):
            raise verdict
        return verdict


class Long(Chaos):
    """No timeout: for runs longer than a shutdown timeout."""

    QUEUE = "chaos_long"
    timeout = None


class LongSync(ChaosSync):
    QUEUE = "chaos_long_sync"
    timeout = None


class Hung(sq.Handler):
    """A sync handler that blocks its thread for `work` seconds, past its 0.3 s timeout, and
    records when its thread really ends: the limits must hold until then."""

    QUEUE = "chaos_hung"
    timeout: ClassVar[float | None] = 0.3

    def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
        RECORDER.record_sync(job)
        time.sleep(float(job.data.get("work", 1.0)))
        RECORDER.record_sync(job, end=True)


async def _hog(queue: sq.SimpleQueue, seconds: float) -> None:
    """Hold every connection of the worker's pool, like an application sharing it would."""
    pool = queue.pool
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        for _ in range(pool.max_size):
            await stack.enter_async_context(pool.connection(timeout=30))
        log.warning(
            "chaos: holding all %d pool connections for %.1fs (took %.2fs to get them)",
            pool.max_size,
            seconds,
            time.monotonic() - started,
        )
        await asyncio.sleep(seconds)
    log.warning("chaos: released the pool connections")
    await _event("pool_released")


async def _event(kind: str) -> None:
    dsn = os.environ.get("CHAOS_RECORD_DSN", "")
    if dsn:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(
                "INSERT INTO chaos.events (kind, pid) VALUES (%s, %s)", [kind, os.getpid()]
            )


_background: set[asyncio.Task[None]] = set()


def configure(queue: sq.SimpleQueue) -> None:
    """Register the chaos handlers and apply the runner's settings (the CLI target)."""
    overrides = json.loads(os.environ.get("CHAOS_SETTINGS", "{}"))
    if overrides:
        # The CLI has no flags for these; the worker is built from queue.config at start().
        queue.config = queue.config.model_copy(update=overrides)
    backoff = sq.Fixed(float(os.environ.get("CHAOS_BACKOFF", "0.05")))
    only = os.environ.get("CHAOS_QUEUES")  # a comma list: handle these queues alone
    for handler in (Chaos(), ChaosSync(), Long(), LongSync(), Hung()):
        if only and handler.QUEUE not in only.split(","):
            continue
        queue.register_handler(handler)
        queue.set_queue_backoff(handler.QUEUE, backoff)
    pool_timeout = os.environ.get("CHAOS_POOL_TIMEOUT")
    if pool_timeout:
        queue.pool.timeout = float(pool_timeout)
    hog_seconds = float(os.environ.get("CHAOS_HOG_SECONDS", "0") or 0)
    if hog_seconds:
        loop = asyncio.get_running_loop()

        def on_usr1() -> None:
            task = loop.create_task(_hog(queue, hog_seconds))
            _background.add(task)
            task.add_done_callback(_background.discard)

        loop.add_signal_handler(signal.SIGUSR1, on_usr1)
