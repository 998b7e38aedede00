"""Drivers: where the store's plans meet a connection, and the one place that knows each
kind of connection a caller may pass as `conn=`.

A plan (`store.Plan`) yields statements and receives their results; a driver executes
them on its connection and sends each result back (or throws its error in, for the plan
to handle or let through). So every operation is written once, and runs on:

- psycopg 3, async and sync: the library's own connections, and a caller's;
- SQLAlchemy 2 sessions and connections, async on psycopg or asyncpg, sync on psycopg or
  psycopg2;
- Django's connection (its PostgreSQL backend, on psycopg 3 or psycopg2).

A driver never commits or rolls back a caller's transaction: statements join it, and
what must be one unit (a COPY and its NOTIFY, a step in a savepoint) is made so within it.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.pq import PipelineStatus, TransactionStatus
from psycopg.rows import tuple_row

from simplequeue.errors import InvalidArgumentError, SchemaNotFoundError
from simplequeue.store import Copy, Plan, Result, Run, sqlstate

__all__ = [
    "AsyncDriver",
    "SyncDriver",
    "async_driver_for",
    "check_async_conn",
    "check_sync_conn",
    "commits_alone",
    "run",
    "run_sync",
    "sync_driver_for",
]

T = TypeVar("T")

log = logging.getLogger("simplequeue.producer")

_SAVEPOINT = "simplequeue_step"

ASYNC_ACCEPTED = (
    "a psycopg.AsyncConnection, or a SQLAlchemy AsyncSession or AsyncConnection "
    "(postgresql+psycopg:// or postgresql+asyncpg://)"
)
SYNC_ACCEPTED = (
    "a psycopg.Connection, a SQLAlchemy Session or Connection (postgresql+psycopg:// or "
    "postgresql+psycopg2://), or django.db.connection (a PostgreSQL database)"
)

_MISSING_SCHEMA = {"42P01", "3F000"}  # undefined_table, invalid_schema_name


def _explained(exc: Exception) -> Exception:
    """A missing table or schema says what to do about it; any other error stays itself."""
    if sqlstate(exc) in _MISSING_SCHEMA:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return SchemaNotFoundError(
            f"{first_line}: the queue's tables are not in this database. Run "
            "`simplequeue migrate --dsn ...` (or `await simplequeue.setup(dsn)`) against it; "
            "with conn=, the connection must be to the queue's database"
        )
    return exc


def _after_commit_failed(exc: Exception) -> None:
    """The statement after a COPY that committed alone (its jobs' wake-up) failed: the
    jobs are stored, so the insert succeeded. Raising would tell the caller otherwise,
    and new jobs inserted in answer would be stored twice."""
    log.warning(
        "jobs inserted by COPY are stored, but their wake-up failed (%s): idle workers "
        "find them at their next poll (empty_poll_sleep)",
        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
    )


# -- async -----------------------------------------------------------------------------


class AsyncDriver(ABC):
    """Runs plans on one async connection."""

    can_copy = False
    """Whether `Copy` steps can run here; the store plans an INSERT otherwise."""
    array_literals = False
    """Whether a batch's arrays may travel as array literals (text): psycopg's own
    adaptation of lists is the slow part of an INSERT of arrays; other drivers' is not,
    or needs lists (asyncpg)."""

    @abstractmethod
    def commits_each_statement(self) -> bool:
        """No transaction is open and none will be: each statement commits on its own."""

    @abstractmethod
    async def _execute(self, query: str, params: Any) -> Result: ...

    async def _copy(self, step: Copy) -> None:
        raise NotImplementedError

    @asynccontextmanager
    async def _own_transaction(self) -> AsyncIterator[None]:
        """A transaction of the driver's own, where none is open."""
        await self._execute("BEGIN", None)
        try:
            yield
        except BaseException:
            await self._execute("ROLLBACK", None)
            raise
        await self._execute("COMMIT", None)

    async def run(self, plan: Plan[T]) -> T:
        """Execute a plan to its end and return what it returns."""
        try:
            step = next(plan)
            while True:
                try:
                    result = await self._step(step)
                except Exception as exc:
                    step = plan.throw(exc)
                else:
                    step = plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except Exception as exc:
            explained = _explained(exc)
            if explained is exc:
                raise
            raise explained from exc

    async def _step(self, step: Run | Copy) -> Result:
        if isinstance(step, Run) and not step.savepoint:
            return await self._execute(step.query, step.params)
        if isinstance(step, Copy) and step.alone_commits(self.commits_each_statement()):
            await self._copy(step)  # committed: what follows can no longer undo it
            if step.then is not None:
                try:
                    await self._execute(step.then.query, step.then.params)
                except Exception as exc:
                    _after_commit_failed(exc)
            return Result([], 0)
        async with self._unit():
            if isinstance(step, Run):
                return await self._execute(step.query, step.params)
            await self._copy(step)
            if step.then is not None:
                await self._execute(step.then.query, step.then.params)
            return Result([], 0)

    @asynccontextmanager
    async def _unit(self) -> AsyncIterator[None]:
        """Statements that succeed or fail together, and whose failure leaves the caller's
        transaction usable: a transaction of our own where none is open, else a savepoint
        in the caller's (a statement there starts it, if it had not)."""
        if self.commits_each_statement():
            async with self._own_transaction():
                yield
            return
        await self._execute(f"SAVEPOINT {_SAVEPOINT}", None)
        try:
            yield
        except BaseException:
            await self._execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", None)
            raise
        await self._execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", None)


class PsycopgAsync(AsyncDriver):
    """psycopg 3, async: the library's own connections, and a caller's."""

    array_literals = True

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @property
    def can_copy(self) -> bool:  # type: ignore[override]
        return not _pipelined(self.conn)  # COPY is not pipelined

    def commits_each_statement(self) -> bool:
        return _psycopg_commits_each_statement(self.conn)

    def _own_transaction(self) -> Any:
        return self.conn.transaction()

    async def _execute(self, query: str, params: Any) -> Result:
        # Tuple rows and server-side parameters, whatever row factory or cursor class the
        # connection or its pool uses.
        cur = psycopg.AsyncCursor(self.conn, row_factory=tuple_row)
        await cur.execute(query, params)
        if cur.description is None and not _pipelined(self.conn):
            return Result([], cur.rowcount)
        try:  # in a pipeline, fetching is what waits for the statement's result
            rows = await cur.fetchall()
        except psycopg.ProgrammingError:
            if cur.description is not None:
                raise
            rows = []  # a pipelined statement that returns no rows
        return Result(rows, cur.rowcount)

    async def _copy(self, step: Copy) -> None:
        cur = psycopg.AsyncCursor(self.conn)
        for statement, rows in step.parts:
            async with cur.copy(statement) as copy:
                for row in rows:
                    await copy.write_row(row)


class SQLAlchemyAsync(AsyncDriver):
    """A SQLAlchemy AsyncConnection on a driver other than psycopg (asyncpg): statements
    go through SQLAlchemy, which owns the driver's transaction (asyncpg's begins with
    SQLAlchemy's first statement, so running on the bare driver connection would run
    outside it)."""

    def __init__(self, conn: Any, adapted: Any) -> None:
        self.conn = conn  # sqlalchemy.ext.asyncio.AsyncConnection, begun
        self.adapted = adapted  # its DBAPI connection (SQLAlchemy's adapter of asyncpg's)

    def commits_each_statement(self) -> bool:
        # Begun, it is in a transaction, unless the engine runs in AUTOCOMMIT.
        return bool(getattr(self.adapted, "autocommit", False))

    async def _execute(self, query: str, params: Any) -> Result:
        numbered, names = _numbered(query)
        values: tuple[Any, ...]
        if isinstance(params, dict):
            values = tuple(params[name] for name in names)
        else:
            values = tuple(params or ())
        result = await self.conn.exec_driver_sql(numbered, values)
        rows = [tuple(row) for row in result.fetchall()] if result.returns_rows else []
        return Result(rows, result.rowcount)


@functools.lru_cache(maxsize=256)
def _numbered(query: str) -> tuple[str, tuple[str, ...]]:
    """A statement with psycopg's placeholders (`%s`, `%(name)s`) in asyncpg's (`$1`), and
    the parameter names in their order (empty for positional ones)."""
    names: list[str] = []
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        name = match.group(1)
        if name is None:
            count += 1
            return f"${count}"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return re.sub(r"%\((\w+)\)s|%s", number, query), tuple(names)


# -- sync ------------------------------------------------------------------------------


class SyncDriver(ABC):
    """Runs plans on one sync connection (the same steps as `AsyncDriver`, blocking)."""

    can_copy = False
    array_literals = False  # see AsyncDriver

    @abstractmethod
    def commits_each_statement(self) -> bool: ...

    @abstractmethod
    def _execute(self, query: str, params: Any) -> Result: ...

    def _copy(self, step: Copy) -> None:
        raise NotImplementedError

    @contextmanager
    def _own_transaction(self) -> Iterator[None]:
        self._execute("BEGIN", None)
        try:
            yield
        except BaseException:
            self._execute("ROLLBACK", None)
            raise
        self._execute("COMMIT", None)

    def run(self, plan: Plan[T]) -> T:
        """Execute a plan to its end and return what it returns."""
        try:
            step = next(plan)
            while True:
                try:
                    result = self._step(step)
                except Exception as exc:
                    step = plan.throw(exc)
                else:
                    step = plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        except Exception as exc:
            explained = _explained(exc)
            if explained is exc:
                raise
            raise explained from exc

    def _step(self, step: Run | Copy) -> Result:
        if isinstance(step, Run) and not step.savepoint:
            return self._execute(step.query, step.params)
        if isinstance(step, Copy) and step.alone_commits(self.commits_each_statement()):
            self._copy(step)  # committed: what follows can no longer undo it
            if step.then is not None:
                try:
                    self._execute(step.then.query, step.then.params)
                except Exception as exc:
                    _after_commit_failed(exc)
            return Result([], 0)
        with self._unit():
            if isinstance(step, Run):
                return self._execute(step.query, step.params)
            self._copy(step)
            if step.then is not None:
                self._execute(step.then.query, step.then.params)
            return Result([], 0)

    @contextmanager
    def _unit(self) -> Iterator[None]:
        if self.commits_each_statement():
            with self._own_transaction():
                yield
            return
        self._execute(f"SAVEPOINT {_SAVEPOINT}", None)
        try:
            yield
        except BaseException:
            self._execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", None)
            raise
        self._execute(f"RELEASE SAVEPOINT {_SAVEPOINT}", None)


class PsycopgSync(SyncDriver):
    """psycopg 3, sync: SyncQueue's own connections, the heartbeat's, and a caller's
    (directly, or under SQLAlchemy or Django)."""

    array_literals = True

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    @property
    def can_copy(self) -> bool:  # type: ignore[override]
        return not _pipelined(self.conn)

    def commits_each_statement(self) -> bool:
        return _psycopg_commits_each_statement(self.conn)

    def _own_transaction(self) -> Any:
        return self.conn.transaction()

    def _execute(self, query: str, params: Any) -> Result:
        cur = psycopg.Cursor(self.conn, row_factory=tuple_row)
        cur.execute(query, params)
        if cur.description is None and not _pipelined(self.conn):
            return Result([], cur.rowcount)
        try:
            rows = cur.fetchall()
        except psycopg.ProgrammingError:
            if cur.description is not None:
                raise
            rows = []
        return Result(rows, cur.rowcount)

    def _copy(self, step: Copy) -> None:
        cur = psycopg.Cursor(self.conn)
        for statement, rows in step.parts:
            with cur.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)


