"""LISTEN on a dedicated connection: wakes the poller when jobs are inserted (and feeds
the HTTP API's live events, on their own channel).

A lost connection is re-established with backoff; meanwhile the poller's fallback poll
(`empty_poll_sleep`) bounds how long any job waits, and a reconnect tells the receiver
(`received(None)`) that notifications may have been missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from simplequeue.drivers import run
from simplequeue.runtime.outage import DatabaseHealth
from simplequeue.runtime.service import Service
from simplequeue.statements import PROBE
from simplequeue.store import Plan, Run

__all__ = ["Listener"]

PROBE_EVERY = 15.0
"""Seconds of silence after which the connection is probed, to notice a dead peer."""


class Listener(Service):
    name = "listener"

    def __init__(
        self,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        listen: Callable[[], Plan[None]],
        received: Callable[[str | None], None],
        *,
        health: DatabaseHealth | None = None,
    ) -> None:
        super().__init__(health)
        self._connect = connect
        self._listen = listen
        self._received = received
        self.connected = asyncio.Event()
        self.connections = 0

    async def run(self) -> None:
        while True:
            try:
                conn = await self._connect()
                try:
                    await run(conn, self._listen())
                    self.connections += 1
                    self.connected.set()
                    self.outage.recovered()
                    self._received(None)
                    await self._receive(conn)
                finally:
                    self.connected.clear()
                    await conn.close()
            except (psycopg.Error, OSError) as exc:  # a refused LISTEN too: retried all the same
                await self.back_off(exc)

    async def _receive(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            async for notify in conn.notifies(timeout=PROBE_EVERY):
                self._received(notify.payload)
            await run(conn, probe())


def probe() -> Plan[None]:
    """One round trip: fails on a connection whose peer is gone."""
    yield Run(PROBE)
