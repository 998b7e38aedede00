"""Durability modes at their edges: a change heard by idle, busy and stopping workers, a
handler that changes or re-inserts its job, the limits' bookkeeping, a split batch retried.
They reuse test_durability's trigger, which records for every row written the
synchronous_commit its transaction commits with.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

import simplequeue as sq
from tests.conftest import FAST, count, eventually, query
from tests.test_durability import observe, observed, settings

pytestmark = pytest.mark.slow  # changes of mode timed over seconds: make test-slow


def long_job(name: str, started: asyncio.Event, steps: int = 60) -> sq.Handler:
    """Reports progress every 0.1 s for `steps` steps: a write of the worker's own every
    0.1 s, fast or durable as its queue is."""

    class Long(sq.Handler):
        QUEUE = name

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            for step in range(steps):
                await job.set_progress(step)
                if step == 5:
                    started.set()
                await asyncio.sleep(0.1)

    return Long()


async def switch_to_durable(queue: sq.SimpleQueue, dsn: str, name: str) -> Any:
    """Make the queue durable again; the database's clock when the call returned."""
    await queue.configure_queue(name)
    [(at,)] = query(dsn, "SELECT clock_timestamp()")
    return at


# -- 1. a queue made durable is still written fast long after "about a second" ---------


async def test_a_worker_with_free_permits_hears_a_change_to_durable_within_a_second(
    dsn: str,
) -> None:
    """A worker with a free permit and nothing to claim (a long fallback poll) hears a fast
    queue made durable within about a second: its running job's writes are durable from
    then on."""
    observe(dsn)
    started = asyncio.Event()
    async with sq.SimpleQueue.from_url(
        dsn, **{**FAST, "empty_poll_sleep": 5.0, "use_notify": False, "global_permits": 2}
    ) as queue:
        queue.register_handler(long_job("long", started))
        await queue.configure_queue("long", durability="fast")
        await queue.insert_job(sq.Job("long", {}))
        await queue.start()
        await asyncio.wait_for(started.wait(), 10)
        at = await switch_to_durable(queue, dsn, "long")
        await eventually(lambda: count(dsn, "status = 'completed'") == 1, timeout=20)
    late = observed(dsn, "kind <> 'insert' AND at > %s", [at + timedelta(seconds=1.5)])
    assert late, "the job wrote nothing after the switch"
    fast_after = [row for row in late if row[2] == "off"]
    assert not fast_after, (
        f"{len(fast_after)} of {len(late)} writes of a queue made durable committed fast "
        "more than 1.5 s after configure_queue returned"
    )


async def test_with_notifications_a_change_right_after_a_claim_is_heard_within_a_second(
    dsn: str,
) -> None:
    """The same with NOTIFY on, right after a claim read the modes: the change is heard
    within about a second, not at the next fallback poll."""
    observe(dsn)
    started = asyncio.Event()

    class Short(sq.Handler):
        QUEUE = "short"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    async with sq.SimpleQueue.from_url(
        dsn, **{**FAST, "empty_poll_sleep": 5.0, "global_permits": 4}
    ) as queue:
        queue.register_handler(long_job("long", started))
        queue.register_handler(Short())
        await queue.configure_queue("long", durability="fast")
        await queue.insert_job(sq.Job("long", {}))
        await queue.start()
        await asyncio.wait_for(started.wait(), 10)
        await asyncio.sleep(1.2)  # the controls are due for a read at the next claim
        await queue.insert_job(sq.Job("short", {}))  # that claim reads them now
        await eventually(lambda: count(dsn, "queue = 'short' AND status = 'completed'") == 1)
        at = await switch_to_durable(queue, dsn, "long")  # heard at the next read only
        await eventually(lambda: count(dsn, "status = 'completed'") == 2, timeout=20)
    late = observed(dsn, "queue = 'long' AND kind <> 'insert' AND at > %s",
                    [at + timedelta(seconds=1.5)])  # fmt: skip
    assert late, "the job wrote nothing after the switch"
    fast_after = [row for row in late if row[2] == "off"]
    assert not fast_after, (
        f"{len(fast_after)} of {len(late)} writes of a queue made durable committed fast "
        "more than 1.5 s after configure_queue returned"
    )


async def test_a_stopping_worker_hears_a_change_to_durable_within_a_second(dsn: str) -> None:
    """A stopping worker (no more claims) still hears a queue made durable: the jobs the stop
    waits for write durably from then on."""
    observe(dsn)
    started = asyncio.Event()
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(long_job("long", started, steps=40))
        await queue.configure_queue("long", durability="fast")
        await queue.insert_job(sq.Job("long", {}))
        await queue.start()
        await asyncio.wait_for(started.wait(), 10)
        stopping = asyncio.create_task(queue.stop(timeout=20))
        await asyncio.sleep(0.1)
        at = await switch_to_durable(queue, dsn, "long")
        await stopping
    assert count(dsn, "status = 'completed'") == 1
    late = observed(dsn, "kind <> 'insert' AND at > %s", [at + timedelta(seconds=1.5)])
    assert late, "the job wrote nothing after the switch"
    kinds = {row[1]: row[2] for row in late}
    assert set(kinds.values()) == {"on"}, (
        f"writes of a queue made durable, >1.5 s after the switch: {kinds}"
    )


# -- 2. the queue that decides the mode is a handler-writable attribute ----------------


