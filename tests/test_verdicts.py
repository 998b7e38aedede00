"""One verdict vocabulary: each verdict has the effect docs/concepts.md ("Verdicts")
gives it, whether a handler returns it or a strategy raises it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import simplequeue as sq
from tests.conftest import FAST, eventually, query

HOUR = timedelta(hours=1)


def later() -> datetime:
    return datetime.now(UTC) + HOUR


# verdict, then the row after the first attempt: status, attempt, reprocess_count, and
# whether it is due again only about an hour from now
TABLE: list[tuple[str, Any, str, int, int, bool]] = [
    ("success", lambda: sq.JobResult.success(), "completed", 1, 0, False),
    ("failed", lambda: sq.JobResult.failed("no"), "pending", 1, 0, True),
    ("retry_at", lambda: sq.JobResult.retry_at(later(), "no"), "pending", 1, 0, True),
    ("reschedule_at", lambda: sq.JobResult.reschedule_at(later()), "pending", 0, 1, True),
    ("snooze", lambda: sq.JobResult.snooze(HOUR), "pending", 0, 0, True),
    ("park", lambda: sq.JobResult.park(later()), "pending", 0, 0, True),
    ("cancel", lambda: sq.JobResult.cancel("no"), "cancelled", 1, 0, False),
    ("critical", lambda: sq.JobResult.critical("no"), "critical_failure", 1, 0, False),
    ("unprocessable", lambda: sq.JobResult.unprocessable("no"), "unprocessable", 1, 0, False),
]


@pytest.mark.parametrize("source", ["handler", "strategy"])
@pytest.mark.parametrize(
    ("name", "verdict", "status", "attempt", "reprocess", "due_later"),
    TABLE,
    ids=[row[0] for row in TABLE],
)
async def test_a_verdict_has_one_effect_whoever_gives_it(
    dsn: str,
    source: str,
    name: str,
    verdict: Any,
    status: str,
    attempt: int,
    reprocess: int,
    due_later: bool,
) -> None:
    asked: list[str] = []

    class Judge(sq.Handler):
        QUEUE = "judged"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult:
            asked.append("handler")
            return verdict()  # type: ignore[no-any-return]

    class Decides:
        async def acquire(self, job: sq.Job) -> sq.Permit:
            asked.append("strategy")
            raise sq.StrategyDecision(verdict())

    settings = {**FAST, "backoff": sq.Fixed(HOUR)}
    async with sq.SimpleQueue.from_url(dsn, **settings) as queue:
        queue.register_handler(Judge())
        if source == "strategy":
            queue.set_queue_strategy("judged", Decides())
        await queue.start()
        job_id = await queue.insert_job(sq.Job("judged", {"n": 1}))
        await eventually(lambda: asked, timeout=10)
        await eventually(
            lambda: query(dsn, "SELECT status FROM simplequeue.jobs")[0][0] != "running",
            timeout=10,
        )
        await asyncio.sleep(0.1)  # anything more would show now
    assert asked == [source]  # a strategy's verdict: the handler never runs
    ((got_status, got_attempt, got_reprocess, due_in),) = query(
        dsn,
        "SELECT status, attempt, reprocess_count, extract(epoch FROM run_at - now()) "
        "FROM simplequeue.jobs WHERE id = %s",
        [job_id],
    )
    assert (got_status, got_attempt, got_reprocess) == (status, attempt, reprocess), name
    if due_later:
        assert 3000 < float(due_in) <= 3600, name


def test_the_strategy_shorthands_carry_the_verdicts_they_name() -> None:
    assert sq.CancelJob().result == sq.JobResult.cancel("cancelled by strategy")
    assert sq.RetryJob("busy").result == sq.JobResult.failed("busy")
    assert sq.MarkCompleted().result == sq.JobResult.success()
    assert sq.TryAfter(timedelta(seconds=90)).result == sq.JobResult.snooze(90)
    with pytest.raises(sq.InvalidJobError, match="snooze delay"):
        sq.JobResult.snooze(float("nan"))
