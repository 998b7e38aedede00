"""Least privilege: the producer and worker roles can do their job and nothing more; and no
code path deserialises with pickle, evaluates code or imports what the database names."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import simplequeue as sq
from simplequeue.cli import main
from simplequeue.roles import grant_roles, validate_role_name
from tests.conftest import FAST, ROOT, count, eventually, query

DENIED = psycopg.errors.InsufficientPrivilege  # SQLSTATE 42501: permission denied, not owner


@dataclass
class Roles:
    producer: str
    worker: str
    producer_dsn: str
    worker_dsn: str


def unique_names(kind: str = "") -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:12]
    return f"sqt_producer{kind}_{suffix}", f"sqt_worker{kind}_{suffix}"


def drop_roles(dsn: str, *names: str) -> None:
    """Roles are cluster-wide: drop what a test created, with what it was granted here."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone():
                continue
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                [name],
            )
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture
async def roles(dsn: str) -> AsyncIterator[Roles]:
    producer, worker = unique_names()
    try:
        await grant_roles(dsn, producer=producer, worker=worker, login=True)
        yield Roles(
            producer,
            worker,
            make_conninfo(dsn, user=producer),
            make_conninfo(dsn, user=worker),
        )
    finally:
        drop_roles(dsn, producer, worker)


def attempt(dsn: str, statement: str, params: Any = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params)


def assert_denied(dsn: str, statements: list[str]) -> None:
    allowed = []
    for statement in statements:
        try:
            attempt(dsn, statement)
        except DENIED:
            continue
        allowed.append(statement)
    assert not allowed, f"these should have been refused: {allowed}"


def can(dsn: str, role: str, table: str, privilege: str) -> bool:
    return bool(
        query(dsn, "SELECT has_table_privilege(%s, %s, %s)", [role, table, privilege])[0][0]
    )


def schema_shape(dsn: str) -> list[tuple[Any, ...]]:
    return query(
        dsn,
        "SELECT c.relname, c.relkind, a.attname, a.atttypid FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
        "WHERE n.nspname = 'simplequeue' ORDER BY 1, 3",
    )


# -- the producer ----------------------------------------------------------------------


async def test_a_producer_inserts_and_reads_live_jobs(roles: Roles, dsn: str) -> None:
    async with sq.SimpleQueue.from_url(roles.producer_dsn, **FAST) as producer:
        job_id = await producer.insert_job(
            sq.Job("mail", {"to": "a@b.c"}, unique_key="welcome:1", fingerprint="user:1")
        )
        assert job_id is not None
        assert await producer.insert_job(sq.Job("mail", {}, unique_key="welcome:1")) is None
        ids = await producer.insert_jobs([sq.Job("mail", {"n": n}) for n in range(3)])
        assert all(ids)
        job = await producer.get_job(job_id)
        assert job is not None and job.data == {"to": "a@b.c"} and job.status == "pending"
        with pytest.raises(TimeoutError):
            await producer.wait_for_job(job_id, timeout=0.05)
        # inside the application's own transaction, as the producer
        async with (
            await psycopg.AsyncConnection.connect(roles.producer_dsn) as conn,
            conn.transaction(),
        ):
            in_tx = await producer.insert_job(sq.Job("mail", {"tx": True}), conn=conn)
        assert in_tx is not None and count(dsn, "id = %s", [in_tx]) == 1

        # Finished jobs live in the archive and the DLQ, which producers may not read:
        # get_job says so instead of failing with a bare permission error.
        query(dsn, "UPDATE simplequeue.jobs SET status = 'completed' WHERE id = %s", [job_id])
        async with sq.SimpleQueue.from_url(dsn) as owner:
            await owner.run_janitor()
        assert count(dsn, table="archive") == 1
        with pytest.raises(sq.JobNotFoundError, match=r"may not read simplequeue\.archive"):
            await producer.get_job(job_id)
        with pytest.raises(sq.JobNotFoundError, match="producers read live jobs only"):
            await producer.get_job(uuid.uuid4())
    assert count(dsn) == 4  # five inserted, one archived


