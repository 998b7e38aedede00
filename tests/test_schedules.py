"""Schedules on a real PostgreSQL: each slot enqueued once by many workers (elected or
not), registered before or after start, paused and resumed, what a fleet that was down
enqueues, and the faults of a schedule's own code or of the database's refusals."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest

import simplequeue as sq
from tests.conftest import FAST, eventually, query

QUEUE = "ticks"


def tick(slot: datetime) -> sq.Job:
    return sq.Job(QUEUE, {"slot": slot.isoformat()})


def slots(dsn: str) -> list[datetime]:
    """The slots of the jobs enqueued so far, in order (no handler runs them)."""
    rows = query(dsn, "SELECT data->>'slot' FROM simplequeue.jobs WHERE queue = %s", [QUEUE])
    return sorted(datetime.fromisoformat(row[0]) for row in rows)


def consecutive(found: list[datetime], step: timedelta = timedelta(seconds=1)) -> bool:
    return all(b - a == step for a, b in itertools.pairwise(found))


@asynccontextmanager
async def fleet(dsn: str, n: int, **settings: Any) -> AsyncIterator[list[sq.SimpleQueue]]:
    async with AsyncExitStack() as stack:
        queues = []
        for _ in range(n):
            queue = await stack.enter_async_context(
                sq.SimpleQueue.from_url(dsn, **{**FAST, "leader_ttl": 1.0, **settings})
            )
            queues.append(queue)
        await queues[0].declare_queues([QUEUE])
        yield queues


@pytest.mark.slow
@pytest.mark.parametrize("election", [True, False], ids=["elected", "every-worker-enqueues"])
async def test_each_slot_is_enqueued_once_however_many_workers_register_it(
    dsn: str, election: bool
) -> None:
    async with fleet(dsn, 3, leader_election=election) as queues:
        for queue in queues:
            queue.schedule("tick", tick, every=1, missed="all")
            await queue.start()
        await eventually(lambda: len(slots(dsn)) >= 4, timeout=15)
        await asyncio.sleep(1.5)
    found = slots(dsn)
    assert len(found) == len(set(found)), f"a slot enqueued twice: {found}"
    assert consecutive(found), found
    [info] = await _listed(dsn)
    assert info.enqueued == len(found)
    assert info.queue == QUEUE and info.every == timedelta(seconds=1) and info.cron is None
    assert info.last_slot >= found[-1] and info.next_slot is not None
    assert info.last_job_id is not None and info.last_enqueued_at is not None


async def _listed(dsn: str) -> list[sq.ScheduleInfo]:
    async with sq.SimpleQueue.from_url(dsn) as reader:
        return await reader.list_schedules()


async def test_a_schedule_registered_after_start_is_written_and_run(dsn: str) -> None:
    async with fleet(dsn, 1) as (queue,):
        await queue.start()
        assert await queue.list_schedules() == []
        registered = queue.schedule("late", sq.Job(QUEUE, {"n": 1}), every=1)
        assert queue.schedules == [registered]
        await eventually(lambda: query(dsn, "SELECT count(*) FROM simplequeue.jobs")[0][0] >= 2)
        [info] = await queue.list_schedules()
        assert (info.name, info.queue, info.missed, info.paused) == ("late", QUEUE, "skip", False)
        # registering it again with another rule replaces it, in this process and the table
        queue.schedule("late", sq.Job(QUEUE, {"n": 2}), every=3600)
        await eventually(lambda: _rule_is(dsn, "late", timedelta(hours=1)))
        assert [s.every for s in queue.schedules] == [timedelta(hours=1)]


async def _rule_is(dsn: str, name: str, every: timedelta) -> bool:
    rows = query(dsn, "SELECT every FROM simplequeue.schedules WHERE name = %s", [name])
    return bool(rows) and rows[0][0] == every


@pytest.mark.slow
async def test_a_paused_schedule_enqueues_nothing_and_resumes_without_a_backlog(dsn: str) -> None:
    async with fleet(dsn, 2) as queues:
        for queue in queues:
            queue.schedule("tick", tick, every=1, missed="all")
            await queue.start()
        await eventually(lambda: len(slots(dsn)) >= 1)
        with sq.SyncQueue.from_url(dsn) as operator:
            assert operator.pause_schedule("tick") is True
            paused_at = len(slots(dsn))
            [info] = operator.list_schedules()
            assert info.paused and info.paused_at is not None
            await asyncio.sleep(3)
            assert len(slots(dsn)) <= paused_at + 1  # a round under way when it paused
            before = slots(dsn)
            assert operator.resume_schedule("tick") is True
            await eventually(lambda: len(slots(dsn)) >= len(before) + 2, timeout=10)
            resumed = slots(dsn)[len(before) :]
            # the slots that passed while paused were not enqueued afterwards
            assert resumed[0] - before[-1] >= timedelta(seconds=3), (before, resumed)
            assert consecutive(resumed)
            assert operator.pause_schedule("nope") is False
            assert operator.resume_schedule("nope") is False


async def test_missed_all_enqueues_each_slot_the_fleet_missed_while_down(dsn: str) -> None:
    async with fleet(dsn, 1) as (queue,):
        queue.schedule("tick", tick, every=1, missed="all")
        await queue.start()
        await eventually(lambda: len(slots(dsn)) >= 1)
    query(dsn, "DELETE FROM simplequeue.jobs")
    # the fleet was down for 20 s
    query(dsn, "UPDATE simplequeue.schedules SET last_slot = last_slot - interval '20 seconds'")
    async with fleet(dsn, 1) as (queue,):
        queue.schedule("tick", tick, every=1, missed="all")
        await queue.start()
        await eventually(lambda: len(slots(dsn)) >= 20)
    found = slots(dsn)
    assert len(found) == len(set(found)) and consecutive(found) and len(found) >= 20


async def test_missed_skip_resumes_at_the_current_slot(dsn: str) -> None:
    async with fleet(dsn, 1) as (queue,):
        queue.schedule("tick", tick, every=1)
        await queue.start()
        await eventually(lambda: len(slots(dsn)) >= 1)
    query(dsn, "DELETE FROM simplequeue.jobs")
    query(dsn, "UPDATE simplequeue.schedules SET last_slot = last_slot - interval '1 hour'")
    async with fleet(dsn, 1) as (queue,):
        queue.schedule("tick", tick, every=1)
        await queue.start()
        await eventually(lambda: len(slots(dsn)) >= 1)
        first = slots(dsn)[0]
    (now,) = query(dsn, "SELECT now()")[0]
    assert now - first < timedelta(seconds=10), "an hour-old slot was enqueued"


async def test_a_schedule_whose_code_fails_passes_its_slot_and_goes_on(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="simplequeue.scheduler")
    calls: list[datetime] = []

    def flaky(slot: datetime) -> sq.Job:
        calls.append(slot)
        if len(calls) == 1:
            raise RuntimeError("report template missing")
        return tick(slot)

    async with fleet(dsn, 1) as (queue,):
        queue.schedule("flaky", flaky, every=1)
        await queue.start()
        await eventually(lambda: len(slots(dsn)) >= 2, timeout=10)
    assert "report template missing" in caplog.text
    assert calls[0] not in slots(dsn)  # its slot passed over, the next ones enqueued


async def test_a_slot_the_database_refuses_is_enqueued_once_the_cause_is_gone(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """strict_queues refuses the job of an undeclared queue: the slot is not taken, so it
    is enqueued once the queue is declared (missed="all": not lost meanwhile)."""
    caplog.set_level(logging.ERROR, logger="simplequeue.scheduler")
    async with sq.SimpleQueue.from_url(dsn, **FAST, strict_queues=True) as queue:
        queue.schedule(
            "strict",
            lambda slot: sq.Job("undeclared", {"slot": slot.isoformat()}),
            every=1,
            missed="all",
        )
        await queue.start()
        await eventually(lambda: "no worker handles queue(s) 'undeclared'" in caplog.text)
        await asyncio.sleep(1.5)
        assert caplog.text.count("could not enqueue") == 1  # said once, not every second
        assert query(dsn, "SELECT count(*) FROM simplequeue.jobs")[0][0] == 0
        (first_slot,) = query(dsn, "SELECT last_slot FROM simplequeue.schedules")[0]
        await queue.declare_queues(["undeclared"])
        rows = await eventually(
            lambda: query(dsn, "SELECT data->>'slot' FROM simplequeue.jobs ORDER BY 1") or None
        )
    enqueued = sorted(datetime.fromisoformat(row[0]) for row in rows)
    assert enqueued[0] - first_slot <= timedelta(seconds=1)  # the refused slots were kept
    assert consecutive(enqueued)


async def test_bad_schedules_are_refused_and_register_nothing(dsn: str) -> None:
    async with fleet(dsn, 1) as (queue,):
        with pytest.raises(sq.InvalidArgumentError, match="exactly one of cron= and every="):
            queue.schedule("both", tick, cron="* * * * *", every=60)
        with pytest.raises(sq.InvalidArgumentError, match="1 second or more"):
            queue.schedule("fast", tick, every=timedelta(milliseconds=10))
        with pytest.raises(sq.InvalidArgumentError, match="job must be a Job or a callable"):
            queue.schedule("nojob", {"queue": QUEUE}, every=60)  # type: ignore[arg-type]
        assert queue.schedules == []
        await queue.start()
        await asyncio.sleep(1.2)
        assert await queue.list_schedules() == []


async def test_an_operator_deletes_a_schedule_no_code_registers(dsn: str) -> None:
    async with fleet(dsn, 1) as (queue,):
        queue.schedule("old", tick, every=3600)
        await queue.start()
        await eventually(lambda: query(dsn, "SELECT count(*) FROM simplequeue.schedules")[0][0])
    async with sq.SimpleQueue.from_url(dsn) as operator:
        assert await operator.delete_schedule("old") is True
        assert await operator.delete_schedule("old") is False
        assert await operator.list_schedules() == []
        with pytest.raises(sq.InvalidArgumentError):
            await operator.delete_schedule("")


def test_the_example_of_the_schedules_page(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_docs_examples import DOCS, run, url

    monkeypatch.setenv("DATABASE_URL", url(dsn))
    run(["schedules"], DOCS / "schedules.md")
    printed = capsys.readouterr().out.split("\n")
    assert any(line.startswith("nightly-report ") for line in printed)
    heartbeat = next(line for line in printed if line.startswith("heartbeat "))
    assert int(heartbeat.split()[-1]) >= 2  # a job per second, for three seconds
    rows = query(dsn, "SELECT count(*) FROM simplequeue.jobs WHERE queue = 'reports'")
    assert rows[0][0] >= 2
