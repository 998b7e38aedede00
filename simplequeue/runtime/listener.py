"""LISTEN on a dedicated connection: wakes the poller when jobs are inserted (and feeds
the HTTP API's live events, on their own channel).

A lost connection is re-established with backoff; meanwhile the poller's fallback poll
(`empty_poll_sleep`) bounds how long any job waits, and a reconnect tells the receiver
(`received(None)`) that notifications may have been missed.

A connection that cannot hear (`connect` returns None: it would go through a pooler in
transaction mode, where a LISTEN stays behind on whichever server connection ran it) is
not used at all: the listener says why (`unheard`) and ends, for good.
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
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any] | None]],
        listen: Callable[[], Plan[None]],
        received: Callable[[str | None], None],
        *,
        health: DatabaseHealth | None = None,
        unheard: str = "not listening: the connection goes through a connection pooler",
    ) -> None:
        super().__init__(health)
        self._connect = connect
        self._listen = listen
        self._received = received
        self._unheard = unheard
        self.connected = asyncio.Event()
        self.stood_down = asyncio.Event()
        """Set when the listener ended for good, its connection unable to hear."""
        self.connections = 0

    async def settled(self) -> None:
        """Wait until the LISTEN is in place, or the listener stood down."""
        connected = asyncio.ensure_future(self.connected.wait())
        stood_down = asyncio.ensure_future(self.stood_down.wait())
        try:
            await asyncio.wait([connected, stood_down], return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            stood_down.cancel()

    async def run(self) -> None:
        while True:
            try:
                conn = await self._connect()
                if conn is None:
                    self.outage.recovered()
                    self.log.warning("%s", self._unheard)
                    self.stood_down.set()
                    return
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
