"""The pure code, without a database: verdicts into outcomes, claim planning, the NOTIFY
payload, error texts, delays and the column list. `make unit` runs these alone, in well
under a second; `make test` runs them with the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import simplequeue as sq
from simplequeue import columns
from simplequeue.backoff import MAX_DELAY, clamp_delay
from simplequeue.durability import Durability, FastQueues, check_durability
from simplequeue.errors import InvalidArgumentError
from simplequeue.job import JobStatus, ResultKind
from simplequeue.runtime.outage import describe
from simplequeue.runtime.outcomes import describe_error, outcome_for_result, outcome_for_shutdown
from simplequeue.runtime.poller import claim_was_saturated, plan_claim
from simplequeue.store import MAX_ERROR_CHARS, notify_payload, storable_error

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def running(attempt: int = 1, max_attempts: int = 3, reprocess: int = 0) -> sq.Job:
    job = sq.Job("q", {}, max_attempts=max_attempts)
    job.attempt, job.reprocess_count, job.lease = attempt, reprocess, 7
    return job


@pytest.mark.parametrize(
    ("result", "status", "refund", "reprocess"),
    [
        (sq.JobResult.success(), JobStatus.COMPLETED, 0, 0),
        (sq.JobResult.failed("x"), JobStatus.PENDING, 0, 0),
        (sq.JobResult.retry_at(NOW, "x"), JobStatus.PENDING, 0, 0),
        (sq.JobResult.reschedule_at(NOW), JobStatus.PENDING, 1, 1),
        (sq.JobResult.snooze(5), JobStatus.PENDING, 1, 0),
        (sq.JobResult.park(NOW), JobStatus.PENDING, 1, 0),
        (sq.JobResult.cancel(), JobStatus.CANCELLED, 0, 0),
        (sq.JobResult.critical("x"), JobStatus.CRITICAL_FAILURE, 0, 0),
        (sq.JobResult.unprocessable("x"), JobStatus.UNPROCESSABLE, 0, 0),
    ],
)
def test_every_verdict_has_its_outcome(
    result: sq.JobResult, status: JobStatus, refund: int, reprocess: int
) -> None:
    outcome = outcome_for_result(running(), result, sq.Fixed(30), max_reprocess=100)
    assert (outcome.status, outcome.refund, outcome.reprocess) == (status, refund, reprocess)
    assert outcome.lease == 7


def test_every_kind_of_verdict_is_covered_above() -> None:
    kinds = {k for k in ResultKind}
    assert len(kinds) == 9, "a new verdict needs its row in the table above and in the docs"


def test_the_last_attempt_fails_and_the_last_reprocess_is_poison() -> None:
    last = outcome_for_result(running(attempt=3), sq.JobResult.failed("x"), sq.Fixed(1), 100)
    assert last.status == JobStatus.FAILED and last.error == "x"
    poison = outcome_for_result(
        running(reprocess=99), sq.JobResult.reschedule_at(NOW), sq.Fixed(1), 100
    )
    assert poison.status == JobStatus.BAD_JOB and (poison.error or "").startswith("poison job")


def test_delays_follow_the_backoff_and_stay_storable() -> None:
    failed = outcome_for_result(running(), sq.JobResult.failed(), sq.Fixed(30), 100)
    assert failed.delay == 30 and failed.error == "failed"
    snoozed = outcome_for_result(running(), sq.JobResult.snooze(timedelta(days=1)), sq.Fixed(1), 1)
    assert snoozed.delay == 86400
    huge = sq.Fixed(timedelta(days=999_999_999))
    assert outcome_for_result(running(), sq.JobResult.failed(), huge, 100).delay == MAX_DELAY
    assert clamp_delay(-5) == 0 and clamp_delay(float("inf")) == MAX_DELAY
    assert sq.Exponential(base=1, factor=10, max_delay=60).delay(10_000) == timedelta(seconds=60)


def test_a_shutdown_gives_the_attempt_back_at_once() -> None:
    outcome = outcome_for_shutdown(running())
    assert (outcome.status, outcome.refund, outcome.reprocess, outcome.delay) == (
        JobStatus.PENDING,
        1,
        0,
        0,
    )


def test_a_claim_asks_each_queue_for_what_it_can_start() -> None:
    queues, limits, full = plan_claim(10, {"a": 4, "b": 50, "c": 0})
    assert (queues, limits, full) == (["a", "b"], [4, 10], {"c"})
    assert plan_claim(0, {"a": 4}) == ([], [], {"a"})


def test_a_claim_is_saturated_when_permits_not_the_backlog_bound_it() -> None:
    assert claim_was_saturated(["a"] * 5, ["a", "b"], [5, 5], 10)  # a had no more room
    assert claim_was_saturated(["a", "b"], ["a", "b"], [5, 5], 2)  # the total was reached
    assert not claim_was_saturated(["a", "b"], ["a", "b"], [5, 5], 10)  # the backlog ran dry


def test_the_notify_payload_names_the_queues_or_any() -> None:
    assert notify_payload({"b", "a"}) == "a\nb"
    assert notify_payload({"x" * 8000}) == ""  # too long for NOTIFY: any queue
    assert notify_payload({"a\nb"}) == ""  # a name that would split: any queue


def test_error_texts_are_storable_and_say_what_happened() -> None:
    assert storable_error("a\x00b") == "a\\x00b"
    assert storable_error("\ud800") == "\\ud800"
    cut = storable_error("e" * 20_000)
    assert cut is not None and len(cut) <= MAX_ERROR_CHARS + 20 and cut.endswith("more]")
    assert storable_error(None) is None
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        text = describe_error(exc)
    assert text.startswith("ValueError: bad input (at ") and "test_pure.py" in text
    lost = psycopg.OperationalError("connection refused\n\tIs the server running?")
    assert describe(lost) == "database unreachable (connection refused)"


def test_the_column_list_generates_consistent_statements() -> None:
    sources = columns.SOURCES
    single = columns.insert_values()
    assert all(f"%({c.name})s" in single for c in sources)
    batch = columns.insert_select()
    assert batch.count("%s::") == len(sources)
    assert columns.read_list().split(", ") == [c.name for c in columns.READ]
    assert "data::text" in columns.read_list(claimed=True)
    assert "scheduled" not in columns.MOVED_COLUMNS  # only the live table has it


def test_a_write_is_fast_only_when_every_queue_it_touches_is() -> None:
    fast = FastQueues()
    assert not fast.all_fast(["a"])
    fast.names = frozenset({"a", "b"})
    assert fast.all_fast(["a"]) and fast.all_fast(["a", "b", "a"])
    assert not fast.all_fast(["a", "c"])  # one durable queue's job makes it durable
    assert not fast.all_fast([None]) and not fast.all_fast(["a", None])  # unknown: durable
    assert not fast.all_fast([])  # nothing to write


def test_a_durability_is_one_of_the_modes() -> None:
    assert check_durability("fast") is Durability.FAST
    assert check_durability(Durability.DURABLE) is Durability.DURABLE
    for bad in ("slow", "FAST", "", None, True, 0):
        with pytest.raises(InvalidArgumentError, match="'durable' or 'fast'"):
            check_durability(bad)
