"""A result the database refuses ends its job; it never loops past max_attempts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import simplequeue as sq
from simplequeue.validation import LATEST_TIME
from tests.conftest import FAST, eventually, query


class Counted(sq.Handler):
    """Fails (or returns what `verdict` builds) and counts its runs."""

    QUEUE = "counted"

    def __init__(self, verdict: Any = None) -> None:
        self.runs = 0
        self.verdict = verdict

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
        self.runs += 1
        if self.verdict is None:
            raise RuntimeError("boom")
        return self.verdict()


def stored(dsn: str) -> tuple[Any, ...]:
    (row,) = query(dsn, "SELECT status, attempt, run_at, last_error FROM simplequeue.jobs")
    return row


async def _run(dsn: str, handler: Counted, backoff: Any, strategy: Any = None) -> None:
    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "backoff": backoff}) as queue:
        queue.register_handler(handler)
        if strategy is not None:
            queue.set_queue_strategy("counted", strategy)
        await queue.start()
        await queue.insert_job(sq.Job("counted", {}, max_attempts=2))
        # ended (failed) or put off (run_at moved), whatever the path
        await eventually(
            lambda: stored(dsn)[0] == "failed" or stored(dsn)[2] == LATEST_TIME, timeout=10
        )
        await asyncio.sleep(1.5)  # three stall thresholds: a dropped result would rerun


class FarFuture:
    async def acquire(self, job: sq.Job) -> sq.Permit:
        raise sq.TryAfter(1e300)


@pytest.mark.parametrize(
    ("backoff", "verdict", "strategy"),
    [
        (sq.Fixed(timedelta(days=9000 * 365)), None, None),
        (sq.Custom(lambda attempt: 1e300), None, None),
        (
            sq.Fixed(timedelta(days=9000 * 365)),
            lambda: sq.JobResult.retry_at(datetime(9999, 1, 1, tzinfo=UTC)),
            None,
        ),
        (sq.Fixed(0), None, FarFuture()),
    ],
    ids=["fixed 9000 years", "custom 1e300 s", "retry_at plus backoff", "TryAfter 1e300 s"],
)
async def test_a_due_time_past_the_last_storable_one_is_clamped(
    dsn: str, backoff: Any, verdict: Any, strategy: Any
) -> None:
    handler = Counted(verdict)
    await _run(dsn, handler, backoff, strategy)
    status, attempt, run_at, _ = stored(dsn)
    assert status == "pending" and run_at == LATEST_TIME
    assert handler.runs == (0 if strategy else 1)
    assert attempt == (0 if strategy else 1)


@pytest.mark.parametrize("verdict", [None, lambda: sq.JobResult.success()], ids=["fail", "ok"])
async def test_a_result_a_trigger_refuses_ends_the_job_as_failed(dsn: str, verdict: Any) -> None:
    query(
        dsn,
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.status IN ('pending', 'completed') AND OLD.status = 'running' THEN "
        "RAISE EXCEPTION 'not today'; END IF; RETURN NEW; END $$",
    )
    query(
        dsn,
        "CREATE TRIGGER refuse BEFORE UPDATE ON simplequeue.jobs "
        "FOR EACH ROW EXECUTE FUNCTION public.refuse()",
    )
    handler = Counted(verdict)
    await _run(dsn, handler, sq.Fixed(0))
    status, attempt, _, error = stored(dsn)
    assert (status, attempt, handler.runs) == ("failed", 1, 1)
    assert "the database refused this attempt's result" in error and "not today" in error


async def test_a_result_nothing_can_store_is_left_to_the_reaper(dsn: str) -> None:
    """A trigger that refuses every change of a running job: the writer gives up on it
    and says so; the job is not lost, it stays running."""
    query(
        dsn,
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF OLD.status = 'running' THEN RAISE EXCEPTION 'never'; END IF; RETURN NEW; END $$",
    )
    query(
        dsn,
        "CREATE TRIGGER refuse BEFORE UPDATE ON simplequeue.jobs "
        "FOR EACH ROW EXECUTE FUNCTION public.refuse()",
    )
    handler = Counted()
    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "heartbeat_interval": 30}) as queue:
        queue.register_handler(handler)
        await queue.start()
        await queue.insert_job(sq.Job("counted", {}))
        await eventually(lambda: handler.runs == 1)
        await asyncio.sleep(0.5)
    assert stored(dsn)[0] == "running" and handler.runs == 1


async def test_a_fallback_the_database_refuses_too_ends_the_job_without_an_error(
    dsn: str,
) -> None:
    """A constraint on the error text refuses the result and the failure that explains it:
    the job still ends failed (keeping its previous error), it does not loop."""
    query(
        dsn,
        "ALTER TABLE simplequeue.jobs ADD CONSTRAINT short_errors "
        "CHECK (length(last_error) <= 100)",
    )

    class Wordy(sq.Handler):
        QUEUE = "counted"

        def __init__(self) -> None:
            self.runs = 0

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            self.runs += 1
            raise RuntimeError("x" * 300)

    handler = Wordy()
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(handler)
        await queue.start()
        await queue.insert_job(sq.Job("counted", {}, max_attempts=2))
        await eventually(lambda: stored(dsn)[0] == "failed", timeout=10)
        await asyncio.sleep(1.0)
    status, attempt, _, error = stored(dsn)
    assert (status, attempt, handler.runs, error) == ("failed", 1, 1, None)