async def test_a_producer_can_do_nothing_else(roles: Roles, dsn: str) -> None:
    async with sq.SimpleQueue.from_url(dsn) as owner:
        job_id = await owner.insert_job(sq.Job("q", {"secret": 1}))
    query(
        dsn,
        "INSERT INTO simplequeue.dlq (id, queue, data) "
        "SELECT id, queue, data FROM simplequeue.jobs",
    )
    query(dsn, "INSERT INTO simplequeue.archive SELECT * FROM simplequeue.dlq")
    shape = schema_shape(dsn)
    new_id = uuid.uuid4()
    assert_denied(
        roles.producer_dsn,
        [
            # the archive, the DLQ and the migrations table: not even readable
            "SELECT * FROM simplequeue.archive",
            "SELECT * FROM simplequeue.dlq",
            "SELECT * FROM simplequeue.schema_migrations",
            "INSERT INTO simplequeue.archive SELECT * FROM simplequeue.archive",
            "DELETE FROM simplequeue.dlq",
            # live jobs: no UPDATE, DELETE or TRUNCATE, and no forged state on INSERT
            "UPDATE simplequeue.jobs SET status = 'completed'",
            "UPDATE simplequeue.jobs SET data = '{}'",
            "DELETE FROM simplequeue.jobs",
            "TRUNCATE simplequeue.jobs",
            "SELECT * FROM simplequeue.jobs FOR UPDATE",
            f"INSERT INTO simplequeue.jobs (id, queue, data, status) "
            f"VALUES ('{new_id}', 'q', '1', 'running')",
            f"INSERT INTO simplequeue.jobs (id, queue, data, attempt) "
            f"VALUES ('{new_id}', 'q', '1', 99)",
            # the schema: no new objects, no changes, no drops
            "CREATE TABLE simplequeue.evil (x int)",
            "CREATE VIEW simplequeue.evil AS SELECT 1",
            "CREATE FUNCTION simplequeue.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE INDEX evil ON simplequeue.jobs (queue)",
            "CREATE SCHEMA evil",
            "ALTER TABLE simplequeue.jobs ADD COLUMN evil int",
            "ALTER TABLE simplequeue.jobs DISABLE ROW LEVEL SECURITY",
            "ALTER TABLE simplequeue.jobs OWNER TO CURRENT_USER",
            "CREATE TRIGGER evil BEFORE INSERT ON simplequeue.jobs "
            "FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
            "DROP TABLE simplequeue.jobs",
            "DROP TABLE simplequeue.archive",
            "DROP SCHEMA simplequeue CASCADE",
            "ALTER SCHEMA simplequeue RENAME TO evil",
        ],
    )
    async with sq.SimpleQueue.from_url(roles.producer_dsn) as producer:
        with pytest.raises(DENIED):  # operating needs the worker's privileges (documented)
            await producer.cancel_job(job_id)  # type: ignore[arg-type]
        with pytest.raises(DENIED):
            await producer.counts()
        with pytest.raises(DENIED):
            await producer.list_dlq()
    with pytest.raises(sq.MigrationError):
        await sq.setup(roles.producer_dsn)
    # GRANT without the grant option fails or only warns; either way it gives nothing away
    with contextlib.suppress(DENIED):
        attempt(roles.producer_dsn, "GRANT SELECT ON simplequeue.archive TO CURRENT_USER")
    attempt(roles.producer_dsn, "GRANT SELECT ON simplequeue.jobs TO PUBLIC")  # warns only
    assert not can(dsn, roles.producer, "simplequeue.archive", "SELECT")
    assert schema_shape(dsn) == shape
    assert query(dsn, "SELECT status, data FROM simplequeue.jobs") == [("pending", {"secret": 1})]


# -- the worker ------------------------------------------------------------------------


