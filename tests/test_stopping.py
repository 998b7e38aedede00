"""Handlers are told when their job is no longer theirs: `job.stopping`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import simplequeue as sq
from tests.conftest import FAST, count, eventually


async def test_a_signal_set_from_another_thread_wakes_an_async_waiter() -> None:
    signal = sq.StopSignal()
    assert not signal.is_set() and not signal.wait_sync(0.01)
    waiter = asyncio.create_task(signal.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    threading.Thread(target=signal.set, args=(sq.StopReason.LOST,)).start()
    assert await asyncio.wait_for(waiter, 5) == sq.StopReason.LOST
    signal.set(sq.StopReason.SHUTDOWN)  # the first reason stays
    assert signal.reason == sq.StopReason.LOST and signal.wait_sync(0)
    assert await signal.wait() == sq.StopReason.LOST


async def test_an_async_handler_hears_that_its_job_was_cancelled(dsn: str) -> None:
    heard: list[str] = []
    started = asyncio.Event()

    class Long(sq.Handler):
        QUEUE = "long"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            started.set()
            heard.append(await asyncio.wait_for(job.stopping.wait(), 30))

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Long())
        await queue.start()
        job_id = await queue.insert_job(sq.Job("long", {}))
        assert job_id is not None
        await asyncio.wait_for(started.wait(), 10)
        assert await queue.cancel_job(job_id)
        await eventually(lambda: heard == [sq.StopReason.LOST], timeout=10)
        await eventually(lambda: queue.stats().running == 0, timeout=10)
        assert queue.stats().lost_runs == 1
    assert count(dsn, "id = %s AND status = 'cancelled'", [job_id]) == 1


async def test_a_sync_handler_hears_that_the_worker_stops_and_finishes_early(dsn: str) -> None:
    heard: list[Any] = []
    started = threading.Event()

    class Patient(sq.Handler):
        QUEUE = "patient"

        def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            started.set()
            heard.append((job.stopping.wait_sync(30), job.stopping.reason))

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Patient())
        await queue.start()
        job_id = await queue.insert_job(sq.Job("patient", {}))
        assert job_id is not None
        await asyncio.to_thread(started.wait, 10)
        began = time.monotonic()
        await queue.stop(timeout=20)
        took = time.monotonic() - began
    assert heard == [(True, sq.StopReason.SHUTDOWN)]
    assert took < 5, f"the stop waited {took:.1f}s for a handler told to stop"
    # it returned within the stop's timeout: its result stands
    assert count(dsn, "id = %s AND status = 'completed'", [job_id]) == 1


async def test_a_sync_handler_past_its_timeout_hears_it_and_can_give_up(dsn: str) -> None:
    heard: list[Any] = []

    class Slow(sq.Handler):
        QUEUE = "slow"
        timeout = 0.2

        def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            heard.append((job.stopping.wait_sync(30), job.stopping.reason, time.monotonic()))

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Slow())
        await queue.start()
        began = time.monotonic()
        job_id = await queue.insert_job(sq.Job("slow", {}, max_attempts=1))
        assert job_id is not None
        await eventually(lambda: len(heard) == 1, timeout=10)
        done = await queue.wait_for_job(job_id, timeout=10)
    woke, reason, at = heard[0]
    assert woke and reason == sq.StopReason.TIMEOUT and at - began < 5
    assert done.status is sq.JobStatus.FAILED and "timed out" in (done.last_error or "")


async def test_a_job_claimed_as_the_stop_begins_hears_it_too(dsn: str) -> None:
    """The stop tells the runs it knows of, and every run tracked after it: a claim that
    was under way when the stop began starts a job that must hear it as well."""
    from simplequeue.runtime.heartbeat import Heartbeater
    from simplequeue.store import Store

    heartbeats = Heartbeater(lambda: None, Store("simplequeue"), 60)  # type: ignore[arg-type,return-value]
    before, after = sq.Job("q", 1), sq.Job("q", 2)
    heartbeats.track(before)
    heartbeats.signal_shutdown()
    heartbeats.track(after)
    assert before.stopping.reason == after.stopping.reason == sq.StopReason.SHUTDOWN


async def test_a_wait_given_up_leaves_nothing_behind() -> None:
    signal = sq.StopSignal()
    for _ in range(100):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(signal.wait(), 0.001)
    assert signal.waiting == 0
    waiter = asyncio.create_task(signal.wait())
    await asyncio.sleep(0)
    signal.set(sq.StopReason.LOST)
    assert await asyncio.wait_for(waiter, 5) == sq.StopReason.LOST


def test_a_jobs_signal_is_the_same_whichever_thread_asks_first() -> None:
    """The signal is made when first asked for: threads asking at once share one, so a
    stop set from one is seen from the others."""
    import threading

    for _ in range(50):
        job = sq.Job("q", {})
        start = threading.Barrier(8)
        seen: list[sq.StopSignal] = []

        def ask(
            job: sq.Job = job, start: threading.Barrier = start, seen: list[sq.StopSignal] = seen
        ) -> None:
            start.wait()
            seen.append(job.stopping)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(signal) for signal in seen}) == 1
        seen[0].set(sq.StopReason.SHUTDOWN)
        assert job.stopping.is_set() and job.stopping.reason == sq.StopReason.SHUTDOWN
