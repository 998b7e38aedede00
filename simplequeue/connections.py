"""How the library gets its connections: pooled ones that the server already closed are
replaced before use; the ones it opens name themselves and notice a dead peer.

A pooled connection idles between calls. When the server goes away meanwhile (a restart,
`pg_terminate_backend`, a failover) the connection learns it only at its next use, and the
caller's statement would fail for it: one failed call per stale connection of the pool.
A closed peer leaves its trace on the socket (the server's goodbye message, or the end of
the stream), so one non-blocking poll of the socket, no round trip, tells a stale
connection from a live one before anything is sent on it.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from simplequeue.config import QueueConfig
from simplequeue.errors import InvalidArgumentError, QueueStateError

__all__ = [
    "APPLICATION_NAME",
    "borrow",
    "borrow_sync",
    "dedicated_settings",
    "defaults_for",
    "owned_pool_settings",
]

APPLICATION_NAME = "simplequeue"
"""How the library's connections show in pg_stat_activity (dedicated ones add their role)."""

PEER_WATCH: dict[str, Any] = {
    "connect_timeout": 10,  # seconds to connect, or give up
    "keepalives": 1,  # a silent idle peer is probed...
    "keepalives_idle": 10,  # ...after 10 s of silence,
    "keepalives_interval": 5,  # every 5 s,
    "keepalives_count": 3,  # and given up after 3 unanswered probes
    "tcp_user_timeout": 30_000,  # ms that sent data may stay unacknowledged
}
"""libpq settings that make a connection notice a dead peer (a partition drops packets
without a reset) within about 30 s instead of the kernel's two hours. Unix sockets ignore
them."""


def defaults_for(
    conninfo: str,
    kwargs: dict[str, Any] | None,
    role: str | None = None,
    ours: str = APPLICATION_NAME,
) -> dict[str, Any]:
    """PEER_WATCH and an application_name (`ours` unless the connection string or kwargs
    name it), less whatever they already set. A `role` (heartbeat, listener) is appended
    to the name, given or ours."""
    given = {**conninfo_to_dict(conninfo), **(kwargs or {})}
    name = given.get("application_name") or ours
    settings = {key: value for key, value in PEER_WATCH.items() if key not in given}
    if role is not None:
        settings["application_name"] = f"{name} {role}"
    elif "application_name" not in given:
        settings["application_name"] = ours
    return settings


def owned_pool_settings(
    dsn: object, config: QueueConfig, name: str = APPLICATION_NAME
) -> dict[str, Any]:
    """The settings of a pool a queue owns (`from_url`): its size from the config; its
    connections named, watching their peer, in autocommit (a statement of ours is its own
    transaction). Raises InvalidArgumentError for what is not a connection string."""
    if not isinstance(dsn, str):
        raise InvalidArgumentError(f"from_url needs a connection string, got {type(dsn).__name__}")
    try:
        defaults = defaults_for(dsn, None, ours=name)
    except psycopg.ProgrammingError as exc:
        raise InvalidArgumentError(f"not a valid connection string: {exc}") from None
    return {
        "min_size": config.pool_min_size,
        "max_size": config.pool_max_size,
        "kwargs": {**defaults, "autocommit": True},
    }


def dedicated_settings(
    pool: AsyncConnectionPool[Any], role: str, name: str = APPLICATION_NAME
) -> tuple[str, dict[str, Any]]:
    """How to open a connection of the worker's own (the heartbeat's, the listener's):
    like the pool's, in autocommit, named after its role, watching its peer."""
    conninfo, kwargs = pool.conninfo, pool.kwargs
    if not isinstance(conninfo, str) or not isinstance(kwargs, dict | None):
        raise QueueStateError(
            "workers need a pool built from a conninfo string and a kwargs dict "
            "(callable conninfo/kwargs are not supported)"
        )
    settings = {
        **(kwargs or {}),
        **defaults_for(conninfo, kwargs, role, ours=name),
        "autocommit": True,
    }
    for own_choice in ("row_factory", "cursor_factory"):  # ours: tuples, server-side params
        settings.pop(own_choice, None)
    return conninfo, settings


@contextmanager
def borrow_sync(pool: ConnectionPool[Any]) -> Iterator[psycopg.Connection[Any]]:
    """`borrow`, for a sync pool."""
    conn = _live_connection_sync(pool)
    try:
        with conn:
            yield conn
    finally:
        pool.putconn(conn)


def _live_connection_sync(pool: ConnectionPool[Any]) -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any]
    for _ in range(pool.max_size):
        conn = pool.getconn()
        try:
            stale = conn.closed or (_readable(conn.pgconn.socket) and not _answers(conn))
        except BaseException:
            conn.close()
            pool.putconn(conn)
            raise
        if not stale:
            return conn
        conn.close()
        pool.putconn(conn)
    conn = pool.getconn()
    return conn


def _answers(conn: psycopg.Connection[Any]) -> bool:
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return False
    return True


@asynccontextmanager
async def borrow(pool: AsyncConnectionPool[Any]) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """`pool.connection()`, but never a connection the server has already closed.

    Like it, the block's transaction is committed at the end (rolled back on an error).
    """
    conn = await _live_connection(pool)
    try:
        async with conn:
            yield conn
    finally:
        await pool.putconn(conn)


async def _live_connection(pool: AsyncConnectionPool[Any]) -> psycopg.AsyncConnection[Any]:
    # Every connection of the pool may be stale (a server restart): one more try than that.
    conn: psycopg.AsyncConnection[Any]
    for _ in range(pool.max_size):
        conn = await pool.getconn()
        try:
            stale = await _closed_by_peer(conn)
        except BaseException:  # cancelled during the check: the connection goes back
            await _discard(pool, conn)
            raise
        if not stale:
            return conn
        await _discard(pool, conn)  # the pool drops it and opens a replacement
    conn = await pool.getconn()
    return conn


async def _discard(pool: AsyncConnectionPool[Any], conn: psycopg.AsyncConnection[Any]) -> None:
    """Close a connection and hand it back, even if the task is being cancelled."""
    try:
        await conn.close()
    finally:
        await asyncio.shield(pool.putconn(conn))


async def _closed_by_peer(conn: psycopg.AsyncConnection[Any]) -> bool:
    """An idle connection has nothing to read. If it has, the server most likely said
    goodbye; but it may be a notice or a notification, so only a round trip decides."""
    if conn.closed:
        return True
    if not _readable(conn.pgconn.socket):
        return False
    try:
        await AsyncConnectionPool.check_connection(conn)
    except psycopg.Error:
        return True
    return False


def _readable(fd: int) -> bool:
    if hasattr(select, "poll"):  # not limited to descriptors below FD_SETSIZE, as select is
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])
