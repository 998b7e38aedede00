"""The watcher of fast queues: while one of this worker's queues is fast, it re-reads the
queues' rows once a second, apart from the claims (which an idle poller makes seldom and a
stopping one no more), so a queue made durable again is written durably within a second.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from simplequeue.runtime.outage import DatabaseHealth
from simplequeue.runtime.service import PeriodicService

__all__ = ["FastQueuesWatcher"]


class FastQueuesWatcher(PeriodicService):
    """Calls `follow` every `every` seconds (it reads only while a queue is fast)."""

    name = "durability"

    def __init__(
        self,
        follow: Callable[[], Awaitable[None]],
        every: float,
        *,
        health: DatabaseHealth | None = None,
    ) -> None:
        super().__init__(health)
        self._follow = follow
        self._every = every

    def seconds_until_next(self) -> float:
        return self._every

    async def run_once(self) -> None:
        await self._follow()