class Psycopg2Sync(SyncDriver):
    """A psycopg2 connection (under SQLAlchemy or Django): the same placeholders, bound
    on the client; ids travel as text (psycopg2 adapts no uuid unless told to globally)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def commits_each_statement(self) -> bool:
        idle = self.conn.get_transaction_status() == 0  # psycopg2's TRANSACTION_STATUS_IDLE
        return bool(self.conn.autocommit) and idle

    def _execute(self, query: str, params: Any) -> Result:
        with self.conn.cursor() as cur:
            cur.execute(query, _texts(params))
            rows = [tuple(r) for r in cur.fetchall()] if cur.description is not None else []
            return Result(rows, cur.rowcount)


def _texts(value: Any) -> Any:
    """Parameters with uuids as text (the statements cast them back)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [_texts(v) for v in value]
    if isinstance(value, dict):
        return {k: _texts(v) for k, v in value.items()}
    return value


def _pipelined(conn: psycopg.AsyncConnection[Any] | psycopg.Connection[Any]) -> bool:
    return conn.pgconn.pipeline_status != PipelineStatus.OFF


def _psycopg_commits_each_statement(
    conn: psycopg.AsyncConnection[Any] | psycopg.Connection[Any],
) -> bool:
    return conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE


# -- the library's own connections -----------------------------------------------------


