"""Schedules at their edges: crons without slots, callables that return one object, are
async, slow or fail for one slot, inserts refused for a while, rules changed or disagreed
on by the fleet, and time zones. Each test holds a promise of docs/schedules.md."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import simplequeue as sq
from tests.conftest import FAST, eventually, query

# They wait for real slots, a minute of them in all: make test-slow runs them.
pytestmark = pytest.mark.slow

QUEUE = "ticks"


def tick(slot: datetime) -> sq.Job:
    return sq.Job(QUEUE, {"slot": slot.isoformat()})


def n_jobs(dsn: str, queue: str = QUEUE) -> int:
    return int(query(dsn, "SELECT count(*) FROM simplequeue.jobs WHERE queue = %s", [queue])[0][0])


def slots(dsn: str, queue: str = QUEUE) -> list[datetime]:
    rows = query(dsn, "SELECT data->>'slot' FROM simplequeue.jobs WHERE queue = %s", [queue])
    return sorted(datetime.fromisoformat(row[0]) for row in rows)


def gaps(found: list[datetime], step: timedelta = timedelta(seconds=1)) -> list[Any]:
    return [(a, b) for a, b in itertools.pairwise(found) if b - a != step]


@asynccontextmanager
async def worker(dsn: str, **settings: Any) -> AsyncIterator[sq.SimpleQueue]:
    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "leader_ttl": 1.0, **settings}) as q:
        await q.declare_queues([QUEUE])
        yield q


# -- 1. a cron expression croniter calls valid but that has no slot stops the scheduler ---


@pytest.mark.parametrize(
    "cron",
    [
        "0 0 31 2 *",  # February 31st: is_valid() says yes, get_next() finds no date
        "0 0 1 1 * 0 2099",  # a year field: no slot before 2099, get_prev() finds none
        "0 0 1 1 * 0 2020",  # a year field in the past: no next slot
    ],
)
async def test_a_cron_without_slots_does_not_stop_the_other_schedules(dsn: str, cron: str) -> None:
    """A cron with no slot (February 31st, a year field) is refused, and never stops the
    other schedules of the process."""
    async with worker(dsn) as queue:
        with contextlib.suppress(sq.InvalidArgumentError):  # refused up front: fine
            queue.schedule("impossible", tick, cron=cron)
        queue.schedule("healthy", tick, every=1)
        await queue.start()
        await asyncio.sleep(4)
        assert n_jobs(dsn) >= 2, (
            f"the cron {cron!r} stopped the healthy every=1 schedule of the same process"
        )


# -- 2. a callable returning the same Job object: later slots are silently lost ----------

SHARED = sq.Job(QUEUE, {"kind": "shared"})


async def test_a_callable_returning_the_same_job_object_enqueues_every_slot(dsn: str) -> None:
    """Each slot gets a new job, even when the callable returns one object every time (an
    insert of the same object in a transaction would be taken for a retry of it)."""
    async with worker(dsn) as queue:
        queue.schedule("shared", lambda: SHARED, every=1)
        await queue.start()
        await asyncio.sleep(4.5)
        [info] = await queue.list_schedules()
    assert n_jobs(dsn) >= 3, f"{n_jobs(dsn)} job(s) in 4.5 s of an every=1 schedule"
    assert info.enqueued >= 3


async def test_one_job_object_for_several_missed_slots_enqueues_each(dsn: str) -> None:
    """The same within one round: missed="all" after an outage, one object for each slot."""
    job = sq.Job(QUEUE, {"kind": "same"})
    async with worker(dsn) as queue:
        queue.schedule("same", lambda: job, every=1, missed="all")
        await queue.start()
        await eventually(lambda: query(dsn, "SELECT count(*) FROM simplequeue.schedules")[0][0])
        # the fleet was down for 10 s (as tests/test_schedules.py simulates an outage)
        query(dsn, "UPDATE simplequeue.schedules SET last_slot = last_slot - interval '10 s'")
        await asyncio.sleep(3)
    assert n_jobs(dsn) >= 10, f"{n_jobs(dsn)} job(s) for 10+ missed slots under missed='all'"


# -- 3. an async callable is accepted, then every slot is passed over ---------------------


async def make_job_async(slot: datetime) -> sq.Job:
    return tick(slot)


async def test_an_async_callable_is_refused_or_awaited(dsn: str) -> None:
    """An `async def` callable is awaited (or refused up front), never passed over."""
    async with worker(dsn) as queue:
        try:
            queue.schedule("async", make_job_async, every=1)
        except sq.InvalidArgumentError:
            return  # refused up front: fine
        await queue.start()
        await asyncio.sleep(3.5)
    assert n_jobs(dsn) >= 2, "an async callable was accepted, and every slot passed over"


# -- 4. "a job the database refuses is not lost": only with missed="all" ------------------


async def test_a_slot_the_database_refuses_is_not_lost_under_the_default_policy(
    dsn: str,
) -> None:
    """A slot whose insert is refused for longer than its grace is still enqueued once the
    cause is gone, under the default missed="skip": it was tried on time."""
    async with sq.SimpleQueue.from_url(dsn, **FAST, leader_ttl=1.0, strict_queues=True) as q:
        q.schedule("strict", lambda slot: sq.Job("undeclared", {"slot": slot.isoformat()}), every=1)
        await q.start()
        await eventually(lambda: query(dsn, "SELECT count(*) FROM simplequeue.schedules")[0][0])
        (first,) = query(dsn, "SELECT last_slot FROM simplequeue.schedules")[0]
        await asyncio.sleep(8)  # refused for 8 s (a missing grant, a queue not declared yet)
        assert n_jobs(dsn, "undeclared") == 0
        await q.declare_queues(["undeclared"])
        await eventually(lambda: n_jobs(dsn, "undeclared") > 0)
        await asyncio.sleep(1.5)
    enqueued = slots(dsn, "undeclared")
    assert enqueued[0] - first <= timedelta(seconds=1), (
        f"refused slots lost: first slot due after {first}, first enqueued {enqueued[0]}"
    )


# -- 5. a changed rule enqueues the slots of the new rule from before the change ----------


async def test_a_changed_rule_does_not_backfill_slots_from_before_the_change(dsn: str) -> None:
    """A changed rule starts at the change: a yearly report turned into a per-second one
    with missed="all" enqueues no slot of the new rule from before it was registered."""
    pytest.importorskip("croniter")
    async with worker(dsn) as queue:
        queue.schedule("report", tick, cron="0 0 1 1 *", missed="all")  # yearly
        await queue.start()
        await eventually(lambda: query(dsn, "SELECT count(*) FROM simplequeue.schedules")[0][0])
        # where the row stands once this year's slot was enqueued (Jan 1st, 00:00 UTC)
        query(
            dsn,
            "UPDATE simplequeue.schedules "
            "SET last_slot = date_trunc('year', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
        )
        await asyncio.sleep(1.5)
        assert n_jobs(dsn) == 0
        changed_at = datetime.now(UTC)
        queue.schedule("report", tick, cron=None, every=1, missed="all")  # the new rule
        await asyncio.sleep(3)
    early = [s for s in slots(dsn) if s < changed_at - timedelta(seconds=1)]
    assert not early, f"{len(early)} slot(s) of the new rule from before it was registered"


# -- 7. the schedule's callable runs on the worker's event loop ---------------------------


async def test_a_slow_schedule_callable_does_not_stall_the_worker(dsn: str) -> None:
    """A slow sync callable runs in a thread, like a sync handler: the worker's event loop
    (its claims, the lease, an embedded HTTP API) goes on meanwhile."""

    def slow(slot: datetime) -> sq.Job:
        time.sleep(1.5)
        return tick(slot)

    async with worker(dsn) as queue:
        queue.schedule("slow", slow, every=1)
        await queue.start()
        worst, last = 0.0, time.monotonic()
        deadline = last + 4
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            worst, last = max(worst, now - last), now
    assert worst < 0.5, f"the worker's event loop was blocked for {worst:.2f} s by a callable"


# -- 8. time zones --------------------------------------------------------------------------

PARIS = ZoneInfo("Europe/Paris")


def test_the_next_slot_is_never_a_repeated_wall_time_the_enqueuer_skips() -> None:
    """The next slot operators see is never the second time of a wall time the autumn
    change repeats (which is not a slot)."""
    pytest.importorskip("croniter")
    paris = sq.Schedule.define("s", tick, cron="30 2 * * *", timezone="Europe/Paris", missed="all")
    first = datetime(2030, 10, 27, 2, 30, tzinfo=PARIS)  # fold=0: +02:00
    announced = paris.next_after(first.astimezone(UTC)).astimezone(PARIS)
    plan = paris.plan(first.astimezone(UTC), datetime(2030, 10, 28, 12, tzinfo=UTC))
    assert plan is not None
    enqueued = plan.slots[0].astimezone(PARIS)
    assert announced == enqueued, f"next_slot says {announced}, the enqueuer's next is {enqueued}"


def test_the_timezone_must_be_the_same_on_every_host() -> None:
    """ "localtime" is refused: it is read from the host, so the slots would move with the
    host the leader runs on."""
    try:
        ZoneInfo("localtime")
    except Exception:
        pytest.skip("this host has no zoneinfo 'localtime'")
    pytest.importorskip("croniter")
    with pytest.raises(sq.InvalidArgumentError):
        sq.Schedule.define("s", tick, cron="30 2 * * *", timezone="localtime")


# -- 9. two processes registering one name differently --------------------------------------


async def test_the_listed_rule_is_the_rule_the_leader_enqueues(dsn: str) -> None:
    """During a rolling deploy two workers register one name with different rules: the
    listed rule is the one the leader enqueues by."""
    async with worker(dsn) as leader, worker(dsn) as other:
        leader.schedule("tick", tick, every=1, missed="all")
        await leader.start()
        await eventually(lambda: n_jobs(dsn) >= 1)
        other.schedule("tick", tick, every=3600)  # the new code, on a worker not leading
        await other.start()
        await asyncio.sleep(2)
        [info] = await other.list_schedules()
        before = n_jobs(dsn)
        await asyncio.sleep(2)
        running_every_second = n_jobs(dsn) > before
    assert not (running_every_second and info.every == timedelta(hours=1)), (
        f"listed as {info.every} ({info.missed}) while the leader enqueues every second"
    )


# -- 10. one slot the callable cannot build passes over every slot of the round ----------


async def test_one_bad_slot_does_not_pass_over_the_other_slots_of_its_round(dsn: str) -> None:
    """A slot whose job the callable cannot build is passed over alone: the other slots
    of its round are enqueued."""
    calls: list[datetime] = []

    def flaky(slot: datetime) -> sq.Job:
        calls.append(slot)
        if len(calls) == 1:
            raise RuntimeError("the first slot of the backlog has bad data")
        return tick(slot)

    async with worker(dsn) as queue:
        queue.schedule("backlog", tick, every=1, missed="all")
        await queue.start()
        await eventually(lambda: n_jobs(dsn) >= 1)
    # the fleet was down for 10 s: a backlog of 10 slots for missed="all"
    query(dsn, "DELETE FROM simplequeue.jobs")
    query(dsn, "UPDATE simplequeue.schedules SET last_slot = now() - interval '10 s'")
    async with worker(dsn) as queue:
        queue.schedule("backlog", flaky, every=1, missed="all")
        await queue.start()
        await asyncio.sleep(2.5)
    # 10 backlog slots, one of them bad: at least the 9 others are enqueued
    assert n_jobs(dsn) >= 9, (
        f"one slot raised; {n_jobs(dsn)} job(s) enqueued for a backlog of 10 and the slots since"
    )
