"""Configuration is validated when the queue is built; backoff and permit strategies."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

import simplequeue as sq
from tests.conftest import count, eventually


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"global_permits": -1}, "global_permits"),
        ({"queue_permits": 0}, "queue_permits"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"empty_poll_sleep": -1}, "empty_poll_sleep"),
        ({"janitor_interval": timedelta(0)}, "janitor_interval"),
        ({"backoff": "linear"}, "backoff must be a backoff strategy"),
        ({"backoff": sq.Linear}, "backoff must be a backoff strategy"),
        ({"schema": "Robert'); DROP TABLE"}, "invalid schema name"),
        ({"schema": "pg_catalog"}, "reserved"),
        ({"schema": ""}, "invalid schema name"),
        ({"max_reprocess_count": 0}, "max_reprocess_count"),
        ({"janitor_schedule": "every tuesday"}, "not a valid cron expression"),
        ({"colour": "blue"}, "colour: unknown setting"),
        ({"pool_min_size": 5, "pool_max_size": 2}, "pool_max_size"),
        ({"archive_retention": float("inf")}, "archive_retention: .*finite"),
        ({"heartbeat_interval": float("inf")}, "heartbeat_interval: .*finite"),
        ({"empty_poll_sleep": float("nan")}, "empty_poll_sleep: .*finite"),
        ({"janitor_interval": 1e300}, "janitor_interval: .*at most"),
        ({"reaper_interval": float("inf")}, "reaper_interval: .*finite"),
        ({"stall_factor": float("inf")}, "stall_factor"),
        ({"schema": "s" * 59}, "at most 58 characters"),
    ],
)
def test_bad_settings_fail_at_construction(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(sq.ConfigError, match=message):
        sq.SimpleQueue.from_url("postgresql://unused", **settings)


def test_defaults_follow_the_seed() -> None:
    config = sq.QueueConfig.build()
    assert (config.global_permits, config.queue_permits) == (500, 100)
    assert config.heartbeat_interval == 5.0 and config.stall_after == 12.5
    assert config.backoff == sq.Linear(5.0)
    assert (config.empty_poll_sleep, config.max_reprocess_count) == (1.0, 100)
    assert config.janitor_interval == 60.0
    assert config.schema_name == "simplequeue"
    assert sq.QueueConfig.build(heartbeat_interval=timedelta(seconds=2)).heartbeat_interval == 2.0


def test_exponential_reaches_its_cap_however_far_the_attempt() -> None:
    """Powers past the float range (2.0**1024, 10.0**309) mean the cap, not an error."""
    assert sq.Exponential(base=1, factor=2, max_delay=60).delay(1025).total_seconds() == 60
    assert sq.Exponential(base=1, factor=10, max_delay=100).delay(310).total_seconds() == 100
    assert sq.Exponential(base=3, factor=1, max_delay=2).delay(7).total_seconds() == 2
    assert sq.Exponential(base=0, max_delay=9).delay(2000).total_seconds() == 0
    tiny = sq.Exponential(base=1e-300, factor=2, max_delay=10).delay(1100).total_seconds()
    assert tiny == 10
    with pytest.raises(sq.ConfigError, match="factor"):
        sq.Exponential(factor=float("inf"))


def test_a_negative_delay_from_a_strategy_means_now() -> None:
    from datetime import timedelta

    from simplequeue.runtime.outcomes import backoff_delay

    class Backwards:
        def delay(self, attempt: int) -> timedelta:
            return timedelta(days=-400)

    assert backoff_delay(Backwards(), 1) == 0.0


def test_long_backoffs_are_clamped_not_refused() -> None:
    from simplequeue.backoff import MAX_DELAY

    for strategy in (sq.Fixed(1e300), sq.Linear(1e308), sq.Custom(lambda n: 1e300)):
        assert strategy.delay(5).total_seconds() == MAX_DELAY


async def test_the_longest_schema_name_notifies(dsn: str) -> None:
    from simplequeue.config import MAX_SCHEMA_NAME

    schema = "s" * MAX_SCHEMA_NAME
    await sq.setup(dsn, schema=schema)
    seen: list[sq.Job] = []

    class Record(sq.Handler):
        QUEUE = "long"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            seen.append(job)

    async with sq.SimpleQueue.from_url(dsn, schema=schema, empty_poll_sleep=30) as queue:
        queue.register_handler(Record())
        await queue.start()
        await queue.ready(timeout=10)
        await asyncio.sleep(0.2)  # the wake-up after connecting has been spent
        await queue.insert_job(sq.Job("long", {}))  # only its NOTIFY can wake the poller
        await eventually(lambda: seen, timeout=10)


def test_backoff_strategies() -> None:
    assert sq.Fixed(3).delay(5) == timedelta(seconds=3)
    assert [sq.Linear(5).delay(n).total_seconds() for n in (1, 2, 3)] == [5, 10, 15]
    exp = sq.Exponential(base=1, factor=2, max_delay=10)
    assert [exp.delay(n).total_seconds() for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]
    assert exp.delay(10_000).total_seconds() == 10
    jittered = sq.Exponential(base=8, jitter=0.5)
    assert all(4 <= jittered.delay(1).total_seconds() <= 8 for _ in range(50))
    assert sq.Custom(lambda n: n * n).delay(3) == timedelta(seconds=9)
    with pytest.raises(sq.ConfigError):
        sq.Exponential(factor=0.5)
    with pytest.raises(sq.ConfigError):
        sq.Fixed(-1)
    with pytest.raises(sq.ConfigError):
        sq.Custom(lambda n: -1).delay(1)

    class Mine:
        def delay(self, attempt: int) -> timedelta:
            return timedelta(seconds=attempt)

    assert sq.QueueConfig.build(backoff=Mine()).backoff.delay(2) == timedelta(seconds=2)


def test_bad_handlers_and_queue_settings_are_refused() -> None:
    queue = sq.SimpleQueue(AsyncConnectionPool("postgresql://unused", open=False))

    class NoQueue(sq.Handler):
        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None: ...

    class NoProcess(sq.Handler):
        QUEUE = "x"

    class BadPayload(sq.Handler):
        QUEUE = "x"
        Payload = dict  # type: ignore[assignment]

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None: ...

    class Fine(sq.Handler):
        QUEUE = "x"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None: ...

    for bad, message in [
        (NoQueue(), "QUEUE"),
        (NoProcess(), "process"),
        (Fine, "instance"),
        (BadPayload(), "pydantic"),
        (object(), "subclass"),
    ]:
        with pytest.raises(sq.ConfigError, match=message):
            queue.register_handler(bad)  # type: ignore[arg-type]
    queue.register_handler(Fine())
    with pytest.raises(sq.ConfigError, match="already has a handler"):
        queue.register_handler(Fine())
    with pytest.raises(sq.ConfigError):
        queue.set_queue_permits("x", 0)
    with pytest.raises(sq.ConfigError):
        queue.set_queue_backoff("x", "exponential")  # type: ignore[arg-type]
    with pytest.raises(sq.ConfigError):
        queue.set_queue_strategy("x", object())  # type: ignore[arg-type]
    with pytest.raises(sq.ConfigError):
        sq.ConcurrencyLimit(0)


async def test_start_needs_an_open_pool(dsn: str) -> None:
    queue = sq.SimpleQueue.from_url(dsn)
    with pytest.raises(sq.QueueStateError, match="closed"):
        await queue.start()


class Gauge(sq.Handler):
    """Measures how many of its jobs run at once."""

    QUEUE = "gauge"

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.done = 0

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.02)
        self.now -= 1
        self.done += 1


@pytest.mark.parametrize("tier", ["global", "queue", "strategy"])
async def test_each_permit_tier_bounds_concurrency(dsn: str, tier: str) -> None:
    settings: dict[str, Any] = {"global_permits": 3} if tier == "global" else {}
    async with sq.SimpleQueue.from_url(dsn, **settings) as queue:
        if tier == "queue":
            queue.set_queue_permits("gauge", 2)
        if tier == "strategy":
            queue.set_queue_strategy("gauge", sq.ConcurrencyLimit(1))
        handler = Gauge()
        queue.register_handler(handler)
        await queue.insert_jobs([sq.Job("gauge", i) for i in range(30)])
        await queue.start()
        await eventually(lambda: handler.done == 30)
    assert handler.peak == {"global": 3, "queue": 2, "strategy": 1}[tier]


class Decides:
    """A strategy that turns each job away as its data says."""

    async def acquire(self, job: sq.Job) -> sq.Permit:
        decision = job.data
        if decision == "cancel":
            raise sq.CancelJob()
        if decision == "retry":
            raise sq.RetryJob("busy")
        if decision == "completed":
            raise sq.MarkCompleted()
        if decision == "later" and job.reprocess_count == 0 and job.attempt == 1:
            raise sq.TryAfter(timedelta(hours=1))
        return await sq.Immediate().acquire(job)


async def test_strategy_decisions(queue: sq.SimpleQueue, dsn: str) -> None:
    ran: list[str] = []

    class Runs(sq.Handler):
        QUEUE = "decided"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            ran.append(job.data)

    queue.set_queue_strategy("decided", Decides())
    queue.register_handler(Runs())
    ids = await queue.insert_jobs(
        [
            sq.Job("decided", d, max_attempts=1)
            for d in ("cancel", "retry", "completed", "later", "go")
        ]
    )
    await queue.start()
    for job_id in ids[:3] + ids[4:]:  # "later" was turned away, not processed: not waited on
        assert job_id is not None
        await queue.wait_for_job(job_id, timeout=5)
    await eventually(lambda: count(dsn, "status <> 'running'") == 5 and ran == ["go"])
    rows = dict(query_status(dsn))
    assert rows["cancel"] == ("cancelled", 1)
    assert rows["retry"] == ("failed", 1)
    assert rows["completed"] == ("completed", 1)
    assert rows["later"] == ("pending", 0)  # attempt given back, due in an hour
    assert rows["go"] == ("completed", 1)


def query_status(dsn: str) -> list[tuple[str, tuple[str, int]]]:
    from tests.conftest import query

    return [
        (r[0], (r[1], r[2]))
        for r in query(dsn, "SELECT data #>> '{}', status, attempt FROM simplequeue.jobs")
    ]
