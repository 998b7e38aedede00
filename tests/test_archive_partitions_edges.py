"""The partitioned archive at its edges: upgrades with roles granted, odd session clocks,
boundaries, rows and partitions written by hand, long readers, concurrent readers, and
functions planted in the queue's schema."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import simplequeue as sq
from simplequeue import roles
from simplequeue.roles import grant_roles
from tests.conftest import FAST, count, query
from tests.test_archive_partitions import (
    HOUR,
    complete,
    old_partition,
    partitions,
    where_archived,
)
from tests.test_migrate import migrate_before
from tests.test_security import drop_roles, unique_names


def grant_as_before_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """`grant_roles` as the release before 0014 granted: DELETE on the archive, no archive
    functions."""
    monkeypatch.setattr(roles, "ARCHIVE_FUNCTIONS", ())
    monkeypatch.setitem(
        roles.WORKER_PRIVILEGES,
        "archive",
        roles.TablePrivileges(frozenset({"SELECT", "INSERT", "DELETE"})),
    )


async def test_the_worker_role_granted_before_the_upgrade_still_archives(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Roles granted on a pre-0014 schema by that release: after `migrate` the worker still
    archives, reads archived jobs and retires the archive, without granting roles again."""
    migrate_before(dsn, "older", 14)
    producer, worker = unique_names("up")
    try:
        with monkeypatch.context() as before:
            grant_as_before_partitions(before)
            await grant_roles(dsn, schema="older", producer=producer, worker=worker, login=True)
        assert query(
            dsn, "SELECT has_table_privilege(%s, 'older.archive', 'DELETE')", [worker]
        ) == [(True,)]
        await sq.setup(dsn, schema="older")
        worker_dsn = make_conninfo(dsn, user=worker)
        async with sq.SimpleQueue.from_url(worker_dsn, schema="older", **FAST) as q:
            ids = await q.insert_jobs([sq.Job("q", i) for i in range(3)])
            query(dsn, "UPDATE older.jobs SET status = 'completed', completed_at = now()")
            report = await q.run_janitor()
            assert report.failed_steps == ()
            assert report.archived == 3
            found = await q.get_job(ids[0])  # type: ignore[arg-type]
            assert found is not None and found.status is sq.JobStatus.COMPLETED
        # granting again gives this release's privileges (no DELETE on the archive)
        await grant_roles(dsn, schema="older", producer=producer, worker=worker)
    finally:
        drop_roles(dsn, producer, worker)


@pytest.mark.parametrize(
    "options",
    [
        "-c TimeZone=Pacific/Chatham -c DateStyle=SQL,DMY",
        "-c TimeZone=America/St_Johns -c DateStyle=German -c IntervalStyle=sql_standard",
        "-c TimeZone=UTC+13:45 -c DateStyle=Postgres,YMD -c extra_float_digits=-15",
    ],
)
async def test_odd_session_clocks_change_nothing(dsn: str, options: str) -> None:
    odd = make_conninfo(dsn, options=options)
    async with sq.SimpleQueue.from_url(odd, archive_retention=HOUR, **FAST) as q:
        await complete(q, dsn, 3)
        report = await q.run_janitor()
        assert report.failed_steps == () and report.archived == 3
        made = partitions(dsn)
        assert where_archived(dsn) == {made[0][0]: 3}
        covered = query(
            dsn,
            "SELECT min(lower_bound) <= now() AND max(upper_bound) >= now() + interval '1 min' "
            "AND max(upper_bound) <= now() + interval '16 min' "
            "FROM simplequeue.archive_partitions()",
        )
        assert covered == [(True,)]
        again = await q.run_janitor()
        assert again.partitions_created == 0 and again.failed_steps == ()


@pytest.mark.parametrize("schema", ["user", "order", "all", "archive", "x" * 40])
async def test_schema_names_that_are_keywords_or_long(dsn: str, schema: str) -> None:
    await sq.setup(dsn, schema=schema)
    async with sq.SimpleQueue.from_url(dsn, schema=schema, archive_retention=HOUR) as q:
        await q.insert_jobs([sq.Job("q", 1)])
        query(
            dsn,
            sql.SQL("UPDATE {}.jobs SET status = 'completed', completed_at = now()")
            .format(sql.Identifier(schema))
            .as_string(),
        )
        report = await q.run_janitor()
        assert report.failed_steps == () and report.archived == 1
        assert report.partitions_created >= 1


