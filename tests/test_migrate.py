"""Migrations: once, in order, idempotent, safe under concurrency, any valid schema."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import sql

import simplequeue as sq
from simplequeue.columns import MOVED_COLUMNS
from simplequeue.migrate import migrations
from tests.conftest import count, query

ALL = [f"{m.version:04d}_{m.name}" for m in migrations()]


async def test_setup_is_idempotent(dsn: str) -> None:
    assert await sq.setup(dsn, schema="fresh") == ALL
    assert await sq.setup(dsn, schema="fresh") == []
    assert query(dsn, "SELECT version, name FROM fresh.schema_migrations ORDER BY 1") == [
        (m.version, m.name) for m in migrations()
    ]


async def test_concurrent_setup_applies_once(dsn: str) -> None:
    results = await asyncio.gather(*(sq.setup(dsn, schema="racing") for _ in range(8)))
    assert sorted(map(len, results)) == [0] * 7 + [len(ALL)]
    assert query(dsn, "SELECT count(*) FROM racing.schema_migrations") == [(len(ALL),)]


async def test_setup_accepts_a_pool(dsn: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(dsn, min_size=1) as pool:
        assert await sq.setup(pool, schema="pooled") == ALL


async def test_setup_refuses_a_bad_schema_name(dsn: str) -> None:
    with pytest.raises(sq.ConfigError, match="invalid schema name"):
        await sq.setup(dsn, schema='x"; DROP SCHEMA public; --')
    assert query(dsn, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'x%'") == [(0,)]


async def test_setup_reports_an_unreachable_database(dsn: str) -> None:
    with pytest.raises(psycopg.OperationalError):
        await sq.setup(dsn + " port=1", schema="simplequeue")


async def test_a_queue_on_its_own_schema(dsn: str) -> None:
    await sq.setup(dsn, schema="tenant_a")

    class Ok(sq.Handler):
        QUEUE = "ok"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    async with sq.SimpleQueue.from_url(dsn, schema="tenant_a") as queue:
        queue.register_handler(Ok())
        await queue.start()
        job_id = await queue.insert_job(sq.Job("ok", {}))
        assert job_id is not None
        job = await queue.wait_for_job(job_id, timeout=10)
    assert job.status is sq.JobStatus.COMPLETED
    assert query(dsn, "SELECT count(*) FROM tenant_a.jobs") == [(1,)]
    assert count(dsn) == 0  # the default schema saw nothing


async def test_setup_on_a_pool_with_any_row_factory(dsn: str) -> None:
    from psycopg.rows import dict_row, namedtuple_row
    from psycopg_pool import AsyncConnectionPool

    for schema, factory in (("dicts", dict_row), ("tuples", namedtuple_row)):
        async with AsyncConnectionPool(
            dsn, min_size=1, kwargs={"row_factory": factory}, open=False
        ) as pool:
            assert await sq.setup(pool, schema=schema) == ALL
            assert await sq.setup(pool, schema=schema) == []
            async with sq.SimpleQueue(pool, schema=schema) as queue:
                job_id = await queue.insert_job(sq.Job("q", {"a": 1}))
                stored = await queue.get_job(job_id)  # type: ignore[arg-type]
                assert stored is not None and stored.data == {"a": 1}
                assert (await queue.counts())["pending"] == 1


async def test_setup_and_every_call_on_pools_with_other_cursors_and_no_prepare(dsn: str) -> None:
    from psycopg import AsyncRawCursor
    from psycopg_pool import AsyncConnectionPool

    for schema, kwargs in (
        ("noprep", {"prepare_threshold": 0}),
        ("raw", {"cursor_factory": AsyncRawCursor}),
    ):
        async with AsyncConnectionPool(dsn, min_size=1, kwargs=kwargs, open=False) as pool:
            assert await sq.setup(pool, schema=schema) == ALL
            async with sq.SimpleQueue(pool, schema=schema) as queue:
                ids = await queue.insert_jobs([sq.Job("q", n) for n in range(600)])
                job_id = await queue.insert_job(sq.Job("q", "one", unique_key="k"))
                assert job_id is not None and None not in ids
                assert await queue.cancel_job(job_id)
                assert len(await queue.list_dlq()) == 1
                assert (await queue.counts())["pending"] == 600


async def test_setup_refuses_what_is_not_a_pool_or_a_dsn_and_non_utf8_databases(
    dsn: str,
) -> None:
    for wrong in (None, b"dsn", 42):
        with pytest.raises(sq.InvalidArgumentError, match="connection string"):
            await sq.setup(wrong)  # type: ignore[arg-type]
    query(dsn, "CREATE DATABASE sq_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
          "TEMPLATE template0")  # fmt: skip
    try:
        latin1 = psycopg.conninfo.make_conninfo(dsn, dbname="sq_latin1")
        with pytest.raises(sq.MigrationError, match="needs a UTF8 database"):
            await sq.setup(latin1)
    finally:
        query(dsn, "DROP DATABASE sq_latin1")


def migrate_before(dsn: str, schema: str, version: int) -> None:
    """`schema` as a release before migration `version` left it."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema))
        )
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        for m in migrations():
            if m.version < version:
                conn.execute(m.text.encode())
                conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", [m.version, m.name])


async def test_the_archive_upgrades_to_partitions_with_its_rows(dsn: str) -> None:
    """A schema migrated before 0014 keeps what it archived: the table becomes the archive's
    DEFAULT partition, read by id as before and purged past the retention."""
    migrate_before(dsn, "older", 14)
    async with sq.SimpleQueue.from_url(dsn, schema="older") as old:
        ids = await old.insert_jobs([sq.Job("q", i) for i in range(3)])
        query(dsn, "UPDATE older.jobs SET status = 'completed', completed_at = now()")
        query(
            dsn,
            f"WITH moved AS (DELETE FROM older.jobs RETURNING {MOVED_COLUMNS}) "
            f"INSERT INTO older.archive ({MOVED_COLUMNS}, moved_at) "
            f"SELECT {MOVED_COLUMNS}, now() - interval '2 hours' FROM moved",
        )
    assert await sq.setup(dsn, schema="older") == [m for m in ALL if m >= "0014"]
    # kept whole as archive_legacy, up to just after its newest row, read by id as before
    assert query(dsn, "SELECT DISTINCT tableoid::regclass::text FROM older.archive") == [
        ("older.archive_legacy",)
    ]
    async with sq.SimpleQueue.from_url(dsn, schema="older", archive_retention=9000.0) as kept:
        found = await kept.get_job(ids[0])  # type: ignore[arg-type]
        assert found is not None and found.status is sq.JobStatus.COMPLETED
        report = await kept.run_janitor()
        assert report.partitions_dropped == 0 and report.failed_steps == ()
    assert query(dsn, "SELECT count(*) FROM older.archive") == [(3,)]
    # dropped whole once its newest row is past the retention
    async with sq.SimpleQueue.from_url(dsn, schema="older", archive_retention=5400.0) as new:
        report = await new.run_janitor()
    assert (report.partitions_dropped, report.purged, report.failed_steps) == (1, 3, ())
    assert query(dsn, "SELECT count(*) FROM older.archive") == [(0,)]
    assert query(dsn, "SELECT to_regclass('older.archive_legacy')") == [(None,)]
