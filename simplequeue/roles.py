"""Least-privilege database roles: a producer that inserts and reads live jobs, and a worker
that runs them. `grant_roles` (or `simplequeue roles`) creates them if missing and grants
exactly the privileges below, then checks that each role holds no more and no less.

Run it as the owner of the schema (the role that ran `simplequeue migrate`) or a
superuser, after every upgrade that brings new migrations. docs/security.md explains what
each role can and cannot do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from simplequeue.columns import INSERT_COLUMNS
from simplequeue.config import validate_plain_name, validate_schema_name
from simplequeue.errors import ConfigError, SimpleQueueError

__all__ = [
    "PRODUCER_PRIVILEGES",
    "WORKER_PRIVILEGES",
    "TablePrivileges",
    "grant_roles",
    "validate_role_name",
]

TABLES = (
    "jobs",
    "archive",
    "dlq",
    "queues",
    "workers",
    "event_listeners",
    "parked_keys",
    "key_turns",
    "rate_starts",
    "leader",
    "schedules",
    "unique_keys",
    "schema_migrations",
)
"""Every table simplequeue creates; a role holds on each exactly what the maps below say."""

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "REFERENCES")

WORKER_UPDATE_COLUMNS = (
    "status",
    "attempt",
    "lease",
    "reprocess_count",
    "run_at",
    "scheduled",
    "heartbeat_at",
    "updated_at",
    "completed_at",
    "last_error",
    "worker_id",
    "errors",
    "result",
    "progress",
    "progress_message",
    "progress_at",
)
"""What claims, results, progress, heartbeats, the reaper, cancel and reschedule change:
never a job's id, queue, data, priority, attempts allowed, keys or creation time."""


SCHEDULE_DEFINITION = ("name", "queue", "cron", "every", "timezone", "missed", "next_slot")
"""What a worker writes of the schedules its code registers."""
SCHEDULE_PROGRESS = ("seen_at", "last_slot", "enqueued", "last_job_id", "last_enqueued_at")
"""What the enqueuer moves on; not the pause, which is for operators."""


@dataclass(frozen=True)
class TablePrivileges:
    """Table-wide privileges, and privileges on some columns only."""

    table: frozenset[str] = frozenset()
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


UNIQUE_KEY_CLAIM = TablePrivileges(
    frozenset({"SELECT", "INSERT", "DELETE"}),
    {"UPDATE": ("job_id", "queue", "claimed_at", "expires_at")},
)
"""What an insert with `unique_for` needs of unique_keys: it inserts the key, or takes over
an expired one (ON CONFLICT DO UPDATE reads the row and rewrites all but the key), and
undoes a claim its job did not follow into the table (DELETE)."""

PRODUCER_PRIVILEGES: dict[str, TablePrivileges] = {
    "jobs": TablePrivileges(frozenset({"SELECT"}), {"INSERT": INSERT_COLUMNS}),
    "queues": TablePrivileges(frozenset({"SELECT"})),
    "event_listeners": TablePrivileges(frozenset({"SELECT"})),
    "unique_keys": UNIQUE_KEY_CLAIM,
}
"""insert_job(s) (with NOTIFY, the check that their queues are declared, whether the job
events have listeners, and the claim of keys held over time) and get_job / wait_for_job
on live jobs; nothing else."""

WORKER_PRIVILEGES: dict[str, TablePrivileges] = {
    "jobs": TablePrivileges(
        frozenset({"SELECT", "DELETE"}),
        {"INSERT": INSERT_COLUMNS, "UPDATE": WORKER_UPDATE_COLUMNS},
    ),
    "archive": TablePrivileges(frozenset({"SELECT", "INSERT"})),
    "dlq": TablePrivileges(frozenset({"SELECT", "INSERT"})),
    "queues": TablePrivileges(
        frozenset({"SELECT"}),
        {
            "INSERT": ("name", "parked_until", "keys_parked_until"),
            "UPDATE": ("last_seen", "parked_until", "keys_parked_until"),
        },
    ),
    "workers": TablePrivileges(frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})),
    "event_listeners": TablePrivileges(frozenset({"SELECT"})),
    "parked_keys": TablePrivileges(frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})),
    "key_turns": TablePrivileges(frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})),
    # UPDATE of a column only for the lock the reaper takes on the windows it forgets
    "rate_starts": TablePrivileges(frozenset({"SELECT", "INSERT", "DELETE"}), {"UPDATE": ("at",)}),
    "leader": TablePrivileges(frozenset({"SELECT", "INSERT", "UPDATE"})),
    "schedules": TablePrivileges(
        frozenset({"SELECT"}),
        {
            "INSERT": SCHEDULE_DEFINITION,
            "UPDATE": (*SCHEDULE_DEFINITION, *SCHEDULE_PROGRESS),
        },
    ),
    "unique_keys": UNIQUE_KEY_CLAIM,
}
"""Claim, results, heartbeats, reaper; janitor (jobs → archive and DLQ, archive purge);
handlers inserting follow-up jobs; get_job, wait_for_job, cancel, reschedule, list_dlq,
counts; declaring its queues, its own row in workers (and forgetting dead workers');
claiming from controlled queues (counting and recording rate-limited starts) and parking
keys or queues for its handlers (JobResult.park); the maintenance lease (taking, renewing,
giving up the leader row); registering its schedules and enqueuing their slots; the
reaper's deletion of expired unique keys (and so release_unique_key). Not: deleting from
the DLQ, so not requeue_dlq_job for rows already moved there; not pausing, resuming or
configuring queues, nor pausing or deleting schedules, which is for the schema's owner
(operators)."""