async def test_a_worker_runs_jobs_end_to_end_with_the_janitor(roles: Roles, dsn: str) -> None:
    followed: list[uuid.UUID] = []

    class Work(sq.Handler):
        QUEUE = "work"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult | None:
            kind = job.data["kind"]
            if kind == "fail":
                raise RuntimeError("boom")
            if kind == "critical":
                return sq.JobResult.critical("no")
            if kind == "slow":  # long enough for heartbeats, under the worker role
                await asyncio.sleep(0.6)
            if kind == "follow":  # handlers insert follow-up jobs
                new = await queue.insert_job(sq.Job("work", {"kind": "ok"}))
                assert new is not None
                followed.append(new)
            if kind == "retry" and job.attempt == 1:
                return sq.JobResult.failed("once more")
            return None

    async with sq.SimpleQueue.from_url(roles.producer_dsn) as producer:
        kinds = ["ok", "ok", "fail", "critical", "slow", "follow", "retry"]
        ids = dict(
            zip(
                kinds,
                await producer.insert_jobs(
                    [sq.Job("work", {"kind": k}, max_attempts=2) for k in kinds]
                ),
                strict=False,
            )
        )
        to_cancel = await producer.insert_job(sq.Job("work", {"kind": "never"}, run_at=_later()))
        stalled = await producer.insert_job(sq.Job("work", {"kind": "ok"}, run_at=_later()))
        exhausted = await producer.insert_job(sq.Job("work", {"kind": "ok"}, run_at=_later()))
    # a job whose worker died, and one with no attempts left: the reaper's business
    query(
        dsn,
        "UPDATE simplequeue.jobs SET status = 'running', attempt = 1, lease = 1, "
        "run_at = now(), heartbeat_at = now() - interval '1 hour' WHERE id = %s",
        [stalled],
    )
    query(
        dsn,
        "UPDATE simplequeue.jobs SET attempt = 3, run_at = now() WHERE id = %s",
        [exhausted],
    )

    worker = sq.SimpleQueue.from_url(roles.worker_dsn, **FAST, janitor_interval=0.2)
    async with worker:
        worker.register_handler(Work())
        await worker.start()
        # the worker role takes the maintenance lease: the janitor runs here
        await eventually(lambda: "janitor" in worker.stats().services)
        assert worker.stats().leader
        assert await worker.reschedule_job(to_cancel, _later())  # type: ignore[arg-type]
        assert await worker.cancel_job(to_cancel)  # type: ignore[arg-type]
        # everything ends up in the archive (completed) or the DLQ (dead), moved by the
        # worker role's janitor; the live table empties
        await eventually(lambda: count(dsn) == 0, timeout=15)
        archived = {r[0] for r in query(dsn, "SELECT id FROM simplequeue.archive")}
        dead = dict(query(dsn, "SELECT id, status FROM simplequeue.dlq"))
        assert {ids["ok"], ids["slow"], ids["follow"], ids["retry"], stalled} <= archived
        assert set(followed) <= archived and len(followed) == 1
        assert dead == {
            ids["fail"]: "failed",
            ids["critical"]: "critical_failure",
            to_cancel: "cancelled",
            exhausted: "failed",
        }
        # the worker role reads finished jobs, lists the DLQ and counts
        done = await worker.wait_for_job(ids["ok"])  # type: ignore[arg-type]
        assert done.status == "completed"
        assert {j.id for j in await worker.list_dlq()} == set(dead)
        assert (await worker.counts())["dlq"] == 4
        # ...and purges the archive after its retention
        query(dsn, "UPDATE simplequeue.archive SET moved_at = now() - interval '2 hours'")
        purger = sq.SimpleQueue(worker.pool, **FAST, archive_retention=3600.0)
        report = await purger.run_janitor()
        assert report.purged == len(archived)
        assert count(dsn, table="archive") == 0
        # requeueing from the DLQ table deletes from it: the owner's job (documented)
        with pytest.raises(DENIED):
            await worker.requeue_dlq_job(ids["fail"])  # type: ignore[arg-type]
        assert count(dsn, table="dlq") == 4
        # ...but an unknown id, or a job that is not dead, is a plain False
        assert await worker.requeue_dlq_job(uuid.uuid4()) is False
        live = await worker.insert_job(sq.Job("work", {}, run_at=_later()))
        assert await worker.requeue_dlq_job(live) is False  # type: ignore[arg-type]