async def test_a_row_on_a_partition_boundary_outlives_the_partition_before(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """A row whose moved_at is a partition's upper bound belongs to the next partition and
    is not retired with the one before."""
    ((boundary,),) = query(dsn, "SELECT date_trunc('second', now()) - interval '2 hours'")
    b = sql.Literal(boundary).as_string()  # DDL takes no parameters
    query(
        dsn,
        "CREATE TABLE simplequeue.archive_a PARTITION OF simplequeue.archive "
        f"FOR VALUES FROM ({b}::timestamptz - interval '3 hours') TO ({b})",
    )
    query(
        dsn,
        "CREATE TABLE simplequeue.archive_b PARTITION OF simplequeue.archive "
        f"FOR VALUES FROM ({b}) TO ({b}::timestamptz + interval '3 hours')",
    )
    query(
        dsn,
        "INSERT INTO simplequeue.archive (id, queue, data, status, moved_at) VALUES "
        "(gen_random_uuid(), 'q', '0', 'completed', %(b)s), "
        "(gen_random_uuid(), 'q', '1', 'completed', %(b)s::timestamptz - interval '1 microsecond')",
        {"b": boundary},
    )
    janitor = sq.SimpleQueue(queue.pool, archive_retention=2 * HOUR - 1)
    assert where_archived(dsn) == {"simplequeue.archive_a": 1, "simplequeue.archive_b": 1}
    report = await janitor.run_janitor()
    assert (report.partitions_dropped, report.purged) == (1, 1)
    assert query(dsn, "SELECT data FROM simplequeue.archive") == [(0,)]


async def test_a_default_row_ahead_of_now_does_not_stop_partitions(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """A row written by hand in the DEFAULT partition with a time in the next hours (a
    clock ahead): the sweep still makes partitions, and keeps every row."""
    await complete(queue, dsn, 1)
    query(
        dsn,
        "INSERT INTO simplequeue.archive (id, queue, data, status, moved_at) "
        "VALUES (gen_random_uuid(), 'q', '1', 'completed', now() + interval '2 hours')",
    )
    report = await queue.run_janitor()
    assert report.failed_steps == ()
    assert report.partitions_created >= 1 and report.archived == 1
    assert count(dsn, table="archive") == 2


async def test_a_new_retention_sets_the_width_from_the_next_partition(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """A partition already made keeps its width; the next one, made when it is about to
    end, has the width of the janitor's retention now (documented)."""
    query(
        dsn,
        "CREATE TABLE simplequeue.archive_ending PARTITION OF simplequeue.archive "
        "FOR VALUES FROM (now() - interval '1 day') TO (now() + interval '30 seconds')",
    )
    hourly = sq.SimpleQueue(queue.pool, archive_retention=HOUR)
    assert (await hourly.run_janitor()).partitions_created >= 1
    widths = query(
        dsn,
        "SELECT extract(epoch FROM upper_bound - lower_bound) FROM "
        "simplequeue.archive_partitions() WHERE partition::text <> 'simplequeue.archive_ending'",
    )
    assert widths and all(0 < float(w) <= hourly.config.archive_partition_width for (w,) in widths)


async def test_a_long_reader_skips_the_lock_steps_within_their_timeout(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """A long query on the archive: making and dropping partitions are skipped after at
    most lock_timeout each; archiving and the DEFAULT purge still run."""
    janitor = sq.SimpleQueue(queue.pool, archive_retention=HOUR, janitor_batch_size=1)
    old_partition(dsn)
    query(
        dsn,
        "INSERT INTO simplequeue.archive (id, queue, data, status, moved_at) "
        "SELECT gen_random_uuid(), 'q', '1'::jsonb, 'completed', now() - interval '4 hours' "
        "UNION ALL SELECT gen_random_uuid(), 'q', '2', 'completed', now() - interval '2 days' "
        "UNION ALL SELECT gen_random_uuid(), 'q', '3', 'completed', now() - interval '3 days'",
    )
    await complete(queue, dsn, 3)
    async with await psycopg.AsyncConnection.connect(dsn) as reader:
        await reader.execute("SELECT count(*) FROM simplequeue.archive")
        started = time.monotonic()
        report = await janitor.run_janitor()
        took = time.monotonic() - started
    assert report.failed_steps == ("partitions", "retire")
    assert report.archived == 3 and report.purged == 2
    assert took < 6
    after = await janitor.run_janitor()
    assert after.failed_steps == () and after.partitions_dropped == 1


async def test_readers_see_no_error_while_janitors_make_and_drop_partitions(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    janitor = sq.SimpleQueue(queue.pool, archive_retention=HOUR, janitor_batch_size=2)
    await complete(queue, dsn, 4)
    await janitor.run_janitor()
    known = query(dsn, "SELECT id FROM simplequeue.archive")
    stop = asyncio.Event()
    errors: list[BaseException] = []

    async def read() -> None:
        while not stop.is_set():
            try:
                for (job_id,) in known:
                    assert await queue.get_job(job_id) is not None
                await queue.counts()
                await queue.queue_summaries()
            except Exception as exc:  # collected for the assertion
                errors.append(exc)
                return

    def churn(i: int) -> None:
        # an old partition to retire, and a row in it
        query(
            dsn,
            f"CREATE TABLE simplequeue.archive_old{i} PARTITION OF simplequeue.archive "
            f"FOR VALUES FROM (now() - interval '{100 - i} hours') "
            f"TO (now() - interval '{99 - i} hours')",
        )
        query(
            dsn,
            "INSERT INTO simplequeue.archive (id, queue, data, status, moved_at) VALUES "
            f"(gen_random_uuid(), 'q', '1', 'completed', now() - interval '{99.5 - i} hours')",
        )

    readers = [asyncio.create_task(read()) for _ in range(2)]
    dropped = 0
    for i in range(10):
        await asyncio.to_thread(churn, i)
        reports = await asyncio.gather(janitor.run_janitor(), janitor.run_janitor())
        dropped += sum(r.partitions_dropped for r in reports)
        assert all(set(r.failed_steps) <= {"partitions", "retire"} for r in reports)
    stop.set()
    await asyncio.gather(*readers)
    assert errors == []
    assert dropped >= 8
    assert count(dsn, table="archive") == 4


async def test_a_function_planted_in_the_schema_does_not_run_as_its_owner(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """A role that may create in the queue's schema (not its owner) plants an overload of a
    built-in the archive functions call; the janitor's sweep must not run it as the owner."""
    planter = f"sqt_planter_{uuid.uuid4().hex[:12]}"
    try:
        query(dsn, sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(planter)).as_string())
        query(
            dsn,
            sql.SQL("GRANT USAGE, CREATE ON SCHEMA simplequeue TO {}")
            .format(sql.Identifier(planter))
            .as_string(),
        )
        with psycopg.connect(make_conninfo(dsn, user=planter), autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION simplequeue.pg_advisory_xact_lock(key integer) RETURNS void "
                "LANGUAGE plpgsql AS $$ BEGIN "
                "IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN "
                f"EXECUTE 'ALTER ROLE {planter} SUPERUSER'; END IF; "
                "PERFORM pg_catalog.pg_advisory_xact_lock(key::bigint); END $$"
            )
            conn.execute(
                "CREATE FUNCTION simplequeue.pg_try_advisory_xact_lock(key integer) "
                "RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
                "IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN "
                f"EXECUTE 'ALTER ROLE {planter} SUPERUSER'; END IF; "
                "RETURN pg_catalog.pg_try_advisory_xact_lock(key::bigint); END $$"
            )
        await queue.run_janitor()
        assert query(dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", [planter]) == [
            (False,)
        ]
    finally:
        drop_roles(dsn, planter)
