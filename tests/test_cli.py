"""The `simplequeue` command: migrate, worker targets, and their errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import simplequeue as sq
from simplequeue.cli import load_target
from simplequeue.migrate import migrations
from tests.conftest import ROOT, query


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simplequeue", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_migrate(dsn: str) -> None:
    first = run("migrate", "--dsn", dsn, "--schema", "from_cli")
    assert first.returncode == 0, first.stderr
    assert "applied: 0001_init" in first.stdout
    again = run("migrate", "--dsn", dsn, "--schema", "from_cli")
    assert "schema is up to date" in again.stdout
    assert query(dsn, "SELECT count(*) FROM from_cli.schema_migrations") == [(len(migrations()),)]


def test_migrate_refuses_a_bad_schema(dsn: str) -> None:
    result = run("migrate", "--dsn", dsn, "--schema", "Bad-Name")
    assert result.returncode == 2
    assert "invalid schema name" in result.stderr


def test_worker_needs_a_dsn() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SIMPLEQUEUE_DSN"}
    result = subprocess.run(
        [sys.executable, "-m", "simplequeue", "worker", "x:y"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 2 and "--dsn" in result.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nocolon", "module:attr"),
        ("no_such_module_xyz:thing", "cannot import"),
        ("tests.worker_app:missing", "has no attribute"),
        ("tests.worker_app:DDL", "neither a Handler"),
    ],
)
def test_bad_worker_targets(dsn: str, target: str, message: str) -> None:
    result = run("worker", target, "--dsn", dsn)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    "target", ["tests.worker_app:Work", "tests.worker_app:HANDLERS", "tests.worker_app:configure"]
)
def test_worker_target_forms(target: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    queue = sq.SimpleQueue(AsyncConnectionPool("postgresql://unused", open=False))
    load_target(target)(queue)
    assert queue.handled_queues == ["work"]
