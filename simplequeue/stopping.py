"""StopSignal: how a running handler learns that its job is no longer its to finish."""

from __future__ import annotations

import asyncio
import contextlib
import threading

__all__ = ["StopReason", "StopSignal"]


class StopReason:
    """Why a run was told to stop (the values of `StopSignal.reason`)."""

    LOST = "lost"
    """The job was cancelled, or reaped and claimed again elsewhere: whatever this run
    writes now is ignored."""
    SHUTDOWN = "shutdown"
    """The worker is stopping: finish soon, or be interrupted at the stop's timeout (the
    job then goes back to pending without spending its attempt)."""
    TIMEOUT = "timeout"
    """The attempt ran past its timeout and counts as failed: a thread, which cannot be
    interrupted, should give up on its own."""


class StopSignal:
    """Set at most once, by the runtime, from any thread; read by the handler.

    Poll it (`is_set()`, from async or sync code), await it (`await job.stopping.wait()`,
    on the worker's event loop), or block on it in a sync handler
    (`job.stopping.wait_sync(timeout)`). Costs nothing until someone waits.
    """

    __slots__ = ("_async_waiters", "_lock", "_sync_event", "reason")

    def __init__(self) -> None:
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._sync_event: threading.Event | None = None
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def is_set(self) -> bool:
        return self.reason is not None

    @property
    def waiting(self) -> int:
        """How many `wait()` calls wait now."""
        with self._lock:
            return len(self._async_waiters)

    def set(self, reason: str) -> None:
        """Tell the run to stop (the first reason stays); safe from any thread."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            sync_event, waiters = self._sync_event, self._async_waiters
            self._async_waiters = []
        if sync_event is not None:
            sync_event.set()
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there
                loop.call_soon_threadsafe(event.set)

    async def wait(self) -> str:
        """Return the reason once the signal is set."""
        with self._lock:
            if self.reason is not None:
                return self.reason
            event = asyncio.Event()
            waiter = (asyncio.get_running_loop(), event)
            self._async_waiters.append(waiter)
        try:
            await event.wait()
        finally:
            with self._lock:  # a wait cancelled (a timeout around it) leaves nothing behind
                if waiter in self._async_waiters:
                    self._async_waiters.remove(waiter)
        assert self.reason is not None
        return self.reason

    def wait_sync(self, timeout: float | None = None) -> bool:
        """Block until the signal is set (True) or `timeout` seconds pass (False)."""
        with self._lock:
            if self.reason is not None:
                return True
            if self._sync_event is None:
                self._sync_event = threading.Event()
            event = self._sync_event
        return event.wait(timeout)

    def __repr__(self) -> str:
        return f"StopSignal(reason={self.reason!r})"
