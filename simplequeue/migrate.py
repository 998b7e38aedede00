"""Applies the migrations in `sql/` in order, once each, under an advisory lock."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from simplequeue.config import validate_schema_name
from simplequeue.errors import InvalidArgumentError, MigrationError

__all__ = ["Migration", "migrations", "setup"]

log = logging.getLogger("simplequeue.migrate")

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str


def migrations() -> list[Migration]:
    """The shipped migrations, in order; they live in the wheel as `simplequeue.sql`."""
    found = []
    for entry in resources.files("simplequeue.sql").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


async def setup(
    pool_or_dsn: AsyncConnectionPool[Any] | str, *, schema: str = "simplequeue"
) -> list[str]:
    """Bring `schema` up to date; returns the names of the migrations it applied.

    Idempotent, and safe when several processes call it at once: the whole run holds a
    transaction-scoped advisory lock, so a second caller waits and then finds nothing to do.
    """
    validate_schema_name(schema)
    if isinstance(pool_or_dsn, str):
        async with await psycopg.AsyncConnection.connect(pool_or_dsn) as conn:
            return await _apply(conn, schema)
    if not isinstance(pool_or_dsn, AsyncConnectionPool):
        raise InvalidArgumentError(
            "setup needs a connection string or a psycopg_pool.AsyncConnectionPool, got "
            f"{type(pool_or_dsn).__name__}"
        )
    async with pool_or_dsn.connection() as conn:
        return await _apply(conn, schema)


async def _run(
    conn: psycopg.AsyncConnection[Any], query: Any, params: Any = None
) -> psycopg.AsyncCursor[Any]:
    """One statement, whatever row factory, cursor class or prepare threshold the caller's
    connection has: tuple rows, server-side parameters, never a prepared statement (a
    migration holds several statements, which cannot be prepared)."""
    cur = psycopg.AsyncCursor(conn, row_factory=tuple_row)
    await cur.execute(query, params, prepare=False)
    return cur


async def _apply(conn: psycopg.AsyncConnection[Any], schema: str) -> list[str]:
    ident = sql.Identifier(schema)
    applied: list[str] = []
    try:
        if await _up_to_date(conn, schema):
            # No DDL at all, not even CREATE ... IF NOT EXISTS: a worker or producer role
            # without CREATE privileges can call setup() on a migrated schema.
            return applied
        cur = await _run(conn, "SELECT current_setting('server_encoding')")
        encoding = (await cur.fetchone() or ("",))[0]
        if encoding != "UTF8":
            raise MigrationError(
                f"simplequeue needs a UTF8 database; this one is {encoding}, where text that "
                "this encoding lacks (queue names, payloads) could not be stored. Create the "
                "database WITH ENCODING 'UTF8'"
            )
        async with conn.transaction():
            await _run(
                conn,
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                [f"simplequeue.migrate.{schema}"],
            )
            await _run(conn, sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            await _run(
                conn,
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(ident),
            )
            done = await _applied(conn, schema)
            for migration in migrations():
                if migration.version in done:
                    continue
                await _run(conn, sql.SQL("SET LOCAL search_path TO {}").format(ident))
                await _run(conn, migration.text.encode())
                await _run(
                    conn,
                    sql.SQL(
                        "INSERT INTO {}.schema_migrations (version, name) VALUES (%s, %s)"
                    ).format(ident),
                    [migration.version, migration.name],
                )
                applied.append(f"{migration.version:04d}_{migration.name}")
                log.info(
                    "applied migration %04d_%s to schema %s",
                    migration.version,
                    migration.name,
                    schema,
                )
    except psycopg.Error as exc:
        raise MigrationError(f"could not migrate schema {schema!r}: {exc}") from exc
    return applied


async def _up_to_date(conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
    async with conn.transaction():
        cur = await _run(
            conn,
            "SELECT to_regclass(format('%%I.schema_migrations', %s::text)) IS NOT NULL",
            [schema],
        )
        row = await cur.fetchone()
        if not row or not row[0]:
            return False
        done = await _applied(conn, schema)
    return all(m.version in done for m in migrations())


async def _applied(conn: psycopg.AsyncConnection[Any], schema: str) -> set[int]:
    cur = await _run(
        conn, sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(schema))
    )
    return {row[0] for row in await cur.fetchall()}
