"""The slots of a schedule, without a database: which are due, which a round enqueues
under each `missed` policy, cron in a timezone across a DST change, and the checks of a
schedule's definition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import simplequeue as sq
from simplequeue.schedules import MAX_MISSED_SLOTS

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def job() -> sq.Job:
    return sq.Job("reports", {"kind": "daily"}, priority=3, max_attempts=5)


def every(seconds: float, missed: sq.schedules.Missed = "skip") -> sq.Schedule:
    return sq.Schedule.define("s", job(), every=seconds, missed=missed)


def test_every_slots_are_multiples_of_the_interval_since_the_epoch() -> None:
    schedule = every(300)
    assert schedule.next_after(T0 + timedelta(seconds=1)) == T0 + timedelta(minutes=5)
    assert schedule.next_after(T0) == T0 + timedelta(minutes=5)  # strictly after
    plan = schedule.plan(T0 - timedelta(seconds=1), T0 + timedelta(seconds=2))
    assert plan is not None
    assert plan.slots == (T0,) and plan.last_slot == T0 and plan.missed == 0


def test_nothing_is_due_until_the_next_slot() -> None:
    schedule = every(60)
    assert schedule.plan(T0, T0 + timedelta(seconds=59)) is None
    assert schedule.plan(T0, T0) is None


def test_a_slot_late_by_less_than_its_period_is_on_time_under_every_policy() -> None:
    for missed in ("skip", "latest", "all"):
        plan = every(3600, missed).plan(T0 - timedelta(hours=1), T0 + timedelta(seconds=50))
        assert plan is not None and plan.slots == (T0,), missed


@pytest.mark.parametrize(
    ("missed", "expected"),
    [
        ("skip", ()),
        ("latest", (T0,)),
        ("all", tuple(T0 - timedelta(hours=h) for h in (4, 3, 2, 1, 0))),
    ],
)
def test_after_an_outage(missed: sq.schedules.Missed, expected: tuple[datetime, ...]) -> None:
    """Hourly, down from 07:30 to 12:05: five slots missed, the newest 5 minutes late
    (past the minute of grace)."""
    plan = every(3600, missed).plan(T0 - timedelta(hours=4, minutes=30), T0 + timedelta(minutes=5))
    assert plan is not None
    assert plan.slots == expected
    assert plan.last_slot == T0  # whatever was enqueued, every slot up to now is behind
    assert plan.missed == 5 - len(expected)


def test_skip_still_enqueues_the_slots_within_the_grace() -> None:
    """every 2 s, a 4 s gap (a leader failing over): the slots within 5 s are not missed."""
    plan = every(2).plan(T0 - timedelta(seconds=5), T0 + timedelta(seconds=0.5))
    assert plan is not None
    assert plan.slots == (T0 - timedelta(seconds=4), T0 - timedelta(seconds=2), T0)


def test_all_is_bounded() -> None:
    plan = every(1, "all").plan(T0 - timedelta(days=1), T0)
    assert plan is not None
    assert len(plan.slots) == MAX_MISSED_SLOTS
    assert plan.slots[-1] == T0 and plan.slots[0] == T0 - timedelta(seconds=MAX_MISSED_SLOTS - 1)
    assert plan.last_slot == T0 and plan.missed >= 1


def test_cron_in_a_timezone_across_a_daylight_saving_change() -> None:
    pytest.importorskip("croniter")
    paris = sq.Schedule.define("s", job(), cron="30 2 * * *", timezone="Europe/Paris", missed="all")
    # 2030-03-31: 02:30 does not exist in Paris (02:00 -> 03:00); the day before it does
    before = datetime(2030, 3, 30, 0, 0, tzinfo=ZoneInfo("Europe/Paris"))
    after = datetime(2030, 4, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    plan = paris.plan(before.astimezone(UTC), after.astimezone(UTC))
    assert plan is not None
    local = [slot.astimezone(ZoneInfo("Europe/Paris")) for slot in plan.slots]
    assert [s.date().day for s in local] == [30, 31, 1]  # one a day, the gap day too
    assert local[0] == datetime(2030, 3, 30, 2, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert local[-1] == datetime(2030, 4, 1, 2, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert all(slot.tzinfo is not None and slot.utcoffset() == timedelta(0) for slot in plan.slots)
    assert paris.next_after(after.astimezone(UTC)) == datetime(
        2030, 4, 2, 2, 30, tzinfo=ZoneInfo("Europe/Paris")
    )


def test_a_wall_time_the_autumn_change_repeats_is_one_slot() -> None:
    pytest.importorskip("croniter")
    paris = sq.Schedule.define("s", job(), cron="30 2 * * *", timezone="Europe/Paris", missed="all")
    before = datetime(2030, 10, 26, 0, 0, tzinfo=ZoneInfo("Europe/Paris"))
    after = datetime(2030, 10, 28, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    plan = paris.plan(before.astimezone(UTC), after.astimezone(UTC))
    assert plan is not None
    local = [slot.astimezone(ZoneInfo("Europe/Paris")) for slot in plan.slots]
    assert [(s.day, s.hour, s.minute) for s in local] == [(26, 2, 30), (27, 2, 30), (28, 2, 30)]


def test_each_slot_gets_a_new_job_copied_from_the_template() -> None:
    template = job()
    schedule = sq.Schedule.define("s", template, every=60)
    first, second = schedule.job_for(T0), schedule.job_for(T0 + timedelta(minutes=1))
    assert first.id != second.id != template.id
    assert (first.queue, first.data, first.priority, first.max_attempts) == (
        "reports",
        {"kind": "daily"},
        3,
        5,
    )


def test_a_callable_is_given_the_slot_in_the_schedules_timezone() -> None:
    pytest.importorskip("croniter")
    seen: list[datetime] = []

    def make(slot: datetime) -> sq.Job:
        seen.append(slot)
        return sq.Job("reports", {"slot": slot.isoformat()})

    schedule = sq.Schedule.define("s", make, cron="0 9 * * *", timezone="America/New_York")
    made = schedule.job_for(datetime(2030, 6, 1, 13, 0, tzinfo=UTC))
    assert seen == [datetime(2030, 6, 1, 9, 0, tzinfo=ZoneInfo("America/New_York"))]
    assert made.data == {"slot": "2030-06-01T09:00:00-04:00"}
    no_argument = sq.Schedule.define("t", lambda: sq.Job("reports", {}), every=60)
    assert no_argument.job_for(T0).queue == "reports"


def test_a_callable_that_returns_no_job_is_an_error() -> None:
    schedule = sq.Schedule.define("s", lambda slot: {"not": "a job"}, every=60)  # type: ignore[arg-type,return-value]
    with pytest.raises(sq.InvalidArgumentError, match="returned dict, not a Job"):
        schedule.job_for(T0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of cron= and every="),
        ({"cron": "* * * * *", "every": 60}, "exactly one of cron= and every="),
        ({"every": 0.5}, "1 second or more"),
        ({"every": -1}, "more than zero"),
        ({"every": float("nan")}, "finite"),
        ({"every": "60"}, "seconds"),
        ({"every": 10**9}, "at most"),
        ({"every": 60, "timezone": "Europe/Paris"}, "cron= only"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"cron": "* * * * *", "timezone": ""}, "timezone must be a name"),
        ({"cron": "not cron"}, "not a cron expression of five fields"),
        ({"cron": "61 * * * *"}, "not a valid cron expression"),
        ({"cron": "*/5 * * * * *"}, "five fields"),
        ({"cron": "0 0 31 2 *"}, "has no slot from now on"),
        ({"cron": "@daily", "timezone": "localtime"}, "unknown timezone"),
        ({"cron": ""}, "cron must be a cron expression"),
        ({"every": 60, "missed": "never"}, "missed must be one of skip, latest, all"),
    ],
)
def test_bad_definitions_are_refused(kwargs: dict[str, object], message: str) -> None:
    if "cron" in kwargs:
        pytest.importorskip("croniter")
    with pytest.raises(sq.InvalidArgumentError, match=message):
        sq.Schedule.define("s", job(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "source", "message"),
    [
        ("", job(), "non-empty"),
        ("x" * 201, job(), "limit is 200"),
        ("s", "reports", "job must be a Job or a callable"),
        ("s", lambda a, b: job(), "takes the slot's time or nothing"),
        ("s", sq.Job("reports", {}, run_at=T0), "its Job has a run_at"),
    ],
)
def test_bad_names_and_jobs_are_refused(name: str, source: object, message: str) -> None:
    with pytest.raises(sq.InvalidArgumentError, match=message):
        sq.Schedule.define(name, source, every=60)  # type: ignore[arg-type]


def test_a_callable_that_exits_raises_an_error_the_scheduler_survives() -> None:
    def leaves() -> sq.Job:
        raise SystemExit(3)

    with pytest.raises(RuntimeError, match="SystemExit"):
        sq.Schedule.define("s", leaves, every=60).job_for(T0)


def test_one_object_returned_every_time_makes_a_new_job_every_time() -> None:
    shared = job()
    schedule = sq.Schedule.define("s", lambda: shared, every=60)
    first, second = schedule.job_for(T0), schedule.job_for(T0 + timedelta(minutes=1))
    assert len({first.id, second.id, shared.id}) == 3 and first.data == shared.data
