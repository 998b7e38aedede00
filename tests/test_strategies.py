"""The strategy tier: what it hands out is checked, and a job that waited for it runs only
if it is still this worker's."""

from __future__ import annotations

import asyncio
from typing import Any

import simplequeue as sq
from tests.conftest import FAST, count, eventually, query


class Effect(sq.Handler):
    """Counts its side effects."""

    QUEUE = "effect"

    def __init__(self, hold: float = 0.0) -> None:
        self.effects: list[Any] = []
        self.hold = hold

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        self.effects.append(job.data)
        await asyncio.sleep(self.hold)


class NoPermit:
    async def acquire(self, job: sq.Job) -> Any:
        return None  # forgot to return a Permit


async def test_a_strategy_that_hands_out_no_permit_fails_before_the_handler(dsn: str) -> None:
    handler = Effect()
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(handler)
        queue.set_queue_strategy("effect", NoPermit())
        await queue.start()
        await queue.insert_job(sq.Job("effect", "x", max_attempts=2))
        await eventually(lambda: count(dsn, "status = 'failed'") == 1)
    assert handler.effects == []  # never ran, so never repeated
    ((error,),) = query(dsn, "SELECT last_error FROM simplequeue.jobs")
    assert "NoPermit.acquire() returned NoneType, not a Permit" in error


async def test_a_job_cancelled_while_it_waits_for_its_slot_does_not_run(dsn: str) -> None:
    handler = Effect(hold=1.0)
    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "heartbeat_interval": 30}) as queue:
        queue.register_handler(handler)
        queue.set_queue_strategy("effect", sq.ConcurrencyLimit(1))
        await queue.start()
        first = await queue.insert_job(sq.Job("effect", "first"))
        await eventually(lambda: handler.effects == ["first"])
        waiting = await queue.insert_job(sq.Job("effect", "waiting"))
        await eventually(lambda: count(dsn, "status = 'running'") == 2)  # claimed, waits
        assert waiting is not None and await queue.cancel_job(waiting)
        await eventually(lambda: count(dsn, "id = %s AND status = 'completed'", [first]))
        await asyncio.sleep(0.3)
    assert handler.effects == ["first"]
    assert count(dsn, "id = %s AND status = 'cancelled'", [waiting]) == 1