async def test_a_worker_registers_and_enqueues_schedules_but_may_not_pause_them(
    roles: Roles, dsn: str
) -> None:
    async with sq.SimpleQueue.from_url(roles.worker_dsn, **FAST) as worker:
        worker.schedule("tick", sq.Job("ticks", {}), every=1)
        await worker.declare_queues(["ticks"])
        await worker.start()
        await eventually(lambda: count(dsn, "queue = 'ticks'") >= 2, timeout=10)
        [info] = await worker.list_schedules()
        assert info.enqueued >= 2
        with pytest.raises(DENIED):
            await worker.pause_schedule("tick")
        with pytest.raises(DENIED):
            await worker.delete_schedule("tick")
    async with sq.SimpleQueue.from_url(roles.producer_dsn) as producer:
        with pytest.raises(DENIED):
            await producer.list_schedules()


async def test_the_worker_roles_reaper_sweeps_every_step(roles: Roles, dsn: str) -> None:
    """The reaper's upkeep of the limits locks the rate windows it forgets: a worker role
    may, so a sweep under it ends rather than failing at its last step."""
    async with sq.SimpleQueue.from_url(dsn) as owner:
        await owner.configure_queue("rated", rate_limit=sq.Rate(5, per=1))
    query(dsn, "INSERT INTO simplequeue.rate_starts (queue, key, at) VALUES ('gone', '', now())")
    async with sq.SimpleQueue.from_url(roles.worker_dsn, **FAST) as worker:
        report = await worker.reap()
    assert report.recovered == 0
    assert count(dsn, table="rate_starts") == 0  # no limit counts the queue 'gone' any more


def _later() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(hours=1)


@pytest.mark.parametrize("run_at", ["-infinity", "infinity", "0001-01-01", "20000-01-01"])
async def test_a_producer_cannot_poison_the_claim_with_raw_sql(
    roles: Roles, dsn: str, run_at: str
) -> None:
    # A due time Python cannot load would fail every claim that meets the row.
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_run_at_representable"):
        attempt(
            roles.producer_dsn,
            "INSERT INTO simplequeue.jobs (id, queue, data, run_at) VALUES "
            "(gen_random_uuid(), 'work', '\"poison\"', %s)",
            [run_at],
        )
    assert count(dsn) == 0
    attempt(
        roles.producer_dsn,
        "INSERT INTO simplequeue.jobs (id, queue, data) VALUES "
        "(gen_random_uuid(), 'work', '\"innocent\"')",
    )
    ran: list[Any] = []

    class Work(sq.Handler):
        QUEUE = "work"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            ran.append(job.data)

    async with sq.SimpleQueue.from_url(roles.worker_dsn, **FAST) as worker:
        worker.register_handler(Work())
        await worker.start()
        await eventually(lambda: "innocent" in ran, timeout=3)


async def test_a_worker_cannot_alter_the_schema(roles: Roles, dsn: str) -> None:
    async with sq.SimpleQueue.from_url(dsn) as owner:
        await owner.insert_job(sq.Job("q", {"secret": 1}))
    query(
        dsn,
        "INSERT INTO simplequeue.dlq (id, queue, data) "
        "SELECT id, queue, data FROM simplequeue.jobs",
    )
    shape = schema_shape(dsn)
    assert_denied(
        roles.worker_dsn,
        [
            "CREATE TABLE simplequeue.evil (x int)",
            "CREATE FUNCTION simplequeue.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE INDEX evil ON simplequeue.jobs (queue)",
            "CREATE SCHEMA evil",
            "ALTER TABLE simplequeue.jobs ADD COLUMN evil int",
            "ALTER TABLE simplequeue.archive DROP COLUMN moved_at",
            "ALTER SCHEMA simplequeue RENAME TO evil",
            "DROP TABLE simplequeue.jobs",
            "DROP TABLE simplequeue.dlq",
            "DROP SCHEMA simplequeue CASCADE",
            "TRUNCATE simplequeue.jobs",
            "TRUNCATE simplequeue.archive",
            # the DLQ is kept for operators: a worker adds to it, never edits or deletes
            "DELETE FROM simplequeue.dlq",
            "UPDATE simplequeue.dlq SET status = 'pending'",
            # a job's identity and payload are the producer's: workers change its state only
            "UPDATE simplequeue.jobs SET data = '{}'",
            "UPDATE simplequeue.jobs SET queue = 'elsewhere'",
            "UPDATE simplequeue.jobs SET max_attempts = 1000",
            "UPDATE simplequeue.jobs SET id = gen_random_uuid()",
            "INSERT INTO simplequeue.schema_migrations VALUES (9999, 'evil')",
            "SELECT * FROM simplequeue.schema_migrations",
        ],
    )
    with pytest.raises(sq.MigrationError):  # workers run with --no-migrate
        await sq.setup(roles.worker_dsn)
    for grant in (
        "GRANT SELECT, DELETE ON simplequeue.dlq TO PUBLIC",
        "GRANT DELETE ON simplequeue.dlq TO CURRENT_USER",
    ):
        with contextlib.suppress(DENIED):
            attempt(roles.worker_dsn, grant)
    assert not can(dsn, roles.producer, "simplequeue.dlq", "SELECT")
    assert not can(dsn, roles.worker, "simplequeue.dlq", "DELETE")
    assert schema_shape(dsn) == shape
    assert query(dsn, "SELECT data FROM simplequeue.jobs") == [({"secret": 1},)]


