"""Progress reports of running jobs: `job.set_progress` in a handler, written at once by
one statement fenced by the run's lease, on the worker's event loop (a sync handler's
thread waits for it there, as `BlockingQueue`'s calls do). Those of a fast queue's jobs
commit without waiting for the WAL flush."""

from __future__ import annotations

import asyncio
from typing import Any

from psycopg_pool import AsyncConnectionPool

from simplequeue.audience import Audience
from simplequeue.codec import encode_data
from simplequeue.connections import borrow
from simplequeue.drivers import commits_alone, run
from simplequeue.durability import FastQueues
from simplequeue.errors import InvalidArgumentError, InvalidJobError
from simplequeue.job import Job, ProgressUpdate
from simplequeue.stopping import StopReason
from simplequeue.store import Store, storable_error

__all__ = ["MAX_PROGRESS_MESSAGE", "ProgressWriter", "checked_progress"]

MAX_PROGRESS_MESSAGE = 1000
"""Characters of a progress message kept (a longer one is cut, saying how much was)."""


def checked_progress(value: Any, message: object, limit: int) -> tuple[str | None, str | None]:
    """The progress value as JSON text (None: none) and the message as a text column
    holds it; InvalidArgumentError, in the handler that called, for what cannot be stored."""
    if message is not None and not isinstance(message, str):
        raise InvalidArgumentError(
            f"a progress message must be a string or None, got {type(message).__name__}"
        )
    text = None
    if value is not None:
        try:
            text = encode_data(value, "the progress value")
        except InvalidJobError as exc:
            raise InvalidArgumentError(str(exc)) from None
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        if size > limit:
            raise InvalidArgumentError(
                f"the progress value is {size} bytes of JSON; the limit is {limit} "
                "(max_progress_bytes): report a summary (a count, a fraction, a few fields)"
            )
    return text, storable_error(message, MAX_PROGRESS_MESSAGE)


class ProgressWriter:
    """Bound by the executor to every job it runs (`Job.set_progress` calls it)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: Store,
        loop: asyncio.AbstractEventLoop,
        *,
        max_bytes: int,
        audience: Audience | None = None,
        fast_queues: FastQueues | None = None,
    ) -> None:
        self._fast = fast_queues or FastQueues()
        self._pool = pool
        self._store = store
        self._loop = loop
        self._max_bytes = max_bytes
        self._audience = audience or Audience()

    def __call__(self, job: Job[Any], value: Any, message: str | None) -> ProgressUpdate:
        """On the worker's loop (an async handler): an update to await. Elsewhere (a sync
        handler's thread): written before returning."""
        progress, text = checked_progress(value, message, self._max_bytes)
        write = self._write(job, progress, text)
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return ProgressUpdate(write)
        if self._loop.is_closed():  # the worker is gone: nothing can be recorded
            write.close()
            return ProgressUpdate(recorded=False)
        return ProgressUpdate(recorded=asyncio.run_coroutine_threadsafe(write, self._loop).result())

    async def _write(self, job: Job[Any], progress: str | None, message: str | None) -> bool:
        if job.stopping.reason == StopReason.LOST:  # known already: no round trip
            return False
        publish = self._audience.listened
        async with borrow(self._pool) as conn:
            run_id, lease, queue = job._run_as_claimed()  # whatever the handler did to the object
            fast = self._fast.all_fast([queue]) and commits_alone(conn)
            plan = self._store.set_progress(
                run_id, lease, progress, message, publish=publish, fast=fast
            )
            return await run(conn, plan)
