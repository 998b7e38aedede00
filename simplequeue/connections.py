"""How the library gets its connections: pooled ones that the server already closed are
replaced before use; the ones it opens name themselves and notice a dead peer.

A pooled connection idles between calls. When the server goes away meanwhile (a restart,
`pg_terminate_backend`, a failover) the connection learns it only at its next use, and the
caller's statement would fail for it: one failed call per stale connection of the pool.
A closed peer leaves its trace on the socket (the server's goodbye message, or the end of
the stream), so one non-blocking poll of the socket, no round trip, tells a stale
connection from a live one before anything is sent on it.

Behind a pooler in transaction mode (PgBouncer), what a connection leaves on the server
outlives its transaction on a server connection other clients get next: a prepared
statement (PgBouncer before 1.21 does not follow it to the server connection the client
gets next), a LISTEN (its notifications go to whoever holds that server connection then).
So the pools the library owns stop preparing when their connections turn out to go
through a pooler (`prepared_statements`), its own connections never prepare, and its
LISTEN connections stand down there unless `listen_dsn` gives them a connection of their
own.
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from simplequeue.config import QueueConfig
from simplequeue.drivers import run, run_sync
from simplequeue.errors import InvalidArgumentError, QueueStateError
from simplequeue.statements import SERVER_PID
from simplequeue.store import Plan, Run

__all__ = [
    "APPLICATION_NAME",
    "borrow",
    "borrow_sync",
    "dedicated_settings",
    "defaults_for",
    "listen_connector",
    "owned_pool_settings",
    "through_pooler",
    "through_pooler_sync",
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
    dsn: object, config: QueueConfig, name: str = APPLICATION_NAME, *, sync: bool = False
) -> dict[str, Any]:
    """The settings of a pool a queue owns (`from_url`; `sync`: SyncQueue's): its size
    from the config; its connections named, watching their peer, in autocommit (a
    statement of ours is its own transaction), preparing statements as
    `prepared_statements` says. Raises InvalidArgumentError for what is not a connection
    string."""
    if not isinstance(dsn, str):
        raise InvalidArgumentError(f"from_url needs a connection string, got {type(dsn).__name__}")
    try:
        defaults = defaults_for(dsn, None, ours=name)
    except psycopg.ProgrammingError as exc:
        raise InvalidArgumentError(f"not a valid connection string: {exc}") from None
    kwargs: dict[str, Any] = {**defaults, "autocommit": True}
    settings: dict[str, Any] = {
        "min_size": config.pool_min_size,
        "max_size": config.pool_max_size,
        "kwargs": kwargs,
    }
    if config.prepared_statements is False:
        kwargs["prepare_threshold"] = None
    elif config.prepared_statements is None:  # psycopg's default, unless through a pooler
        settings["configure"] = (
            _unprepared_through_pooler_sync if sync else _unprepared_through_pooler
        )
    return settings


async def _unprepared_through_pooler(conn: psycopg.AsyncConnection[Any]) -> None:
    """A new connection of an owned pool prepares nothing when it goes through a pooler."""
    if await through_pooler(conn):
        conn.prepare_threshold = None


def _unprepared_through_pooler_sync(conn: psycopg.Connection[Any]) -> None:
    if through_pooler_sync(conn):
        conn.prepare_threshold = None


async def through_pooler(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the connection goes through a pooler (PgBouncer and its kind) rather than
    straight to a server process. A pooler answers a login with a cancel key of its own,
    so the process the key names (`info.backend_pid`) is not the one that runs the
    connection's statements. One round trip; either pooling mode."""
    return await run(conn, _server_pid()) != conn.info.backend_pid


def through_pooler_sync(conn: psycopg.Connection[Any]) -> bool:
    """`through_pooler`, on a sync connection."""
    return run_sync(conn, _server_pid()) != conn.info.backend_pid


def _server_pid() -> Plan[int]:
    result = yield Run(SERVER_PID)
    row = result.first()
    return int(row[0]) if row else 0


def dedicated_settings(
    pool: AsyncConnectionPool[Any],
    role: str,
    name: str = APPLICATION_NAME,
    dsn: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """How to open a connection of the worker's own (the heartbeat's, the listener's):
    like the pool's (or on `dsn` alone, with none of the pool's kwargs), in autocommit,
    named after its role, watching its peer, never preparing a statement: it runs a few,
    once per interval, where preparing saves nothing, and a prepared statement breaks the
    connection behind PgBouncer before 1.21 in transaction mode."""
    conninfo, kwargs = pool.conninfo, pool.kwargs
    if dsn is not None:
        conninfo, kwargs = dsn, None
    if not isinstance(conninfo, str) or not isinstance(kwargs, dict | None):
        raise QueueStateError(
            "workers need a pool built from a conninfo string and a kwargs dict "
            "(callable conninfo/kwargs are not supported)"
        )
    settings = {
        **(kwargs or {}),
        **defaults_for(conninfo, kwargs, role, ours=name),
        "autocommit": True,
        "prepare_threshold": None,
    }
    for own_choice in ("row_factory", "cursor_factory"):  # ours: tuples, server-side params
        settings.pop(own_choice, None)
    return conninfo, settings


def listen_connector(
    pool: AsyncConnectionPool[Any],
    role: str,
    name: str = APPLICATION_NAME,
    listen_dsn: str | None = None,
) -> Callable[[], Awaitable[psycopg.AsyncConnection[Any] | None]]:
    """How a LISTEN connection is opened: on `listen_dsn` when given (trusted: a direct
    connection, or a pooler in session mode), else like the pool's connections, but None
    when those go through a pooler. There a LISTEN hears nothing in transaction mode, and
    what it leaves on a server connection sends every notification after to the clients
    that borrow it next (psycopg keeps them, unread, for the connection's life)."""
    conninfo, settings = dedicated_settings(pool, role, name, listen_dsn)

    async def connect() -> psycopg.AsyncConnection[Any] | None:
        conn = await psycopg.AsyncConnection.connect(conninfo, **settings)
        try:
            pooled = listen_dsn is None and await through_pooler(conn)
        except BaseException:
            await conn.close()
            raise
        if pooled:
            await conn.close()
            return None
        return conn

    return connect


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