async def test_the_worker_role_keeps_the_archive_partitioned_and_no_more(
    roles: Roles, dsn: str
) -> None:
    async with sq.SimpleQueue.from_url(roles.worker_dsn, **FAST) as worker:
        report = await worker.run_janitor()
    assert report.failed_steps == () and report.partitions_created >= 1
    made_ones = query(dsn, "SELECT partition::text FROM simplequeue.archive_partitions()")
    made = made_ones[0][0]
    calls = [
        "SELECT simplequeue.archive_prepare(60)",
        "SELECT * FROM simplequeue.archive_retire(60)",
        "SELECT simplequeue.archive_purge(60, 10)",
    ]
    assert_denied(roles.producer_dsn, calls)
    # the functions retire by the retention; the tables themselves are the owner's
    assert_denied(
        roles.worker_dsn,
        [
            "DELETE FROM simplequeue.archive",
            f"DROP TABLE {made}",
            f"DELETE FROM {made}",
            "DELETE FROM simplequeue.archive_default",
            "CREATE TABLE simplequeue.evil PARTITION OF simplequeue.archive "
            "FOR VALUES FROM ('2000-01-01') TO ('2000-01-02')",
        ],
    )
    # a temporary table named like the archive does not lead the owner's functions astray
    with psycopg.connect(roles.worker_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TEMP TABLE archive (moved_at timestamptz) PARTITION BY RANGE (moved_at)"
        )
        conn.execute(
            "CREATE TEMP TABLE archive_mine PARTITION OF pg_temp.archive "
            "FOR VALUES FROM ('2000-01-01') TO ('2000-01-02')"
        )
        assert conn.execute("SELECT * FROM simplequeue.archive_retire(60)").fetchone() == (0, 0)
        assert conn.execute("SELECT to_regclass('pg_temp.archive_mine')").fetchone() != (None,)
    assert query(dsn, "SELECT partition::text FROM simplequeue.archive_partitions()") == made_ones
    # EXECUTE given to everyone is taken back, and one the worker lost is given again
    query(dsn, "GRANT EXECUTE ON FUNCTION simplequeue.archive_retire(double precision) TO PUBLIC")
    query(
        dsn,
        sql.SQL("REVOKE EXECUTE ON FUNCTION simplequeue.archive_prepare(double precision) FROM {}")
        .format(sql.Identifier(roles.worker))
        .as_string(),
    )
    with pytest.raises(sq.ConfigError, match=r"can EXECUTE simplequeue\.archive_retire"):
        await grant_roles(dsn, producer=roles.producer, worker=roles.worker)
    query(
        dsn, "REVOKE EXECUTE ON FUNCTION simplequeue.archive_retire(double precision) FROM PUBLIC"
    )
    await grant_roles(dsn, producer=roles.producer, worker=roles.worker)
    with psycopg.connect(roles.worker_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT simplequeue.archive_prepare(60)").fetchone() == (0,)


# -- granting --------------------------------------------------------------------------


async def test_granting_is_idempotent_and_takes_back_extras(dsn: str) -> None:
    producer, worker = unique_names("i")
    try:
        await grant_roles(dsn, producer=producer, worker=worker)
        logins = dict(
            query(
                dsn,
                "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname IN (%s, %s)",
                [producer, worker],
            )
        )
        assert logins == {producer: False, worker: False}  # NOLOGIN unless asked
        query(
            dsn,
            sql.SQL("GRANT UPDATE, DELETE ON simplequeue.jobs TO {}")
            .format(sql.Identifier(producer))
            .as_string(),
        )
        await grant_roles(dsn, producer=producer, worker=worker)
        ((update, delete),) = query(
            dsn,
            "SELECT has_table_privilege(%s, 'simplequeue.jobs', 'UPDATE'), "
            "has_table_privilege(%s, 'simplequeue.jobs', 'DELETE')",
            [producer, producer],
        )
        assert (update, delete) == (False, False)
        await grant_roles(
            dsn,
            producer=producer,
            worker=worker,
            producer_password='it\'s a "secret" \\ $$',
            worker_password="another",
        )
        ((has_login, stored),) = query(
            dsn, "SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = %s", [producer]
        )
        assert has_login and stored.startswith("SCRAM-SHA-256$")  # hashed by the client
    finally:
        drop_roles(dsn, producer, worker)


async def test_granting_refuses_roles_that_would_hold_more(dsn: str) -> None:
    producer, worker = unique_names("r")
    try:
        with pytest.raises(sq.ConfigError, match="superuser"):
            await grant_roles(dsn, producer="postgres", worker=worker)
        query(dsn, sql.SQL("CREATE ROLE {}").format(sql.Identifier(producer)).as_string())
        query(dsn, f"GRANT pg_read_all_data TO {producer}")
        with pytest.raises(sq.ConfigError, match=r"can SELECT on simplequeue\.archive"):
            await grant_roles(dsn, producer=producer, worker=worker)
        # all or nothing: the worker role was not left behind half-made
        assert not query(dsn, "SELECT 1 FROM pg_roles WHERE rolname = %s", [worker])
        query(dsn, f"REVOKE pg_read_all_data FROM {producer}")
        query(dsn, "CREATE SCHEMA other")
        query(dsn, f"ALTER SCHEMA other OWNER TO {producer}")
        with pytest.raises(sq.ConfigError, match="lacks the simplequeue tables"):
            await grant_roles(dsn, schema="other", producer=producer, worker=worker)
        query(dsn, "DROP SCHEMA other")
        query(dsn, f"ALTER TABLE simplequeue.dlq OWNER TO {producer}")
        with pytest.raises(sq.ConfigError, match=r"owner of\) table simplequeue\.dlq"):
            await grant_roles(dsn, producer=producer, worker=worker)
        query(dsn, "ALTER TABLE simplequeue.dlq OWNER TO CURRENT_USER")
        await grant_roles(dsn, producer=producer, worker=worker)
    finally:
        drop_roles(dsn, producer, worker)


@pytest.mark.parametrize(
    "name",
    ["", "Upper", "1abc", 'a"b', "a;b", "a b", "pg_evil", "x" * 64, None, "robert'); drop"],
)
async def test_role_and_schema_names_are_validated(dsn: str, name: Any) -> None:
    with pytest.raises(sq.ConfigError, match="invalid role name"):
        validate_role_name(name)
    with pytest.raises(sq.ConfigError, match="invalid role name"):
        await grant_roles(dsn, producer=name)
    with pytest.raises(sq.ConfigError, match="invalid role name"):
        await grant_roles(dsn, worker=name)
    with pytest.raises(sq.ConfigError, match="invalid schema name"):
        await grant_roles(dsn, schema=name)
    with pytest.raises(sq.ConfigError, match="must differ"):
        await grant_roles(dsn, producer="same", worker="same")


def test_the_roles_command(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    producer, worker = unique_names("c")
    try:
        argv = ["roles", "--dsn", dsn, "--producer", producer, "--worker", worker, "--login"]
        assert main(argv) == 0
        assert f"producer {producer}" in capsys.readouterr().out
        ((can_insert, can_read_dlq),) = query(
            dsn,
            "SELECT has_column_privilege(%s, 'simplequeue.jobs', 'data', 'INSERT'), "
            "has_table_privilege(%s, 'simplequeue.dlq', 'SELECT')",
            [producer, producer],
        )
        assert can_insert and not can_read_dlq
        assert main(["roles", "--dsn", dsn, "--producer", "Bad Name"]) == 2
        assert "invalid role name" in capsys.readouterr().err
    finally:
        drop_roles(dsn, producer, worker)


# -- no code from data -----------------------------------------------------------------

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__", "breakpoint"}
FORBIDDEN_METHODS = {"import_module", "load_module", "exec_module", "spec_from_file_location"}
ALLOWED_DYNAMIC_IMPORTS = {("run.py", "load_target")}
"""`simplequeue worker module:attr` imports the module named on its command line."""


def _library_files() -> Iterator[Path]:
    yield from sorted((ROOT / "simplequeue").rglob("*.py"))


def test_no_code_path_unpickles_evaluates_or_imports_what_the_database_names() -> None:
    found: list[str] = []
    for path in _library_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        functions = {
            child: node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for child in ast.walk(node)
        }
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                names = set()
            if names & FORBIDDEN_MODULES:
                found.append(f"{where}: imports {names & FORBIDDEN_MODULES}")
            if isinstance(node, ast.Name) and node.id in FORBIDDEN_BUILTINS:
                found.append(f"{where}: uses {node.id}")
            if isinstance(node, ast.Attribute):
                owner = ast.unparse(node.value)
                if node.attr in FORBIDDEN_BUILTINS and owner == "builtins":
                    found.append(f"{where}: uses builtins.{node.attr}")
                if node.attr in FORBIDDEN_METHODS:
                    context = (path.name, functions.get(node, ""))
                    if node.attr != "import_module" or context not in ALLOWED_DYNAMIC_IMPORTS:
                        found.append(f"{where}: uses {owner}.{node.attr}")
                if node.attr in {"load", "loads", "unsafe_load"} and owner in {
                    "yaml",
                    "jsonpickle",
                }:
                    found.append(f"{where}: uses {owner}.{node.attr}")
    assert not found, found


def test_the_only_dynamic_import_takes_the_command_line_target() -> None:
    source = (ROOT / "simplequeue" / "cli" / "run.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    (load_target,) = (
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name == "load_target"
    )
    calls = [
        node
        for node in ast.walk(load_target)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
    ]
    assert len(calls) == 1
    # module_name comes from `target`, the function's argument: the command line
    assert ast.unparse(calls[0].args[0]) == "module_name"
    callers = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_target"
    ]
    assert [ast.unparse(c.args[0]) for c in callers] == ["target"]  # the worker argument


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("lease", 2147483647),
        ("reprocess_count", 2147483647),
        ("created_at", "infinity"),
        ("updated_at", "-infinity"),
        ("completed_at", "20000-01-01"),
        ("heartbeat_at", "infinity"),
    ],
)
async def test_no_raw_row_can_stop_the_claims(
    queue: sq.SimpleQueue, dsn: str, column: str, value: Any
) -> None:
    """A lease that would overflow at the next claim, or a time no client can load, would
    fail every claim that meets the row: the table refuses them, whoever writes."""
    with pytest.raises(psycopg.errors.CheckViolation):
        query(
            dsn,
            f"INSERT INTO simplequeue.jobs (id, queue, data, {column}) "
            "VALUES (gen_random_uuid(), 'work', '1', %s)",
            [value],
        )
    job_id = await queue.insert_job(sq.Job("work", 2))
    with pytest.raises(psycopg.errors.CheckViolation):
        query(dsn, f"UPDATE simplequeue.jobs SET {column} = %s WHERE id = %s", [value, job_id])
    ran: list[Any] = []

    class Work(sq.Handler):
        QUEUE = "work"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            ran.append(job.data)

    queue.register_handler(Work())
    await queue.start()
    await eventually(lambda: ran == [2], timeout=5)


