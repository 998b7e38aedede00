"""Writes job results in batches: one fenced statement per flush, by size or after a few ms.

A handler's work is done before its result is durable: a crash between the two makes the
job run again (at-least-once). Failed writes are retried, never dropped; the fence makes a
retried write that already landed a no-op. Until its outcome is written, the job keeps its
heartbeat (`Heartbeater.hold`), so the reaper does not take it away meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from psycopg_pool import AsyncConnectionPool

from simplequeue.connections import borrow
from simplequeue.job import JobStatus
from simplequeue.runtime.outage import Outage, is_transient
from simplequeue.store import Outcome, Store

if TYPE_CHECKING:
    from simplequeue.runtime.heartbeat import Heartbeater

__all__ = ["ResultWriter"]

log = logging.getLogger("simplequeue.results")


class ResultWriter:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: Store,
        *,
        batch_size: int,
        flush_interval: float,
        max_buffered: int = 10_000,
        heartbeats: Heartbeater | None = None,
    ) -> None:
        self._pool = pool
        self._heartbeats = heartbeats
        self._store = store
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_buffered = max_buffered
        self._buffer: list[Outcome] = []
        # A batch is full at batch_size, or when the buffer is: nothing more can come then.
        self._full_batch = min(batch_size, max_buffered)
        self._filled = asyncio.Event()
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()
        self._closing = False
        self._deadline: float | None = None
        self._outage = Outage(log, "result writer")
        self.written = 0
        self.fenced_off = 0

    async def submit(self, outcome: Outcome) -> None:
        """Queue a result; waits only when too many are already waiting (back-pressure)."""
        while len(self._buffer) >= self._max_buffered:
            self._has_room.clear()
            await self._has_room.wait()
        if self._heartbeats is not None:
            self._heartbeats.hold(outcome.job_id, outcome.lease)
        self._buffer.append(outcome)
        self._has_items.set()
        if len(self._buffer) >= self._full_batch:
            self._filled.set()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def run(self) -> None:
        """The flush loop; returns once closed and everything is written (or the deadline hit)."""
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._has_items.clear()
                await self._has_items.wait()
                continue
            if len(self._buffer) < self._full_batch and self._flush_interval and not self._closing:
                # Wait a little for more results, unless a whole batch is already there.
                self._filled.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._filled.wait(), self._flush_interval)
            batch = sorted(self._buffer[: self._batch_size], key=lambda o: o.job_id)
            del self._buffer[: self._batch_size]
            self._has_room.set()
            try:
                written = await self._write(batch)
            finally:
                self._release(batch)
            if not written:
                return

    def close(self, deadline: float) -> None:
        """Stop accepting waits: flush what is buffered, retrying until `deadline` (monotonic)."""
        self._closing = True
        self._deadline = deadline
        self._has_items.set()

    def _release(self, outcomes: list[Outcome]) -> None:
        if self._heartbeats is not None:
            self._heartbeats.release([(o.job_id, o.lease) for o in outcomes])

    async def _write(self, batch: list[Outcome], *, last_resort: bool = False) -> bool:
        """Write a batch; False when giving up at shutdown. A transient failure is retried
        with backoff; a batch the database refuses is written one result at a time, and a
        result it refuses ends its job as failed instead (`_refused`)."""
        while True:
            try:
                async with borrow(self._pool) as conn:
                    changed = await self._store.write_outcomes(conn, batch)
            except Exception as exc:
                if not is_transient(exc):
                    await self._refused(batch, exc, last_resort=last_resort)
                    return True
                delay = self._outage.failed(exc)
                if (
                    self._closing
                    and self._deadline is not None
                    and time.monotonic() + delay > self._deadline
                ):
                    lost = len(batch) + len(self._buffer)
                    log.error(
                        "gave up writing %d result(s) at shutdown; those jobs stay running "
                        "until the reaper returns them to pending",
                        lost,
                    )
                    self._release(self._buffer)
                    self._buffer.clear()
                    return False
                await asyncio.sleep(delay)
                continue
            self._outage.recovered()
            self.written += len(changed)
            self.fenced_off += len(batch) - len(changed)
            return True

    async def _refused(self, batch: list[Outcome], exc: Exception, *, last_resort: bool) -> None:
        """The database refused this batch and will refuse it again (a constraint, a
        trigger): find the result it refuses and end that job as failed, saying why.

        Dropping the result instead would leave the job running; the reaper would give
        its attempt back and the handler would run again and again, past max_attempts.
        """
        if len(batch) > 1:
            for outcome in batch:
                await self._write([outcome])
            return
        (outcome,) = batch
        if last_resort:
            log.error(
                "the database refused even to end job %s as failed (%s); it stays running "
                "until the reaper returns it",
                outcome.job_id,
                exc,
                extra={"job_id": str(outcome.job_id)},
            )
            return
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.error(
            "the database refused the %s result of job %s (%s); ending it as failed",
            outcome.status,
            outcome.job_id,
            reason,
            extra={"job_id": str(outcome.job_id)},
        )
        failed = Outcome(
            outcome.job_id,
            outcome.lease,
            JobStatus.FAILED,
            error=f"the database refused this attempt's result ({outcome.status}): {reason}",
        )
        await self._write([failed], last_resort=True)
