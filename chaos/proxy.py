"""A TCP proxy that can go silent: the network partition of a test, without root.

It forwards bytes both ways between its clients and a server. `freeze()` makes it stop
forwarding and stop answering while keeping every socket open: what a dropped-packet
partition looks like to an application that waits for a reply (it waits forever unless it
has its own timeout). `thaw()` resumes. `cut_when_sent(marker)` closes the connection
whose client next sends `marker`, before the server sees it: a connection lost between two
statements. It runs its own event loop in a thread, so it keeps its word whatever the
process under test does with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

__all__ = ["SilentProxy"]


class SilentProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        """`target_host` is a host name or address, or a unix socket directory."""
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="silent-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut_marker: bytes | None = None
        self.cuts = 0
        """Connections closed by `cut_when_sent`."""

    def __enter__(self) -> SilentProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def freeze(self) -> None:
        """Stop forwarding, silently: no byte passes, no socket closes."""
        self._loop.call_soon_threadsafe(self._flowing.clear)

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(self._flowing.set)

    def cut_when_sent(self, marker: bytes) -> None:
        """Once: the connection whose client next sends `marker` (a statement's text, say)
        is closed both ways, and the server never sees those bytes."""
        self._cut_marker = marker

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing.set()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            for writer in self._writers:
                writer.transport.abort()
            self._server.close()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Ended by the proxy's exit, a connection ends quietly: asyncio would log a handler
        # cancelled mid-connection as an error.
        with contextlib.suppress(asyncio.CancelledError):
            await self._forward(reader, writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self._flowing.wait()  # a connection made while frozen hangs like any other
        host, port = self.target
        try:
            if host.startswith("/"):  # libpq's way to name a unix socket: its directory
                up_reader, up_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
            else:
                up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer, writer),
            self._pipe(up_reader, writer),
            return_exceptions=True,
        )

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: asyncio.StreamWriter | None = None,
    ) -> None:
        """Bytes from `reader` to `writer`; `client` is the other end when they are the
        client's (only those may be cut)."""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                marker = self._cut_marker
                if client is not None and marker is not None and marker in data:
                    self._cut_marker = None
                    self.cuts += 1
                    writer.transport.abort()
                    client.transport.abort()
                    break
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
