"""The operator's commands, on real PostgreSQL: the operator's day of docs/operations.md
(stats, dead jobs found and requeued in bulk, a job cancelled and one rescheduled, a
queue paused and resumed, which worker runs what, the janitor now), and bad input."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import simplequeue as sq
from simplequeue.cli import main
from tests.conftest import WorkerProcess, count, query


@pytest.fixture
def ops(dsn: str) -> Iterator[sq.SyncQueue]:
    with sq.SyncQueue.from_url(dsn) as queue:
        yield queue


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def sq_cli(dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """`simplequeue ARGS --dsn DSN` in this process: (exit status, stdout, stderr)."""
    monkeypatch.setenv("SIMPLEQUEUE_DSN", dsn)
    monkeypatch.setenv("COLUMNS", "250")

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def as_json(run: Run, *args: str) -> Any:
    code, out, err = run(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_the_operators_day(
    dsn: str, ops: sq.SyncQueue, sq_cli: Run, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers()
    # Webhooks to an endpoint that is down: five jobs fail for good.
    failing = [
        ops.insert_job(sq.Job("work", {"fail": "HTTP 503"}, max_attempts=1)) for _ in range(5)
    ]
    slow = ops.insert_job(sq.Job("work", {"sleep": 3}))
    waiting = ops.insert_job(sq.Job("work", {}, run_at=sq_time(3600)))
    later = ops.insert_job(sq.Job("work", {}, run_at=sq_time(3600)))

    def settled() -> bool:
        return count(dsn, "status = 'failed'") == 5 and count(dsn, "status = 'running'") == 1

    assert_eventually(settled)

    # stats per queue
    [work] = [s for s in as_json(sq_cli, "stats") if s["queue"] == "work"]
    assert (work["dead"], work["running"], work["scheduled"]) == (5, 1, 2)
    code, out, _ = sq_cli("stats")
    assert code == 0 and "work" in out and "oldest due" in out

    # which worker runs what
    [row] = as_json(sq_cli, "workers", "list")
    assert row["alive"] and row["running"] == 1 and row["pid"] == worker.pid
    assert row["leader"]  # the only worker runs the maintenance
    listed = as_json(sq_cli, "jobs", "list", "--worker", row["id"], "--status", "running")
    assert [j["id"] for j in listed["jobs"]] == [str(slow)]

    # dead jobs found, their errors read, and requeued in bulk (after the endpoint is back)
    dead = as_json(sq_cli, "dlq", "list", "--queue", "work")
    assert {j["id"] for j in dead} == {str(i) for i in failing}
    shown = as_json(sq_cli, "jobs", "show", str(failing[0]))
    assert (
        "ValueError: HTTP 503" in shown["errors"][0]["error"]
        and shown["errors"][0]["status"] == "failed"
    )
    code, out, _ = sq_cli("jobs", "show", str(failing[0]))
    assert code == 0 and "HTTP 503" in out and "attempts that failed" in out

    # a queue paused: nothing new starts; resumed: the work goes on
    code, out, _ = sq_cli("queues", "pause", "work", "--reason", "endpoint down")
    assert code == 0 and "paused work" in out
    [queue_row] = as_json(sq_cli, "queues", "list")
    assert queue_row["paused"] and queue_row["pause_reason"] == "endpoint down"
    assert queue_row["workers"] == 1
    query(dsn, "UPDATE simplequeue.jobs SET data = '{}' WHERE status = 'failed'")  # fixed
    code, out, _ = sq_cli("dlq", "requeue", "--queue", "work", "--yes")
    assert code == 0 and "requeued 5 dead job(s)" in out
    time.sleep(1.0)
    assert count(dsn, "status = 'pending' AND run_at <= now()") == 5  # paused: not started
    code, out, _ = sq_cli("queues", "resume", "work")
    assert code == 0 and "resumed work" in out
    assert_eventually(lambda: count(dsn, "status = 'completed'") >= 5)

    # one job cancelled, one rescheduled, one run now
    assert sq_cli("jobs", "cancel", str(waiting))[0] == 0
    assert sq_cli("jobs", "reschedule", str(later), "2h")[0] == 0
    job = ops.get_job(later)  # type: ignore[arg-type]
    assert job is not None and job.run_at > sq_time(3600 + 1800)
    assert sq_cli("jobs", "retry", str(later))[0] == 0
    assert_eventually(lambda: count(dsn, f"id = '{later}' AND status = 'completed'") == 1)

    # the janitor now: completed to the archive, the cancelled one to the DLQ
    code, out, _ = sq_cli("janitor", "run")
    assert code == 0 and "archived" in out
    assert count(dsn, table="dlq") == 1

    # a graceful stop: the worker finishes, and its row goes
    worker.terminate()
    assert as_json(sq_cli, "workers", "list") == []


def sq_time(seconds: float) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=seconds)


def assert_eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_bulk_purge_asks_first_and_a_no_changes_nothing(
    dsn: str, ops: sq.SyncQueue, sq_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        ops.cancel_job(ops.insert_job(sq.Job("q", {})))  # type: ignore[arg-type]
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("n\n"))
    code, _, err = sq_cli("dlq", "purge", "--queue", "q")
    assert code == 1 and "purge 3 dead job(s)?" in err and "aborted" in err
    assert count(dsn, "status = 'cancelled'") == 3
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("y\n"))
    code, out, _ = sq_cli("dlq", "purge", "--queue", "q", "--status", "cancelled")
    assert code == 0 and "purged 3 dead job(s)" in out and count(dsn) == 0
    code, _, err = sq_cli("dlq", "purge", "--yes")
    assert code == 1 and "no dead job matches" in err


def test_one_dead_job_requeued_and_purged_by_id(dsn: str, ops: sq.SyncQueue, sq_cli: Run) -> None:
    job_id = ops.insert_job(sq.Job("q", {}))
    ops.cancel_job(job_id)  # type: ignore[arg-type]
    assert sq_cli("dlq", "requeue", str(job_id))[0] == 0
    assert count(dsn, "status = 'pending'") == 1
    ops.cancel_job(job_id)  # type: ignore[arg-type]
    assert sq_cli("dlq", "purge", str(job_id))[0] == 0 and count(dsn) == 0
    code, _, err = sq_cli("dlq", "purge", str(job_id))
    assert code == 1 and "no dead job" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("jobs", "show", "nope"), "not a job id"),
        (("jobs", "show", str(uuid.UUID(int=1))), "no job with id"),
        (("jobs", "cancel", str(uuid.UUID(int=1))), "is not pending or running"),
        (("jobs", "reschedule", str(uuid.UUID(int=1)), "tomorrow"), "neither an ISO 8601"),
        (("jobs", "retry", "x"), "not a job id"),
        (("jobs", "list", "--status", "sleeping"), "Invalid value"),
        (("jobs", "list", "--limit", "0"), "Invalid value"),
        (("jobs", "list", "--worker", "w"), "not a worker id"),
        (("jobs", "list", "--since", "yesterday"), "neither an ISO 8601"),
        (("dlq", "list", "--status", "pending"), "Invalid value"),
        (("dlq", "requeue", str(uuid.UUID(int=1)), "--queue", "q"), "not both"),
        (("dlq", "purge", "--older-than", "soon", "--yes"), "neither an ISO 8601"),
        (("queues", "pause", ""), "queue must be a non-empty string"),
        (("queues", "pause", "q", "--until", "later"), "neither an ISO 8601"),
        (("queues", "pause", "q", "--until", "2000-01-01"), "not in the future"),
        (("jobs", "list", "--since", "99999999d"), "further than a calendar goes"),
        (("jobs", "list", "--since", "9999999999d"), "further than a calendar goes"),
        (("jobs", "reschedule", str(uuid.UUID(int=1)), "99999999d"), "further than"),
        (("queues", "resume", "never"), "is not paused"),
        (("schedules", "pause", "never"), "no schedule named never"),
        (("schedules", "resume", ""), "schedule must be a non-empty string"),
        (("schedules", "delete", "never"), "no schedule named never"),
        (("stats", "--window", "0"), "window"),
        (("nonsense",), "No such command"),
    ],
)
def test_bad_input_gets_a_clear_error_and_changes_nothing(
    dsn: str, sq_cli: Run, args: tuple[str, ...], message: str
) -> None:
    code, out, err = sq_cli(*args)
    assert code in (1, 2) and message in err, (code, out, err)
    assert count(dsn) == 0 and count(dsn, table="queues") == 0


def test_every_command_needs_a_dsn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SIMPLEQUEUE_DSN", raising=False)
    for args in (
        ["stats"],
        ["jobs", "list"],
        ["dlq", "list"],
        ["queues", "list"],
        ["workers", "list"],
        ["reap"],
    ):
        assert main(args) == 2
        assert "--dsn" in capsys.readouterr().err


def test_an_unreachable_database_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["stats", "--dsn", "host=127.0.0.1 port=1 connect_timeout=1"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("simplequeue: ") and len(err.strip().splitlines()) == 1


def test_control_characters_are_shown_escaped(dsn: str, ops: sq.SyncQueue, sq_cli: Run) -> None:
    name = "esc\x1b[31mRED\x1b[0m\nfake row\x9b"
    job_id = ops.insert_job(sq.Job(name, {"x": "\x1b[2J\x9b"}))
    ops.pause_queue(name, reason="\x1b]0;pwned\x07")
    for args in (("queues", "list"), ("stats",), ("jobs", "list"), ("jobs", "show", str(job_id))):
        code, out, err = sq_cli(*args)
        assert code == 0, err
        assert "\x1b" not in out and "\x9b" not in out and "\x07" not in out, args
        assert "\\x1b[31mRED" in out and "\\nfake row" in out, args
    code, out, _ = sq_cli("jobs", "show", str(job_id), "--json")
    assert code == 0 and "\x9b" not in out and json.loads(out)["data"] == {"x": "\x1b[2J\x9b"}


def test_hostile_data_is_shown_as_text(dsn: str, ops: sq.SyncQueue, sq_cli: Run) -> None:
    name = "[bold red]evil[/] \x1b[31m'; DROP TABLE jobs; --"
    job_id = ops.insert_job(
        sq.Job(name, {"html": "<script>alert(1)</script>", "markup": "[link=x]y[/link]"})
    )
    ops.pause_queue(name, reason="[blink]x[/blink]")
    code, out, err = sq_cli("jobs", "show", str(job_id))
    assert code == 0, err
    assert "[link=x]y[/link]" in out and "<script>alert(1)</script>" in out
    code, out, _ = sq_cli("queues", "list")
    assert code == 0 and "[blink]x[/blink]" in out and "[bold red]evil[/]" in out
    assert count(dsn) == 1


def test_help_shows_every_flag_with_its_default(sq_cli: Run) -> None:
    code, out, _ = sq_cli("jobs", "list", "--help")
    assert code == 0 and "--unique-key" in out and "default: 50" in out and "--dsn" in out
    code, out, _ = sq_cli("dlq", "purge", "--help")
    assert code == 0 and "--older-than" in out and "--yes" in out
    code, out, _ = sq_cli("worker", "--help")
    assert code == 0 and "--global-permits" in out and "default: 500" in out


def test_log_options_go_before_or_after_the_command(sq_cli: Run) -> None:
    assert sq_cli("--log-level", "warning", "stats")[0] == 0
    assert sq_cli("stats", "--log-level", "debug", "--log-format", "json")[0] == 0
    assert sq_cli("stats", "--log-level", "loud")[0] == 2


def test_worker_settings_come_from_flags_or_the_environment(
    sq_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = sq_cli("worker", "tests.worker_app:configure", "--global-permits", "0")
    assert code == 2 and "global_permits" in err
    monkeypatch.setenv("SIMPLEQUEUE_STALL_FACTOR", "1")
    code, _, err = sq_cli("worker", "tests.worker_app:configure")
    assert code == 2 and "stall_factor" in err


def test_schedules_from_the_command_line(
    dsn: str, sq_cli: Run, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers(target="tests.worker_app:scheduled")
    assert_eventually(lambda: bool(query(dsn, "SELECT 1 FROM simplequeue.schedules")))
    [row] = as_json(sq_cli, "schedules", "list")
    assert row["name"] == "tick" and row["every_seconds"] == 1.0 and row["missed"] == "all"
    code, out, _ = sq_cli("schedules", "list")
    assert code == 0 and "tick" in out and "every 0:00:01" in out
    code, out, _ = sq_cli("schedules", "pause", "tick")
    assert code == 0 and "paused schedule tick" in out
    assert query(dsn, "SELECT paused FROM simplequeue.schedules") == [(True,)]
    code, out, _ = sq_cli("schedules", "resume", "tick")
    assert code == 0 and "resumed schedule tick" in out
    worker.terminate()
    code, out, _ = sq_cli("schedules", "delete", "tick")
    assert code == 0 and "deleted schedule tick" in out
    assert as_json(sq_cli, "schedules", "list") == []
