"""Schedules across four real worker processes, SIGKILLed and restarted around slot
boundaries (the leader first): every slot is enqueued, and none twice."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

import simplequeue as sq
from tests.conftest import WorkerProcess, eventually, query

pytestmark = pytest.mark.slow

TARGET = "tests.worker_app:scheduled"


def enqueued(dsn: str) -> list[datetime]:
    rows = query(dsn, "SELECT data->>'slot' FROM simplequeue.jobs WHERE queue = 'ticks'")
    return sorted(datetime.fromisoformat(row[0]) for row in rows)


def leader_pid(dsn: str) -> int | None:
    rows = query(
        dsn,
        "SELECT w.pid FROM simplequeue.leader AS l JOIN simplequeue.workers AS w "
        "ON w.id = l.worker_id WHERE l.name = 'maintenance' AND l.expires_at > now()",
    )
    return rows[0][0] if rows else None


async def test_each_slot_is_enqueued_once_while_workers_are_killed_around_slots(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    await queue.declare_queues(["ticks"])
    rng = random.Random()
    fleet = [workers(target=TARGET) for _ in range(4)]
    await eventually(lambda: len(enqueued(dsn)) >= 2, timeout=30)
    kills = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # just before or just after a slot (the slots are whole seconds)
        offset = rng.choice([0.93, 0.97, 0.02, 0.06])
        await asyncio.sleep((offset - time.time() % 1) % 1)
        pid = leader_pid(dsn)
        victims = [w for w in fleet if w.pid == pid] or [rng.choice(fleet)]
        victim = victims[0]
        victim.kill()
        kills += 1
        fleet.remove(victim)
        await asyncio.sleep(rng.uniform(0.0, 1.5))
        fleet.append(workers(target=TARGET))
    await eventually(lambda: len(enqueued(dsn)) >= 22, timeout=30)
    for worker in fleet:
        worker.terminate()
    found = enqueued(dsn)
    assert len(found) == len(set(found)), "a slot was enqueued twice"
    gaps = [(a, b) for a, b in itertools.pairwise(found) if b - a != timedelta(seconds=1)]
    assert not gaps, f"slots missing between {gaps}"
    [info] = await queue.list_schedules()
    assert info.enqueued == len(found) and kills >= 8


async def test_a_leader_failover_does_not_make_a_frequent_schedule_drop_slots(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    """Under missed="skip", the slots due while a dead leader's lease runs out (here
    leader_ttl=9: a failover of 6 to 12 s) are not missed: the grace covers a failover."""
    await queue.declare_queues(["ticks"])
    target = "tests.worker_app:scheduled_skip"
    first = workers("--leader-ttl", "9", target=target)
    await eventually(lambda: leader_pid(dsn) == first.pid and len(enqueued(dsn)) >= 2, timeout=30)
    second = workers("--leader-ttl", "9", target=target)
    await eventually(
        lambda: query(dsn, "SELECT 1 FROM simplequeue.workers WHERE pid = %s", [second.pid]),
        timeout=30,
    )
    await asyncio.sleep(1)
    first.kill()  # the leader dies
    await eventually(lambda: leader_pid(dsn) == second.pid, timeout=30)
    await asyncio.sleep(3)
    second.terminate()
    found = enqueued(dsn)
    assert len(found) == len(set(found))
    gaps = [(a, b) for a, b in itertools.pairwise(found) if b - a != timedelta(seconds=1)]
    assert not gaps, f"slots dropped during the failover: {gaps}"
