"""Test database: $SIMPLEQUEUE_TEST_DSN, else 127.0.0.1:5432 when reachable, else an
embedded server. Every test gets a fresh database cloned from a migrated template."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql import factories

import simplequeue as sq

ROOT = Path(__file__).resolve().parent.parent


def _discover() -> dict[str, Any]:
    dsn = os.environ.get("SIMPLEQUEUE_TEST_DSN")
    if dsn:
        params = conninfo_to_dict(dsn)
        return {
            "host": params.get("host", "127.0.0.1"),
            "port": int(params.get("port", 5432)),
            "user": params.get("user", "postgres"),
            "password": params.get("password"),
        }
    if os.environ.get("SIMPLEQUEUE_TEST_EMBEDDED") != "1":
        try:
            psycopg.connect(
                "host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=2
            ).close()
            return {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": None}
        except psycopg.Error:
            pass
    from simplequeue.embedded import start_embedded

    server = start_embedded()
    atexit.register(server.stop)
    return {"host": server.host, "port": server.port, "user": server.user, "password": None}


SERVER = _discover()


def _migrate_template(
    host: str, port: int, user: str, dbname: str, password: str | None, **_: Any
) -> None:
    dsn = make_conninfo(host=host, port=port, user=user, dbname=dbname, password=password or None)
    asyncio.run(sq.setup(dsn))
    from tests.worker_app import DDL

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DDL)


postgresql_server = factories.postgresql_noproc(
    host=SERVER["host"],
    port=SERVER["port"],
    user=SERVER["user"],
    password=SERVER["password"],
    dbname=f"sq_test_{os.getpid()}",
    load=[_migrate_template],
)
postgresql = factories.postgresql("postgresql_server")


@pytest.fixture
def dsn(postgresql: psycopg.Connection[Any]) -> str:
    """The fresh, migrated database of this test."""
    info = postgresql.info
    return make_conninfo(
        host=info.host,
        port=info.port,
        user=info.user,
        dbname=info.dbname,
        password=SERVER["password"] or None,
    )


FAST = {
    "heartbeat_interval": 0.2,
    "empty_poll_sleep": 0.2,
    "reaper_interval": 0.1,
    "backoff": sq.Fixed(0),
    "result_flush_interval": 0.001,
}
"""Settings that make the background loops quick enough for tests."""


@pytest.fixture
async def queue(dsn: str) -> AsyncIterator[sq.SimpleQueue]:
    """A queue owning its pool on the test database; not started."""
    q = sq.SimpleQueue.from_url(dsn, **FAST)
    async with q:
        yield q


def query(dsn: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Read the database directly, bypassing the library under test."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def sqlalchemy_url(dsn: str, driver: str) -> str:
    """The test database as a SQLAlchemy URL on `driver`; host and port go in the query so a
    socket directory (the embedded server) survives."""
    from sqlalchemy.engine import URL

    params = conninfo_to_dict(dsn)
    query = {"host": str(params.get("host", "127.0.0.1")), "port": str(params.get("port", 5432))}
    url = URL.create(
        f"postgresql+{driver}",
        username=str(params.get("user", "postgres")),
        password=params.get("password") or None,
        database=str(params["dbname"]),
        query=query,
    )
    return url.render_as_string(hide_password=False)


def count(dsn: str, where: str = "true", params: Any = None, table: str = "jobs") -> int:
    return int(query(dsn, f"SELECT count(*) FROM simplequeue.{table} WHERE {where}", params)[0][0])


async def eventually(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.02) -> Any:
    """Poll `check` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check}")
        await asyncio.sleep(every)


class WorkerProcess:
    """A real `simplequeue worker` process, to be stopped or killed."""

    def __init__(self, dsn: str, target: str = "tests.worker_app:configure", *extra: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SIMPLEQUEUE_TEST_DSN_APP": dsn}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simplequeue",
                "worker",
                target,
                "--dsn",
                dsn,
                "--no-migrate",
                "--heartbeat-interval",
                "0.2",
                "--empty-poll-sleep",
                "0.2",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=timeout)
        return out

    def output(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate(timeout=10)
        return out


@pytest.fixture
def workers(dsn: str) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(*extra: str, target: str = "tests.worker_app:configure") -> WorkerProcess:
        worker = WorkerProcess(dsn, target, *extra)
        started.append(worker)
        return worker

    yield start
    for number, worker in enumerate(started):
        if worker.proc.poll() is None:
            worker.kill()
        # shown by pytest only when the test failed: what each worker said
        with contextlib.suppress(ValueError, OSError, subprocess.TimeoutExpired):
            print(f"--- worker {number} (pid {worker.pid}) ---\n{worker.output()}")