ARCHIVE_FUNCTIONS = (
    "archive_prepare(double precision)",
    "archive_retire(double precision)",
    "archive_purge(double precision, integer)",
)
"""The janitor's functions that make, drop and purge the archive's partitions as the
schema's owner (0014): only the worker role may call them."""


def validate_role_name(name: object) -> str:
    return validate_plain_name("role", name)


async def grant_roles(
    dsn: str,
    *,
    schema: str = "simplequeue",
    producer: str = "simplequeue_producer",
    worker: str = "simplequeue_worker",
    login: bool = False,
    producer_password: str | None = None,
    worker_password: str | None = None,
) -> None:
    """Create the producer and worker roles if missing and grant them exactly their
    privileges on `schema` (anything else they held there is revoked). Idempotent.

    New roles are NOLOGIN (grant them to login roles), unless `login` is set or a password
    is given. Raises ConfigError for bad names, a missing schema, or a role that would
    hold more than its privileges (a superuser, a member of the owner, a PUBLIC grant or
    a role like pg_read_all_data); nothing is changed then.
    """
    validate_schema_name(schema)
    validate_role_name(producer)
    validate_role_name(worker)
    if producer == worker:
        raise ConfigError(f"the producer and worker roles must differ, both are {producer!r}")
    for name, password in (("producer", producer_password), ("worker", worker_password)):
        if password is not None and (not isinstance(password, str) or not password):
            raise ConfigError(f"{name}_password must be a non-empty string")
        if password is not None and "\x00" in password:
            raise ConfigError(f"{name}_password contains a NUL character")
    roles = (
        (producer, PRODUCER_PRIVILEGES, (), producer_password),
        (worker, WORKER_PRIVILEGES, ARCHIVE_FUNCTIONS, worker_password),
    )
    try:
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
            conn.transaction(),
        ):
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"simplequeue.roles.{schema}"]
            )
            await _check_tables(conn, schema)
            for role, privileges, functions, password in roles:
                await _ensure_role(conn, role, login or password is not None, password)
                await _refuse_powerful(conn, schema, role)
                await _grant(conn, schema, role, privileges, functions)
            for role, privileges, functions, _ in roles:
                await _verify(conn, schema, role, privileges, functions)
    except psycopg.Error as exc:
        raise SimpleQueueError(
            f"could not grant the simplequeue roles on schema {schema!r}: {exc}. Run this as "
            "the owner of the schema (who ran `simplequeue migrate`) or a superuser, with "
            "CREATEROLE if the roles do not exist yet"
        ) from exc


async def _rows(conn: psycopg.AsyncConnection[Any], query: str, params: Any) -> list[Any]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


async def _check_tables(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    rows = await _rows(
        conn,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p')",
        [schema],
    )
    missing = sorted(set(TABLES) - {row[0] for row in rows})
    if missing:
        raise ConfigError(
            f"schema {schema!r} lacks the simplequeue tables {', '.join(missing)}: run "
            "`simplequeue migrate` (or simplequeue.setup) before granting roles"
        )


async def _ensure_role(
    conn: psycopg.AsyncConnection[Any], role: str, login: bool, password: str | None
) -> None:
    ident = sql.Identifier(role)
    found = await _rows(conn, "SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
    if not found:
        try:
            async with conn.transaction():  # a savepoint: another session may create it too
                await conn.execute(
                    sql.SQL("CREATE ROLE {} {}").format(
                        ident, sql.SQL("LOGIN" if login else "NOLOGIN")
                    )
                )
        except psycopg.errors.DuplicateObject:
            pass
    if login:
        await conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(ident))
    if password is not None:
        # Hashed here (SCRAM-SHA-256), so the password itself never reaches the server's
        # statement logs or pg_stat_statements.
        verifier = conn.pgconn.encrypt_password(
            password.encode("utf-8"), role.encode("utf-8"), b"scram-sha-256"
        )
        await conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(verifier.decode()))
        )