def test_a_retry_reads_with_the_privileges_of_its_own_connection(dsn: str, roles: Roles) -> None:
    """Whether a retry may look in the archive and the DLQ depends on the role of the
    connection it runs on, asked each time: here the queue's pool is the producer role,
    the application's connection the owner. (Once cached per queue, a retry on the pool
    failed after one on the owner's connection, and one on the owner's connection stored
    an archived job a second time after one on the pool.)"""
    from simplequeue.columns import MOVED_COLUMNS

    with sq.SyncQueue.from_url(roles.producer_dsn) as queue, psycopg.connect(dsn) as app:
        earlier = sq.Job("q", 1)
        queue.insert_job(earlier, conn=app)
        app.rollback()
        assert queue.insert_job(earlier) == earlier.id  # a retry on the pool: live table only
        done = sq.Job("q", 2)
        queue.insert_job(done, conn=app)
        app.commit()  # ... and the application never heard back
        query(dsn, "UPDATE simplequeue.jobs SET status = 'completed' WHERE id = %s", [done.id])
        query(
            dsn,
            f"WITH moved AS (DELETE FROM simplequeue.jobs WHERE id = %s RETURNING "
            f"{MOVED_COLUMNS}) INSERT INTO simplequeue.archive ({MOVED_COLUMNS}) "
            "SELECT * FROM moved",
            [done.id],
        )
        assert queue.insert_job(done, conn=app) == done.id  # found in the archive
        app.commit()
        later = sq.Job("q", 3)
        queue.insert_job(later, conn=app)
        app.rollback()
        assert queue.insert_job(later) == later.id  # the pool's role again: no archive read
    assert count(dsn, "id = %s", [done.id]) == 0 and count(dsn, table="archive") == 1
    assert count(dsn) == 2


