"""A sync handler receives a BlockingQueue: it inserts follow-up jobs, and reads and
cancels jobs, with plain calls; nothing it calls is dropped silently."""

from __future__ import annotations

import uuid
from typing import Any

import simplequeue as sq
from tests.conftest import FAST, count, eventually


async def test_a_sync_handler_inserts_follow_up_jobs_with_plain_calls(dsn: str) -> None:
    seen: list[Any] = []

    class Parent(sq.Handler):
        QUEUE = "parent"

        def process(self, queue: sq.BlockingQueue, job: sq.Job) -> None:
            assert isinstance(queue, sq.BlockingQueue) and queue.schema == "simplequeue"
            child = queue.insert_job(sq.Job("child", {"of": job.data}, unique_key="only"))
            again = queue.insert_job(sq.Job("child", {"of": "dup"}, unique_key="only"))
            many = queue.insert_jobs([sq.Job("child", {"n": n}) for n in range(3)])
            seen.append((child, again, len([m for m in many if m])))
            assert child is not None
            stored = queue.get_job(child)
            seen.append(stored.queue if stored else None)
            seen.append(queue.cancel_jobs_by_fingerprint("none-such"))

    class Child(sq.Handler):
        QUEUE = "child"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Parent())
        queue.register_handler(Child())
        await queue.start()
        parent = await queue.insert_job(sq.Job("parent", "p"))
        assert parent is not None
        done = await queue.wait_for_job(parent, timeout=10)
        await eventually(lambda: count(dsn, "queue = 'child' AND status = 'completed'") == 4)
    assert done.status is sq.JobStatus.COMPLETED, done.last_error
    (child, again, many), stored_queue, cancelled = seen
    assert isinstance(child, uuid.UUID) and again is None and many == 3
    assert (stored_queue, cancelled) == ("child", 0)


async def test_what_a_sync_call_raises_reaches_the_handler(dsn: str) -> None:
    class Careless(sq.Handler):
        QUEUE = "careless"

        def process(self, queue: sq.BlockingQueue, job: sq.Job) -> None:
            queue.insert_job("not a job")  # type: ignore[arg-type]

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Careless())
        await queue.start()
        job_id = await queue.insert_job(sq.Job("careless", {}, max_attempts=1))
        assert job_id is not None
        done = await queue.wait_for_job(job_id, timeout=10)
    assert done.status is sq.JobStatus.FAILED
    assert "InvalidArgumentError" in (done.last_error or "")
    assert count(dsn, "queue <> 'careless'") == 0


def test_the_blocking_queue_offers_every_producer_and_operator_method() -> None:
    wanted = {
        "insert_job",
        "insert_jobs",
        "get_job",
        "cancel_job",
        "cancel_job_by_unique_key",
        "cancel_jobs_by_fingerprint",
        "reschedule_job",
        "wait_for_job",
        "list_dlq",
        "requeue_dlq_job",
        "counts",
        "stats",
    }
    assert wanted <= set(dir(sq.BlockingQueue))
    for name in wanted:
        assert callable(getattr(sq.BlockingQueue, name))


async def test_an_async_process_behind_a_plain_decorator_still_awaits_its_calls(
    dsn: str,
) -> None:
    """Such a process runs in a thread (it looks sync) and returns a coroutine the runtime
    awaits on its loop: there, the BlockingQueue hands back awaitables, as before."""

    def plain(function: Any) -> Any:
        def wrapper(*args: Any) -> Any:  # no functools.wraps: it looks sync
            return function(*args)

        return wrapper

    class Hidden(sq.Handler):
        QUEUE = "hidden"

        @plain
        async def process(self, queue: Any, job: sq.Job) -> None:
            await queue.insert_job(sq.Job("hidden-child", {}))

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        handler = Hidden()
        assert handler.runs_in_thread
        queue.register_handler(handler)
        await queue.start()
        job_id = await queue.insert_job(sq.Job("hidden", {}, max_attempts=1))
        assert job_id is not None
        done = await queue.wait_for_job(job_id, timeout=10)
    assert done.status is sq.JobStatus.COMPLETED, done.last_error
    assert count(dsn, "queue = 'hidden-child'") == 1