async def run(conn: psycopg.AsyncConnection[Any], plan: Plan[T], *, atomic: bool = False) -> T:
    """Run a plan on one of the library's own async connections; with `atomic`, in one
    transaction."""
    driver = PsycopgAsync(conn)
    if not atomic:
        return await driver.run(plan)
    async with conn.transaction():
        return await driver.run(plan)


def commits_alone(conn: psycopg.AsyncConnection[Any] | psycopg.Connection[Any]) -> bool:
    """A statement run on this library connection now is a transaction of its own
    (autocommit, none open). Only there may a write commit fast (the store's plans with
    `fast=True`): on a pool whose connections are not in autocommit, the statements of
    one borrow share a transaction, and a fast one would take a durable one with it."""
    return _psycopg_commits_each_statement(conn)


def run_sync(conn: psycopg.Connection[Any], plan: Plan[T], *, atomic: bool = False) -> T:
    """`run`, on a sync connection."""
    driver = PsycopgSync(conn)
    if not atomic:
        return driver.run(plan)
    with conn.transaction():
        return driver.run(plan)


# -- a caller's connection (conn=) -----------------------------------------------------

ASYNC_DRIVERS = ("psycopg", "asyncpg")
SYNC_DRIVERS = ("psycopg", "psycopg2")


def _from(conn: object, package: str) -> bool:
    return type(conn).__module__.split(".")[0] == package


