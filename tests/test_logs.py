"""Logs that help: a failed attempt says why and what comes next, a final failure says so
at WARNING, the job's context is in every format, and `--log-level info` is simplequeue's
lines, not every library's."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable

import pytest

import simplequeue as sq
from tests.conftest import FAST, WorkerProcess, count, eventually


async def test_a_many_line_error_is_logged_on_one_line(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="simplequeue")

    class Multiline(sq.Handler):
        QUEUE = "lines"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            raise ValueError("first line\n  second line")

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Multiline())
        job_id = await queue.insert_job(sq.Job("lines", {}, max_attempts=1))
        await queue.drain(timeout=30)
        stored = await queue.get_job(job_id)  # type: ignore[arg-type]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "simplequeue.executor"]
    assert "ValueError: first line second line" in line and "\n" not in line
    assert stored is not None and "first line\n  second line" in (stored.last_error or "")


async def test_failed_attempts_say_why_and_what_comes_next(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="simplequeue")

    class Flaky(sq.Handler):
        QUEUE = "flaky"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            raise ValueError("mailbox full")

    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "backoff": sq.Fixed(0)}) as queue:
        queue.register_handler(Flaky())
        job_id = await queue.insert_job(sq.Job("flaky", {}, max_attempts=2))
        assert await queue.drain(timeout=30) == {"pending": 1, "failed": 1}
    lines = [r for r in caplog.records if r.name == "simplequeue.executor"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.WARNING]
    first, last = (r.getMessage() for r in lines)
    assert f"job {job_id} attempt 1/2 failed: ValueError: mailbox full" in first
    assert first.endswith("runs again in 0s")
    assert f"job {job_id} ended failed after attempt 2/2: ValueError: mailbox full" in last
    assert [(r.job_id, r.queue, r.attempt) for r in lines] == [  # type: ignore[attr-defined]
        (str(job_id), "flaky", 1),
        (str(job_id), "flaky", 2),
    ]


def configured(fmt: str) -> str:
    """What the command's logging writes, configured as the command does, in a process of
    its own (it replaces the root logger's handlers)."""
    code = f"""
import logging
from simplequeue import logs
logs.configure("info", {fmt!r})
logging.getLogger("psycopg.pool").info("another library's chatter")
logging.getLogger("psycopg.pool").warning("another library's warning")
logging.getLogger("simplequeue.executor").info(
    "about a job", extra={{"job_id": "j1", "queue": "emails", "attempt": 2}}
)
logging.getLogger("simplequeue.janitor").debug("below the level")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_text_lines_carry_the_jobs_context_and_only_our_info() -> None:
    lines = configured("text").splitlines()
    assert len(lines) == 2, lines
    assert "WARNING psycopg.pool: another library's warning" in lines[0]
    assert lines[1].endswith(
        "INFO simplequeue.executor: about a job [job_id=j1 queue=emails attempt=2]"
    )


def test_json_lines() -> None:
    lines = [json.loads(line) for line in configured("json").splitlines()]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("psycopg.pool", "WARNING"),
        ("simplequeue.executor", "INFO"),
    ]
    assert lines[1] | {"time": None} == {
        "time": None, "level": "INFO", "logger": "simplequeue.executor",
        "message": "about a job", "job_id": "j1", "queue": "emails", "attempt": 2,
    }  # fmt: skip


async def test_the_worker_command_takes_the_log_options_after_it(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers("--log-format", "json", "--log-level", "warning")
    job_id = await queue.insert_job(sq.Job("work", {"fail": "kaput"}, max_attempts=1))
    await eventually(lambda: count(dsn, "status = 'failed'") == 1, timeout=20)
    output = worker.terminate(timeout=30)
    lines = [json.loads(x) for x in output.splitlines() if x.startswith("{")]
    (line,) = [x for x in lines if x.get("job_id") == str(job_id)]
    assert line["level"] == "WARNING" and line["queue"] == "work" and line["attempt"] == 1
    expected = f"job {job_id} ended failed after attempt 1/1: ValueError: kaput"
    assert line["message"].startswith(expected)
    assert not [x for x in lines if x["level"] == "INFO"], "--log-level warning"
