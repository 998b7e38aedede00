"""Live job transitions for the HTTP API: one LISTEN per server process, fanned out to
every subscriber (each Server-Sent Events client) with its own filter and a bounded
buffer, so one slow client neither grows the server's memory nor delays the others."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.connections import borrow, listen_connector
from simplequeue.drivers import run
from simplequeue.runtime.listener import Listener
from simplequeue.store import Store

__all__ = ["BUFFERED", "Event", "EventHub", "Subscription"]

log = logging.getLogger("simplequeue.web")

BUFFERED = 1000
"""Events a subscriber may fall behind by; past that it is told it lagged and skips."""

LISTENER_TTL = 30.0
"""Seconds a server's row in event_listeners counts: it renews it every third of that."""

KINDS = (
    "inserted",
    "started",
    "completed",
    "retried",
    "failed",
    "cancelled",
    "dead",
    "progress",
)
"""Job transitions, and `progress`: a running job reported how far it has come."""


@dataclass(frozen=True)
class Event:
    kind: str
    job_id: str
    queue: str | None
    """None for a queue name longer than 120 bytes once JSON-escaped (the NOTIFY payload
    stays small): `queue_md5` names it then."""
    queue_md5: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.job_id, "queue": self.queue}

    @classmethod
    def parse(cls, line: str) -> Event | None:
        """One line of a NOTIFY payload; None for anything this library did not write
        (any role may NOTIFY the channel)."""
        try:
            kind, job_id, queue, *rest = json.loads(line)
            event = cls(str(kind), str(uuid.UUID(str(job_id))), queue, *rest[:1])
        except (ValueError, TypeError, AttributeError):
            return None
        if event.kind not in KINDS or not isinstance(event.queue, str | None):
            return None
        if not isinstance(event.queue_md5, str | None):
            return None
        return event

    @functools.cached_property
    def sse(self) -> str:
        """The event as a Server-Sent Events message: written once, sent to every client."""
        return f"event: {self.kind}\ndata: {json.dumps(self.to_dict())}\n\n"


@dataclass(eq=False)  # each one is itself: kept in a set by identity
class Subscription:
    """One client's view: the events of `queue` and of `job` (each None: any)."""

    queue: str | None = None
    job: str | None = None
    events: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(BUFFERED))
    lagged: int = 0
    """Events dropped because the client fell behind, not yet reported to it."""
    gap: bool = False
    """The server's LISTEN connection was re-established: events may have been missed."""

    def __post_init__(self) -> None:
        self._md5 = (
            None
            if self.queue is None
            else hashlib.md5(self.queue.encode(), usedforsecurity=False).hexdigest()
        )

    def wants(self, event: Event) -> bool:
        if self.job is not None and event.job_id != self.job:
            return False
        if self.queue is None:
            return True
        if event.queue is None:  # a long queue name, known by its md5
            return event.queue_md5 == self._md5
        return event.queue == self.queue

    def offer(self, event: Event) -> None:
        try:
            self.events.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged += 1


class EventHub:
    """Starts listening with its first subscriber; `aclose()` stops it. It listens on
    `listen_dsn` when given, else on a connection like the pool's; not at all when those
    go through a pooler (the streams then carry pings only)."""

    def __init__(
        self, pool: AsyncConnectionPool[Any], store: Store, listen_dsn: str | None = None
    ) -> None:
        self._store = store
        self._pool = pool
        self._listen_dsn = listen_dsn
        self._subscriptions: set[Subscription] = set()
        self._listener: Listener | None = None
        self._task: asyncio.Task[None] | None = None
        self._registering: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self._id = uuid.uuid4()
        self._connections = 0
        self.received = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    @property
    def connected(self) -> bool:
        return self._listener is not None and self._listener.connected.is_set()

    def _start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        connect = listen_connector(self._pool, "events", listen_dsn=self._listen_dsn)
        self._listener = Listener(
            connect,
            self._store.listen_events,
            self._received,
            unheard="events: not listening: the server's connections go through a "
            "connection pooler (PgBouncer?), where a LISTEN hears nothing in transaction "
            "pooling; live events (GET /events) stay silent. Set listen_dsn "
            "(simplequeue serve --listen-dsn) to a connection string straight to the server",
        )
        self._task = asyncio.create_task(self._listener.run(), name="simplequeue-events")
        self._registering = asyncio.create_task(self._register(), name="simplequeue-listener")

    async def _register(self) -> None:
        """Keep this server's row in event_listeners: while it is there, workers and
        producers publish the events (they skip them otherwise). Not when the listener
        stood down: nobody would hear them."""
        assert self._listener is not None
        await self._listener.settled()
        if self._listener.stood_down.is_set():
            return
        while True:
            try:
                async with borrow(self._pool) as conn:
                    await run(conn, self._store.listener_beat(self._id, LISTENER_TTL))
                self._registered.set()
            except psycopg.Error as exc:
                log.warning("events: cannot register as a listener (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(LISTENER_TTL / 3)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until the LISTEN is in place (so no event after this is missed)."""
        self._start()
        assert self._listener is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._listener.settled()
                if not self._listener.stood_down.is_set():
                    await self._registered.wait()
        return self.connected and self._registered.is_set()

    @contextlib.asynccontextmanager
    async def subscribe(self, subscription: Subscription) -> AsyncIterator[Subscription]:
        self._start()
        self._subscriptions.add(subscription)
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)

    def _received(self, payload: str | None) -> None:
        if payload is None:  # (re)connected: what happened meanwhile is not known
            if self._connections:
                for subscription in self._subscriptions:
                    subscription.gap = True
            self._connections += 1
            return
        for line in payload.split("\n"):
            event = Event.parse(line)
            if event is None:
                log.warning("events: a notification that is not an event was ignored")
                continue
            self.received += 1
            for subscription in self._subscriptions:
                if subscription.wants(event):
                    subscription.offer(event)

    async def aclose(self) -> None:
        """Stop listening; the row goes, and workers stop publishing at their next beat."""
        for task in (self._task, self._registering):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._registered.is_set():
            with contextlib.suppress(psycopg.Error):
                async with borrow(self._pool) as conn:
                    await run(conn, self._store.listener_gone(self._id))
        self._task = self._registering = None
        self._registered.clear()