async def _refuse_powerful(conn: psycopg.AsyncConnection[Any], schema: str, role: str) -> None:
    """A superuser, or a member of an owner, could alter the schema whatever is granted."""
    ((superuser,),) = await _rows(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role])
    if superuser:
        raise ConfigError(f"role {role!r} is a superuser: it cannot be given least privilege")
    owners = await _rows(
        conn,
        "SELECT 'schema ' || n.nspname FROM pg_namespace n "
        "WHERE n.nspname = %(schema)s AND pg_has_role(%(role)s, n.nspowner, 'MEMBER') "
        "UNION ALL SELECT 'table ' || n.nspname || '.' || c.relname FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %(schema)s AND pg_has_role(%(role)s, c.relowner, 'MEMBER')",
        {"schema": schema, "role": role},
    )
    if owners:
        raise ConfigError(
            f"role {role!r} owns (or is a member of the owner of) {owners[0][0]}, so it could "
            "alter or drop it: use a role that owns nothing in the schema"
        )


async def _grant(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    role: str,
    privileges: Mapping[str, TablePrivileges],
    functions: tuple[str, ...],
) -> None:
    s, r = sql.Identifier(schema), sql.Identifier(role)
    ((database,),) = await _rows(conn, "SELECT current_database()", None)
    # Start from nothing (column grants go with the table's), then grant the exact set.
    await conn.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(s, r))
    await conn.execute(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(s, r))
    await conn.execute(sql.SQL("REVOKE ALL ON ALL ROUTINES IN SCHEMA {} FROM {}").format(s, r))
    await conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(s, r))
    await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r))
    await conn.execute(
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), r)
    )
    for function in functions:
        await conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION {}.{} TO {}").format(s, sql.SQL(function), r)
        )
    for table, grant in privileges.items():
        target = sql.Identifier(schema, table)
        if grant.table:
            await conn.execute(
                sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in sorted(grant.table)), target, r
                )
            )
        for privilege, columns in grant.columns.items():
            await conn.execute(
                sql.SQL("GRANT {} ({}) ON TABLE {} TO {}").format(
                    sql.SQL(privilege),
                    sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                    target,
                    r,
                )
            )


async def _verify(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    role: str,
    privileges: Mapping[str, TablePrivileges],
    functions: tuple[str, ...],
) -> None:
    """What the role can do, inherited and PUBLIC grants included, must be what it was given."""
    problems: list[str] = []
    ((connect, usage, create),) = await _rows(
        conn, _HELD_ON_SCHEMA, {"role": role, "schema": schema}
    )
    if not connect:
        problems.append("it cannot CONNECT to the database")
    if not usage:
        problems.append(f"it lacks USAGE on schema {schema}")
    if create:
        problems.append(f"it can CREATE in schema {schema}")
    held = await _rows(
        conn,
        _HELD_ON_TABLES,
        {
            "role": role,
            "schema": schema,
            "table_privileges": list(TABLE_PRIVILEGES),
            "column_privileges": list(COLUMN_PRIVILEGES),
        },
    )
    for table, column, privilege, has in held:
        granted = privileges.get(table, TablePrivileges())
        if column is None:
            wanted = privilege in granted.table
            what = f"{privilege} on {schema}.{table}"
        elif privilege in granted.table:
            continue
        else:
            wanted = column in granted.columns.get(privilege, ())
            what = f"{privilege} column {schema}.{table}.{column}"
        if has != wanted:
            problems.append(f"it {'can' if has else 'cannot'} {what}")
    for function in ARCHIVE_FUNCTIONS:
        ((has,),) = await _rows(
            conn,
            "SELECT has_function_privilege(%s, %s, 'EXECUTE')",
            [role, f"{sql.Identifier(schema).as_string(conn)}.{function}"],
        )
        if has != (function in functions):
            problems.append(f"it {'can' if has else 'cannot'} EXECUTE {schema}.{function}")
    if problems:
        raise ConfigError(
            f"role {role!r} would not hold exactly its simplequeue privileges: "
            + "; ".join(problems)
            + ". Revoke what it gets through PUBLIC or other roles (e.g. pg_read_all_data, "
            "pg_write_all_data), and run this as the owner of the schema"
        )


_HELD_ON_SCHEMA = """
SELECT has_database_privilege(%(role)s, current_database(), 'CONNECT'),
       has_schema_privilege(%(role)s, %(schema)s, 'USAGE'),
       has_schema_privilege(%(role)s, %(schema)s, 'CREATE')
"""

_HELD_ON_TABLES = """
SELECT c.relname, NULL::name, p.privilege, has_table_privilege(%(role)s, c.oid, p.privilege)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN unnest(%(table_privileges)s::text[]) AS p(privilege)
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p')
UNION ALL
SELECT c.relname, a.attname, p.privilege,
       has_column_privilege(%(role)s, c.oid, a.attnum, p.privilege)
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN unnest(%(column_privileges)s::text[]) AS p(privilege)
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND a.attnum > 0
  AND NOT a.attisdropped
"""
