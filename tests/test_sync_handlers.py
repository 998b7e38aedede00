"""Sync handlers run in threads, and a thread cannot be interrupted: the limits hold until
it really returns, and one queue's stuck threads never fail another queue's jobs."""

from __future__ import annotations

import asyncio
import threading
import time

import simplequeue as sq
from tests.conftest import FAST, count, eventually


class Blocking(sq.Handler):
    """Blocks its thread past its timeout, and counts how many block at once."""

    QUEUE = "blocking"
    timeout = 0.2

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.now = self.most = self.runs = 0
        self.release = threading.Event()

    def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        with self.lock:
            self.now += 1
            self.runs += 1
            self.most = max(self.most, self.now)
        try:
            self.release.wait(self.seconds)
        finally:
            with self.lock:
                self.now -= 1


async def test_queue_permits_hold_until_the_thread_returns(dsn: str) -> None:
    handler = Blocking(1.0)
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(handler)
        queue.set_queue_permits("blocking", 2)
        await queue.start()
        await queue.insert_jobs([sq.Job("blocking", n, max_attempts=1) for n in range(8)])
        await eventually(lambda: count(dsn, "status = 'failed'") == 8, timeout=30)
        await eventually(lambda: handler.runs == 8 and handler.now == 0, timeout=10)
    assert handler.most == 2, f"{handler.most} threads of a 2-permit queue ran at once"


async def test_a_strategy_permit_holds_until_the_thread_returns(dsn: str) -> None:
    handler = Blocking(1.0)
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(handler)
        queue.set_queue_strategy("blocking", sq.ConcurrencyLimit(1))
        await queue.start()
        await queue.insert_jobs([sq.Job("blocking", n, max_attempts=1) for n in range(3)])
        await eventually(lambda: handler.runs == 3 and handler.now == 0, timeout=30)
    assert handler.most == 1


async def test_stuck_threads_of_one_queue_never_fail_another_queues_jobs(dsn: str) -> None:
    hung = Blocking(30.0)
    done: list[int] = []

    class Healthy(sq.Handler):
        QUEUE = "healthy"
        timeout = 2.0

        def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            time.sleep(0.01)
            done.append(job.data)

    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "global_permits": 60}) as queue:
        queue.register_handler(hung)
        queue.register_handler(Healthy())
        await queue.start()
        await queue.insert_jobs([sq.Job("blocking", n, max_attempts=1) for n in range(40)])
        await eventually(lambda: hung.now == 40, timeout=10)
        await queue.insert_jobs([sq.Job("healthy", n) for n in range(5)])
        try:
            await eventually(lambda: count(dsn, "queue = 'healthy' AND status <> 'pending'") == 5)
            await eventually(lambda: count(dsn, "queue = 'healthy' AND status = 'completed'") == 5)
            assert sorted(done) == list(range(5))
            assert count(dsn, "queue = 'healthy' AND last_error IS NOT NULL") == 0
        finally:
            hung.release.set()
            await asyncio.sleep(0.1)


async def test_a_stop_does_not_wait_for_threads_past_their_timeout(dsn: str) -> None:
    handler = Blocking(30.0)
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(handler)
        await queue.start()
        await queue.insert_job(sq.Job("blocking", 0, max_attempts=1))
        await eventually(lambda: count(dsn, "status = 'failed'") == 1, timeout=10)
        started = time.monotonic()
        await queue.stop(timeout=10)
        assert time.monotonic() - started < 2
    handler.release.set()
