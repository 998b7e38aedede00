"""What this process knows per queue: its handler, permit count, backoff and strategy."""

from __future__ import annotations

from collections.abc import Callable

from simplequeue.backoff import BackoffStrategy, check_backoff
from simplequeue.config import QueueConfig
from simplequeue.errors import ConfigError
from simplequeue.handler import Handler
from simplequeue.permits import Immediate, JobStrategy, PermitCounter
from simplequeue.validation import check_key

__all__ = ["QueueRegistry"]


def _check_queue_name(name: str) -> str:
    check_key("queue name", name, required=True, error=ConfigError)
    return name


class QueueRegistry:
    """Per-queue settings; queues without a handler are never claimed by this process."""

    def __init__(self, config: QueueConfig) -> None:
        self._config = config
        self.handlers: dict[str, Handler] = {}
        self.global_permits = PermitCounter(config.global_permits)
        self._permits: dict[str, PermitCounter] = {}
        self._backoff: dict[str, BackoffStrategy] = {}
        self._strategy: dict[str, JobStrategy] = {}
        self._default_strategy = Immediate()
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when a handler or a limit changes, so a waiting poller looks
        again. Returns the function that stops the calls (a stopped poller must not stay
        reachable from here)."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def _changed(self) -> None:
        for callback in self._listeners:
            callback()

    def register(self, handler: Handler) -> None:
        Handler.check(handler)
        queue = handler.QUEUE
        existing = self.handlers.get(queue)
        if existing is not None and existing is not handler:
            raise ConfigError(
                f"queue {queue!r} already has a handler ({type(existing).__name__}); "
                "one handler per queue"
            )
        self.handlers[queue] = handler
        self._changed()

    def permits(self, queue: str) -> PermitCounter:
        counter = self._permits.get(queue)
        if counter is None:
            counter = self._permits[queue] = PermitCounter(self._config.queue_permits)
        return counter

    def set_permits(self, queue: str, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"queue permits must be a positive integer, got {n!r}")
        self.permits(_check_queue_name(queue)).limit = n
        self._changed()

    def backoff(self, queue: str) -> BackoffStrategy:
        return self._backoff.get(queue) or self._config.backoff

    def set_backoff(self, queue: str, strategy: BackoffStrategy) -> None:
        self._backoff[_check_queue_name(queue)] = check_backoff("backoff", strategy)

    def strategy(self, queue: str) -> JobStrategy:
        return self._strategy.get(queue, self._default_strategy)

    def set_strategy(self, queue: str, strategy: JobStrategy) -> None:
        if not isinstance(strategy, JobStrategy) or isinstance(strategy, type):
            raise ConfigError(
                f"a queue strategy needs an async acquire(job) method, got {strategy!r}"
            )
        self._strategy[_check_queue_name(queue)] = strategy
        self._changed()