def _unscoped(conn: Any) -> Any:
    """The session behind a SQLAlchemy scoped_session or async_scoped_session (what
    Flask-SQLAlchemy's `db.session` is): this thread's or task's."""
    if _from(conn, "sqlalchemy"):
        from sqlalchemy.ext.asyncio import async_scoped_session
        from sqlalchemy.orm import scoped_session

        if isinstance(conn, scoped_session | async_scoped_session):
            return conn()
    return conn


def _sqlalchemy_async(conn: object) -> bool:
    if not _from(conn, "sqlalchemy"):
        return False  # SQLAlchemy is not imported for a caller that does not use it
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    return isinstance(conn, AsyncSession | AsyncConnection)


def _sqlalchemy_sync(conn: object) -> bool:
    if not _from(conn, "sqlalchemy"):
        return False
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    return isinstance(conn, Session | Connection)


def _django(conn: object) -> bool:
    """django.db.connection (a proxy) or one of django.db.connections."""
    return _from(conn, "django") and hasattr(conn, "ensure_connection") and hasattr(conn, "vendor")


def _check_dialect(conn: Any, drivers: tuple[str, ...], accepted: str) -> None:
    """A SQLAlchemy session or connection whose engine is not PostgreSQL on one of
    `drivers` is refused from its engine's dialect, before a connection is taken or a
    transaction begun. (A session without one default engine is checked on its
    connection, later.)"""
    from sqlalchemy.exc import UnboundExecutionError

    target = getattr(conn, "sync_session", None) or getattr(conn, "sync_engine", None) or conn
    try:
        bind = target.get_bind() if hasattr(target, "get_bind") else target
    except UnboundExecutionError:
        return
    dialect = getattr(bind, "dialect", None)
    if dialect is None:
        return
    if dialect.name != "postgresql" or dialect.driver not in drivers:
        raise InvalidArgumentError(
            f"the SQLAlchemy engine is {dialect.name}+{dialect.driver}://; conn must be {accepted}"
        )