async def test_keys_held_over_time_under_the_roles(roles: Roles, dsn: str) -> None:
    """The producer claims keys held over time (and takes over expired ones) but cannot
    delete them; the worker's reaper forgets expired ones. A producer's retry of a job
    archived meanwhile (which it may not read) finds it by the key it holds."""
    from datetime import timedelta

    async with sq.SimpleQueue.from_url(roles.producer_dsn) as producer:
        first = await producer.insert_job(sq.Job("q", 1, unique_key="k", unique_for=3600))
        assert first is not None
        assert await producer.insert_job(sq.Job("q", 2, unique_key="k", unique_for=60)) is None
        query(dsn, "UPDATE simplequeue.jobs SET status = 'completed' WHERE id = %s", [first])
        query(dsn, "UPDATE simplequeue.unique_keys SET expires_at = now() - interval '1 second'")
        again = await producer.insert_job(sq.Job("q", 3, unique_key="k", unique_for=sq.FOREVER))
        assert again is not None
        # the producer undoes claims whose job was not stored, so it may delete keys
        assert await producer.release_unique_key("k") is True
        # a retry whose first try was stored, then archived out of the producer's sight
        retried = sq.Job("q", 4, unique_key="r", unique_for=timedelta(days=1))
        async with await psycopg.AsyncConnection.connect(roles.producer_dsn) as conn:
            await producer.insert_job(retried, conn=conn)
            await conn.commit()  # ... and the application never heard back
        query(dsn, "UPDATE simplequeue.jobs SET status = 'completed' WHERE id = %s", [retried.id])
        async with sq.SimpleQueue.from_url(dsn) as owner:
            assert (await owner.run_janitor()).archived == 2
        async with await psycopg.AsyncConnection.connect(roles.producer_dsn) as conn:
            assert await producer.insert_job(retried, conn=conn) == retried.id
            await conn.commit()
    assert count(dsn, "unique_key = 'r'") == 0 and count(dsn, table="archive") == 2
    assert_denied(
        roles.producer_dsn,
        [
            "UPDATE simplequeue.unique_keys SET key = 'other'",
            "TRUNCATE simplequeue.unique_keys",
        ],
    )
    query(
        dsn,
        "INSERT INTO simplequeue.unique_keys (key, job_id, queue, expires_at) "
        "VALUES ('old', gen_random_uuid(), 'q', now() - interval '1 hour')",
    )
    async with sq.SimpleQueue.from_url(roles.worker_dsn, **FAST) as worker:
        await worker.start()  # the leader's reaper
        await eventually(lambda: count(dsn, "key = 'old'", table="unique_keys") == 0)
        assert await worker.release_unique_key("r") is True
    assert query(dsn, "SELECT key FROM simplequeue.unique_keys") == []