async def test_a_handler_that_changes_job_queue_does_not_make_a_durable_job_fast(
    dsn: str,
) -> None:
    """A handler of a durable queue that reuses its job object for another queue
    (job.queue = "thumbnails") does not make its own run's progress, beats and result
    fast: the worker writes the run as it was claimed."""
    observe(dsn)

    class Router(sq.Handler):
        QUEUE = "billing"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            job.queue = "thumbnails"  # the handler reuses the object it was given
            await job.set_progress("routed")
            await asyncio.sleep(0.6)  # beaten meanwhile

    class Thumbs(sq.Handler):
        QUEUE = "thumbnails"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Router())
        queue.register_handler(Thumbs())
        await queue.configure_queue("thumbnails", durability="fast")
        await asyncio.sleep(0.1)
        await queue.start()
        await asyncio.sleep(1.5)  # the worker has read which queues are fast
        await queue.insert_job(sq.Job("billing", {}))
        await eventually(lambda: count(dsn, "status = 'completed'") == 1, timeout=10)
    assert settings(dsn, "queue = 'billing' AND kind <> 'insert'") == {"on"}, observed(
        dsn, "queue = 'billing'"
    )


# -- 3. what fast never risks: the fleet-wide limits' bookkeeping ------------------------


async def test_a_fast_queues_rate_windows_commit_durably(dsn: str) -> None:
    """A controlled queue's claim records each start a rate counts (and each key's turn)
    in its own transaction: those claims stay durable on a fast queue, so a crash cannot
    forget starts that already happened and let the limit be exceeded."""
    query(
        dsn,
        """
        CREATE TABLE public.observed_starts (queue text, sync text);
        CREATE FUNCTION public.observe_start() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO public.observed_starts
            VALUES (NEW.queue, current_setting('synchronous_commit'));
            RETURN NULL;
        END $$;
        -- deferred: it runs at commit, and sees the setting the commit uses
        CREATE CONSTRAINT TRIGGER observe AFTER INSERT ON simplequeue.rate_starts
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION public.observe_start();
        """,
    )

    class Call(sq.Handler):
        QUEUE = "api"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Call())
        await queue.configure_queue(
            "api", rate_limit=sq.Rate(100, timedelta(minutes=1)), durability="fast"
        )
        await queue.start()
        await asyncio.sleep(1.5)
        await queue.insert_jobs([sq.Job("api", n) for n in range(5)])
        await eventually(lambda: count(dsn, "status = 'completed'") == 5)
    starts = {row[1] for row in query(dsn, "SELECT queue, sync FROM public.observed_starts")}
    assert starts == {"on"}  # the rate's bookkeeping commits durably with the claim


# -- 4. a split batch retried after its second statement failed ------------------------


async def test_a_split_batch_retried_counts_its_fast_part_as_written(dsn: str) -> None:
    """A batch that mixes a fast and a durable queue is written as two transactions; when the
    second fails with an error worth retrying, the retry writes that part alone, and every
    result counts as written, none as fenced off."""
    query(
        dsn,
        """
        CREATE SEQUENCE public.once;
        CREATE FUNCTION public.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('public.once') = 1 THEN
                RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER fail_once BEFORE UPDATE ON simplequeue.jobs FOR EACH ROW
            WHEN (NEW.status = 'completed' AND NEW.queue = 'd')
            EXECUTE FUNCTION public.fail_once();
        """,
    )

    def instant(name: str) -> sq.Handler:
        class Instant(sq.Handler):
            QUEUE = name

            async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
                return None

        return Instant()

    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "result_flush_interval": 0.3}) as queue:
        queue.register_handler(instant("f"))
        queue.register_handler(instant("d"))
        await queue.configure_queue("f", durability="fast")
        await queue.start()
        await asyncio.sleep(1.5)  # the worker knows "f" is fast
        await queue.insert_jobs([sq.Job(name, n) for n in range(5) for name in ("f", "d")])
        ended = await queue.drain(timeout=20)
        stats = queue.stats()
    assert count(dsn, "status = 'completed'") == 10
    [(calls,)] = query(dsn, "SELECT last_value FROM public.once")
    assert calls > 1  # the durable part failed once, and was written again
    assert (stats.results_fenced_off, stats.results_written) == (0, 10)
    assert ended == {"completed": 10}


async def test_forwarding_the_received_job_to_a_fast_queue_keeps_its_own_writes_durable(
    dsn: str,
) -> None:
    """A handler that inserts the very job it received (to forward it) is refused: that insert
    would take the run's id, and the run would stay `running`, beaten forever. The run is
    written as claimed, durably."""
    observe(dsn)

    class Forward(sq.Handler):
        QUEUE = "billing"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            job.queue = "thumbnails"
            await queue.insert_job(job)

    class Thumbs(sq.Handler):
        QUEUE = "thumbnails"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Forward())
        queue.register_handler(Thumbs())
        await queue.configure_queue("thumbnails", durability="fast")
        await queue.start()
        await asyncio.sleep(1.5)
        original = await queue.insert_job(sq.Job("billing", {}))
        await asyncio.sleep(3)
        stored = await queue.get_job(original)
    assert settings(dsn, "queue = 'billing' AND kind <> 'insert'") == {"on"}, observed(
        dsn, "queue = 'billing'"
    )
    assert stored is not None and stored.status != sq.JobStatus.RUNNING
