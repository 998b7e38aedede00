"""Writes job results in batches: one fenced statement per flush, by size or after a few ms.

A handler's work is done before its result is durable: a crash between the two makes the
job run again (at-least-once). The results of a fast queue's jobs go in a statement of
their own, which commits without waiting for the WAL flush; a durable queue's results
are never in it. Failed writes are retried, never dropped; the fence makes a
retried write that already landed a no-op. Until its outcome is written, the job keeps its
heartbeat (`Heartbeater.hold`), so the reaper does not take it away meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.audience import Audience
from simplequeue.connections import borrow
from simplequeue.drivers import commits_alone, run
from simplequeue.durability import FastQueues
from simplequeue.job import JobStatus
from simplequeue.runtime.outage import DatabaseHealth, is_transient
from simplequeue.runtime.service import Service
from simplequeue.stats import SIZE_BUCKETS, Histogram
from simplequeue.store import Outcome, Store

if TYPE_CHECKING:
    from simplequeue.runtime.heartbeat import Heartbeater

__all__ = ["ResultWriter"]

MIN_RETRY_DELAY = 0.01
MAX_RETRY_DELAY = 1.0
"""Bounds of the wait before writing again results whose rows another transaction held."""


class ResultWriter(Service):
    name = "results"
    label = "result writer"

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: Store,
        *,
        batch_size: int,
        flush_interval: float,
        max_buffered: int = 10_000,
        heartbeats: Heartbeater | None = None,
        health: DatabaseHealth | None = None,
        audience: Audience | None = None,
        fast_queues: FastQueues | None = None,
    ) -> None:
        super().__init__(health)
        self._audience = audience or Audience()
        self._fast = fast_queues or FastQueues()
        self._pool = pool
        self._heartbeats = heartbeats
        self._store = store
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_buffered = max_buffered
        self._buffer: list[Outcome] = []
        self.on_written: Callable[[bool], None] | None = None
        """Called after each batch written, told whether it made a job claimable at once
        (a retry without backoff: no NOTIFY announces it)."""
        """Called after each batch written: permits of the fleet's limits were freed."""
        # A batch is full at batch_size, or when the buffer is: nothing more can come then.
        self._full_batch = min(batch_size, max_buffered)
        self._filled = asyncio.Event()
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._closing = False
        self._deadline: float | None = None
        self._deferred: list[Outcome] = []  # their rows were held by another transaction
        self._retry_at = 0.0
        self._retry_delay = MIN_RETRY_DELAY
        self.written = 0
        self.batch_sizes = Histogram(SIZE_BUCKETS)
        self.fenced_off = 0
        self.refused = 0
        self.written_by_status: Counter[str] = Counter()
        self._writing = 0

    async def submit(self, outcome: Outcome) -> None:
        """Queue a result; waits only when too many are already waiting (back-pressure).

        A park is written at once, before the job's permits are freed: the next job of its
        key must not start in the meantime. (Should that write fail, the batch writes it
        again, before the outcome.)"""
        if outcome.park_until is not None:
            with contextlib.suppress(psycopg.Error):
                async with borrow(self._pool) as conn:
                    fast = self._fast.all_fast([outcome.queue]) and commits_alone(conn)
                    await run(conn, self._store.park_runs([outcome], fast=fast))
        while len(self._buffer) >= self._max_buffered:
            self._has_room.clear()
            await self._has_room.wait()
        if self._heartbeats is not None:
            self._heartbeats.hold(outcome.job_id, outcome.lease, outcome.queue)
        self._buffer.append(outcome)
        self._has_items.set()
        if len(self._buffer) >= self._full_batch:
            self._filled.set()

    @property
    def pending(self) -> int:
        """Outcomes not written yet: buffered, deferred, or in the batch being written."""
        return len(self._buffer) + len(self._deferred) + self._writing

    async def run(self) -> None:
        """The flush loop; returns once closed and everything is written (or the deadline hit)."""
        while True:
            self._take_back_deferred()
            if not self._buffer:
                if self._closing and (not self._deferred or self._past_deadline()):
                    self._give_up(self._deferred)
                    return
                self._has_items.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._until_retry()):
                        await self._has_items.wait()
                continue
            if len(self._buffer) < self._full_batch and self._flush_interval and not self._closing:
                # Wait a little for more results, unless a whole batch is already there.
                self._filled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._filled.wait(), self._flush_interval)
            # In id order (as integers: comparing UUIDs runs Python code), as every batch
            # locks its rows: two writers never wait on each other in a cycle.
            batch = sorted(self._buffer[: self._batch_size], key=lambda o: o.job_id.int)
            del self._buffer[: self._batch_size]
            self._has_room.set()
            deferred = len(self._deferred)
            self._writing = len(batch)
            try:
                written = await self._write(batch)
            finally:
                self._writing = 0
                if len(self._deferred) == deferred:  # nearly always: none held elsewhere
                    self._release(batch)
                else:
                    held = {(o.job_id, o.lease) for o in self._deferred[deferred:]}
                    self._release([o for o in batch if (o.job_id, o.lease) not in held])
            if not written:
                return

    def _take_back_deferred(self) -> None:
        """Results whose rows were held by another transaction go back in the buffer once
        their wait is over."""
        if self._deferred and time.monotonic() >= self._retry_at:
            self._buffer.extend(self._deferred)
            self._deferred.clear()

    def _until_retry(self) -> float | None:
        return max(self._retry_at - time.monotonic(), 0.0) if self._deferred else None

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _give_up(self, outcomes: list[Outcome]) -> None:
        if outcomes:
            self.log.error(
                "gave up writing %d result(s) at shutdown: their rows stayed locked by another "
                "transaction; those jobs stay running until the reaper returns them to pending",
                len(outcomes),
            )
            self._release(outcomes)
            outcomes.clear()

    async def _held_elsewhere(
        self, conn: psycopg.AsyncConnection[Any], batch: list[Outcome], changed: set[uuid.UUID]
    ) -> list[Outcome]:
        """The results not written because another transaction held their rows: those
        still running under their lease (the others were fenced off)."""
        if len(changed) == len(batch):  # every one written (changed holds batch ids only)
            return []
        unwritten = [o for o in batch if o.job_id not in changed]
        if not unwritten:
            return []
        running = await run(
            conn, self._store.running_runs([(o.job_id, o.lease) for o in unwritten])
        )
        return [o for o in unwritten if (o.job_id, o.lease) in running]

    def close(self, deadline: float) -> None:
        """Stop accepting waits: flush what is buffered, retrying until `deadline` (monotonic)."""
        self._closing = True
        self._deadline = deadline
        self._has_items.set()

    def _release(self, outcomes: list[Outcome]) -> None:
        if self._heartbeats is not None:
            self._heartbeats.release([(o.job_id, o.lease) for o in outcomes])

    async def _write(self, batch: list[Outcome], *, fallback: int = 0) -> bool:
        """Write a batch; False when giving up at shutdown. A transient failure is retried
        with backoff; a batch the database refuses is written one result at a time, and a
        result it refuses ends its job as failed instead (`_refused`)."""
        changed: set[uuid.UUID] = set()
        committed: set[uuid.UUID] = set()
        """Outcomes of a part that committed on its own before a later part failed: a
        retry writes the rest only (written again, they would count as fenced off)."""
        while True:
            try:
                async with borrow(self._pool) as conn:
                    publish = self._audience.listened
                    rest = [o for o in batch if o.job_id not in committed]
                    parts = self._by_durability(conn, rest)
                    for part, fast in parts:
                        plan = self._store.write_outcomes(part, publish=publish, fast=fast)
                        changed |= await run(conn, plan)
                        if len(parts) > 1:  # split: each part is a transaction of its own
                            committed.update(o.job_id for o in part)
                    locked = await self._held_elsewhere(conn, batch, changed)
            except Exception as exc:
                if not is_transient(exc):
                    await self._refused(batch, exc, fallback=fallback)
                    return True
                delay = self.outage.failed(exc)
                if (
                    self._closing
                    and self._deadline is not None
                    and time.monotonic() + delay > self._deadline
                ):
                    lost = len(batch) + len(self._buffer) + len(self._deferred)
                    self.log.error(
                        "gave up writing %d result(s) at shutdown; those jobs stay running "
                        "until the reaper returns them to pending",
                        lost,
                    )
                    for left in (self._buffer, self._deferred):
                        self._release(left)
                        left.clear()
                    return False
                await asyncio.sleep(delay)
                continue
            self.outage.recovered()
            if self.on_written is not None:
                again = [o for o in batch if o.due_at_once]  # nearly always none
                self.on_written(any(o.job_id in changed for o in again))
            self.written += len(changed)
            self.batch_sizes.observe(len(batch))
            every = len(changed) == len(batch)
            self.written_by_status.update(o.status for o in batch if every or o.job_id in changed)
            self.fenced_off += len(batch) - len(changed) - len(locked)
            self._defer(locked)
            return True

    def _by_durability(
        self, conn: psycopg.AsyncConnection[Any], batch: list[Outcome]
    ) -> list[tuple[list[Outcome], bool]]:
        """The batch as the writes that store it, each with whether it commits fast: the
        outcomes of fast queues apart from the others, whose write stays durable. The
        fast part goes first: the durable write's flush then covers its WAL too. All in
        one durable write where statements are not transactions of their own."""
        fast_names = self._fast.names
        if not fast_names or not commits_alone(conn):
            return [(batch, False)]
        fast = [o for o in batch if o.queue in fast_names]
        if len(fast) == len(batch):
            return [(batch, True)]
        if not fast:
            return [(batch, False)]
        durable = [o for o in batch if o.queue not in fast_names]
        return [(fast, True), (durable, False)]

    def _defer(self, outcomes: list[Outcome]) -> None:
        """Write these again later, waiting longer each time their rows are still held."""
        if not outcomes:
            self._retry_delay = MIN_RETRY_DELAY
            return
        self._deferred.extend(outcomes)
        self._retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, MAX_RETRY_DELAY)

    async def _refused(self, batch: list[Outcome], exc: Exception, *, fallback: int) -> None:
        """The database refused this batch and will refuse it again (a constraint, a
        trigger): find the result it refuses and end that job as failed instead, saying
        why, or, if that is refused too (a constraint on the error text), with no error.

        Dropping the result instead would leave the job running; the reaper would give
        its attempt back and the handler would run again and again, past max_attempts.
        """
        if len(batch) > 1:
            for outcome in batch:
                await self._write([outcome], fallback=fallback)
            return
        (outcome,) = batch
        if not fallback:
            self.refused += 1
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if fallback >= 2:
            self.log.error(
                "the database refused even to end job %s as failed (%s); it stays running "
                "until the reaper returns it",
                outcome.job_id,
                reason,
                extra={"job_id": str(outcome.job_id)},
            )
            return
        self.log.error(
            "the database refused the %s result of job %s (%s); ending it as failed",
            outcome.status,
            outcome.job_id,
            reason,
            extra={"job_id": str(outcome.job_id)},
        )
        error = f"the database refused this attempt's result ({outcome.status}): {reason}"
        failed = Outcome(
            outcome.job_id,
            outcome.lease,
            JobStatus.FAILED,
            error=None if fallback else error,
            queue=outcome.queue,
        )
        await self._write([failed], fallback=fallback + 1)