def check_async_conn(conn: object) -> None:
    """Refuse a `conn=` of the wrong kind before any statement runs (a sync connection
    would run the INSERT and only then fail on `await`)."""
    conn = _unscoped(conn)
    if conn is None or isinstance(conn, psycopg.AsyncConnection):
        return
    if _sqlalchemy_async(conn):
        _check_dialect(conn, ASYNC_DRIVERS, ASYNC_ACCEPTED)
        return
    hint = (
        "; with a sync connection use simplequeue.SyncQueue"
        if (isinstance(conn, psycopg.Connection) or _sqlalchemy_sync(conn) or _django(conn))
        else ""
    )
    raise InvalidArgumentError(
        f"conn must be {ASYNC_ACCEPTED} (the one whose transaction the insert joins), got "
        f"{type(conn).__module__}.{type(conn).__name__}{hint}; pass none to use the "
        "queue's pool"
    )


def check_sync_conn(conn: object) -> None:
    """`check_async_conn` for SyncQueue."""
    conn = _unscoped(conn)
    if conn is None or isinstance(conn, psycopg.Connection):
        return
    if _sqlalchemy_sync(conn):
        _check_dialect(conn, SYNC_DRIVERS, SYNC_ACCEPTED)
        return
    if _django(conn):
        if getattr(conn, "vendor", None) != "postgresql":
            raise InvalidArgumentError(
                f"conn is a Django connection to a {conn.vendor} database "  # type: ignore[attr-defined]
                "(DATABASES ENGINE); simplequeue needs PostgreSQL"
            )
        return
    hint = (
        "; with an async connection use simplequeue.SimpleQueue"
        if (isinstance(conn, psycopg.AsyncConnection) or _sqlalchemy_async(conn))
        else ""
    )
    raise InvalidArgumentError(
        f"conn must be {SYNC_ACCEPTED} (the one whose transaction the insert joins), got "
        f"{type(conn).__module__}.{type(conn).__name__}{hint}; pass none to use the "
        "queue's pool"
    )


def _wrong_driver(driver: object, accepted: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"the connection runs on {type(driver).__module__}.{type(driver).__name__}; "
        f"conn must be {accepted}"
    )


async def async_driver_for(conn: Any) -> AsyncDriver:
    """The driver for a caller's async `conn=` (checked by `check_async_conn`), in the
    caller's transaction: SQLAlchemy's begins if it had not (what a statement run through
    SQLAlchemy would do: otherwise its commit() would not commit the insert)."""
    conn = _unscoped(conn)
    if isinstance(conn, psycopg.AsyncConnection):
        return PsycopgAsync(conn)
    from sqlalchemy.ext.asyncio import AsyncSession

    connection = await conn.connection() if isinstance(conn, AsyncSession) else conn
    raw = await connection.get_raw_connection()
    if isinstance(raw.driver_connection, psycopg.AsyncConnection):
        driver: AsyncDriver = PsycopgAsync(raw.driver_connection)
    elif _from(raw.driver_connection, "asyncpg"):
        driver = SQLAlchemyAsync(connection, raw.dbapi_connection)
    else:
        raise _wrong_driver(raw.driver_connection, ASYNC_ACCEPTED)
    if not connection.in_transaction():
        await connection.begin()
    return driver


def sync_driver_for(conn: Any) -> SyncDriver:
    """The driver for a caller's sync `conn=` (checked by `check_sync_conn`), in the
    caller's transaction (SQLAlchemy's begins if it had not)."""
    conn = _unscoped(conn)
    if isinstance(conn, psycopg.Connection):
        return PsycopgSync(conn)
    if _django(conn):
        conn.ensure_connection()
        return _sync_driver_on(conn.connection)
    from sqlalchemy.orm import Session

    connection = conn.connection() if isinstance(conn, Session) else conn
    driver = _sync_driver_on(connection.connection.driver_connection)
    if not connection.in_transaction():
        connection.begin()
    return driver


def _sync_driver_on(raw: Any) -> SyncDriver:
    if isinstance(raw, psycopg.Connection):
        return PsycopgSync(raw)
    if _from(raw, "psycopg2"):
        return Psycopg2Sync(raw)
    raise _wrong_driver(raw, SYNC_ACCEPTED)
