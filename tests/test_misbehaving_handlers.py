"""Handlers that misbehave: what they raise, how they end and how long they run never
break max_attempts, the permits, or the worker itself."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import threading
import time
from typing import Any

import pytest

import simplequeue as sq
from tests.conftest import FAST, count, eventually, query


class Odd(BaseException):
    """Not an Exception: what a careless library might raise."""


def _raise(what: str) -> None:
    if what == "cancelled":
        raise asyncio.CancelledError()  # e.g. awaiting an inner task that was cancelled
    if what == "systemexit":
        sys.exit(3)
    if what == "keyboard":
        raise KeyboardInterrupt
    raise Odd("odd")


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("what", ["cancelled", "systemexit", "keyboard", "odd"])
async def test_whatever_a_handler_raises_is_a_failed_attempt(
    dsn: str, what: str, sync: bool
) -> None:
    runs: list[int] = []

    if sync:

        class Raises(sq.Handler):
            QUEUE = "raises"

            def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
                runs.append(job.attempt)
                _raise(what)

    else:

        class Raises(sq.Handler):  # type: ignore[no-redef]
            QUEUE = "raises"

            async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
                runs.append(job.attempt)
                _raise(what)

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Raises())
        await queue.start()
        await queue.insert_job(sq.Job("raises", {}, max_attempts=2))
        await eventually(lambda: count(dsn, "status = 'failed'") == 1)
        await asyncio.sleep(0.5)  # no further run
        assert queue.running  # the worker survived
        ok = await queue.insert_job(sq.Job("raises", {}, max_attempts=1))
        await eventually(lambda: count(dsn, "status = 'failed'") == 2)
    assert runs == [1, 2, 1]
    ((error,),) = query(dsn, "SELECT last_error FROM simplequeue.jobs WHERE id <> %s LIMIT 1", [ok])
    assert error is not None


class Stubborn(sq.Handler):
    """An async handler that ignores the cancellation of its timeout."""

    QUEUE = "stubborn"
    timeout = 0.2

    def __init__(self, keep_running: float) -> None:
        self.keep_running = keep_running
        self.now = self.most = 0

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> str:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            end = time.monotonic() + self.keep_running
            while time.monotonic() < end:
                with contextlib.suppress(asyncio.CancelledError):  # swallowed
                    await asyncio.sleep(0.05)
            return "done anyway"
        finally:
            self.now -= 1


async def test_an_async_handler_that_ignores_its_timeout_fails_and_keeps_its_permits(
    dsn: str,
) -> None:
    handler = Stubborn(keep_running=1.0)
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(handler)
        queue.set_queue_permits("stubborn", 1)
        await queue.start()
        await queue.insert_jobs([sq.Job("stubborn", n, max_attempts=1) for n in range(3)])
        await eventually(lambda: count(dsn, "status = 'failed'") == 3, timeout=15)
    assert handler.most == 1  # the next job waited for the stubborn one to end
    errors = {e for (e,) in query(dsn, "SELECT last_error FROM simplequeue.jobs")}
    assert errors == {"timed out after 0.2s"}


async def test_limits_hold_for_threads_that_outlive_a_restart(dsn: str) -> None:
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    class Blocks(sq.Handler):
        QUEUE = "blocks"
        timeout = 0.1

        def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(1.0)
            with lock:
                state["now"] -= 1

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Blocks())
        queue.set_queue_permits("blocks", 1)
        await queue.start()
        await queue.insert_jobs([sq.Job("blocks", n, max_attempts=1) for n in range(3)])
        await eventually(lambda: state["now"] == 1)
        await asyncio.sleep(0.3)  # past its timeout: failed, its thread still blocking
        await queue.stop(0.1)
        await queue.start()
        await eventually(lambda: count(dsn, "status = 'failed'") == 3, timeout=15)
        await eventually(lambda: state["now"] == 0, timeout=5)
    assert state["most"] == 1


def logged(fn: Any) -> Any:
    """A decorator that forgot about coroutines: it returns what the function returns."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


async def test_an_async_handler_behind_a_plain_decorator_runs(dsn: str) -> None:
    ran: list[Any] = []

    class Decorated(sq.Handler):
        QUEUE = "decorated"

        @logged
        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            await asyncio.sleep(0)
            ran.append(job.data)

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Decorated())
        await queue.start()
        await queue.insert_job(sq.Job("decorated", "x"))
        await eventually(lambda: count(dsn, "status = 'completed'") == 1)
    assert ran == ["x"]
