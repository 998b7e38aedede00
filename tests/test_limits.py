"""Fleet-wide limits: configure_queue, concurrency keys, rates, fairness and parking,
with several workers (each a SimpleQueue with its own pool) on one database."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import simplequeue as sq
from tests.conftest import FAST, count, eventually, query


class Tracker:
    """What the handlers saw: how many ran at once (overall and per key), when each
    started (monotonic seconds), in what order."""

    def __init__(self) -> None:
        self.running: Counter[str | None] = Counter()
        self.now = 0
        self.peak = 0
        self.peak_per_key = 0
        self.starts: list[tuple[float, str | None]] = []
        self.order: list[Any] = []

    def enter(self, job: sq.Job) -> None:
        self.now += 1
        self.running[job.concurrency_key] += 1
        self.peak = max(self.peak, self.now)
        if job.concurrency_key is not None:
            self.peak_per_key = max(self.peak_per_key, self.running[job.concurrency_key])
        self.starts.append((time.monotonic(), job.concurrency_key))
        self.order.append(job.data)

    def leave(self, job: sq.Job) -> None:
        self.now -= 1
        self.running[job.concurrency_key] -= 1


def handler(tracker: Tracker, queue_name: str = "limited", sleep: float = 0.02) -> sq.Handler:
    class Tracked(sq.Handler):
        QUEUE = queue_name

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
            tracker.enter(job)
            try:
                await asyncio.sleep(float(job.data.get("sleep", sleep)))
            finally:
                tracker.leave(job)
            return None

    return Tracked()


@asynccontextmanager
async def fleet(
    dsn: str, make: Callable[[], sq.Handler], workers: int = 3, **settings: Any
) -> AsyncIterator[list[sq.SimpleQueue]]:
    """`workers` started queues, each with its own pool and handler instance."""
    async with AsyncExitStack() as stack:
        queues = []
        for _ in range(workers):
            q = await stack.enter_async_context(sq.SimpleQueue.from_url(dsn, **FAST, **settings))
            q.register_handler(make())
            queues.append(q)
        for q in queues:
            await q.start()
        yield queues


def max_in_window(times: list[float], window: float) -> int:
    """The most starts within any `window` seconds."""
    times = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


# -- configure_queue ---------------------------------------------------------------


async def test_configure_queue_stores_every_limit_and_reads_them_back(
    queue: sq.SimpleQueue,
) -> None:
    info = await queue.configure_queue(
        "limited",
        max_running=5,
        max_running_per_key=1,
        rate_limit=sq.Rate(10, per=timedelta(seconds=2)),
        rate_limit_per_key=sq.Rate(3, per=60),
        fair=True,
    )
    assert info.limits == sq.QueueLimits(
        5, 1, sq.Rate(10, per=timedelta(seconds=2)), sq.Rate(3, per=timedelta(minutes=1)), True
    )
    [listed] = await queue.list_queues()
    assert listed.limits == info.limits
    assert listed.to_dict()["limits"]["rate_limit"] == {"limit": 10, "per_seconds": 2.0}
    # Each call sets them all: what it leaves out is lifted.
    info = await queue.configure_queue("limited", max_running=2)
    assert info.limits == sq.QueueLimits(max_running=2)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_running": 0},
        {"max_running": -1},
        {"max_running": 2**31},
        {"max_running": True},
        {"max_running": 1.5},
        {"max_running_per_key": 0},
        {"rate_limit": 10},
        {"rate_limit": (10, 1)},
        {"rate_limit_per_key": "10/s"},
        {"fair": "yes"},
    ],
)
async def test_configure_queue_refuses_bad_limits_and_changes_nothing(
    queue: sq.SimpleQueue, dsn: str, bad: dict[str, Any]
) -> None:
    with pytest.raises(sq.InvalidArgumentError):
        await queue.configure_queue("limited", **bad)
    assert count(dsn, table="queues") == 0


async def test_rates_refuse_nonsense() -> None:
    for limit, per in ((0, 1), (-1, 1), (1.5, 1), (1, 0), (1, -1), (1, float("inf")), (1, "1s")):
        with pytest.raises(sq.InvalidArgumentError):
            sq.Rate(limit, per=per)  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError):
        sq.Rate(1, per=timedelta(days=400))


async def test_bad_queue_names_and_concurrency_keys_are_refused(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    for name in ("", None, "x" * 5000, "a\x00b"):
        with pytest.raises(sq.InvalidArgumentError):
            await queue.configure_queue(name, max_running=1)  # type: ignore[arg-type]
    for key in ("", 3, "a\x00b", "k" * 5000):
        with pytest.raises(sq.InvalidJobError):
            sq.Job("limited", {}, concurrency_key=key)  # type: ignore[arg-type]
    assert count(dsn, table="queues") == 0


async def test_the_concurrency_key_is_stored_and_read_back(queue: sq.SimpleQueue) -> None:
    key = "customer-42'; DROP TABLE jobs; --"
    job_id = await queue.insert_job(sq.Job("limited", {}, concurrency_key=key))
    stored = await queue.get_job(job_id)
    assert stored is not None and stored.concurrency_key == key
    assert stored.to_dict()["concurrency_key"] == key


# -- the limits, with three workers ------------------------------------------------


async def test_max_running_holds_across_workers(dsn: str) -> None:
    tracker = Tracker()
    async with fleet(dsn, lambda: handler(tracker)) as workers:
        await workers[0].configure_queue("limited", max_running=3)
        await workers[0].insert_jobs([sq.Job("limited", {"i": i}) for i in range(60)])
        await eventually(lambda: count(dsn, "status = 'completed'") == 60, timeout=30)
    assert tracker.peak == 3  # never more, and the limit was reached


async def test_max_running_per_key_holds_and_runs_each_key_in_order(dsn: str) -> None:
    tracker = Tracker()
    async with fleet(dsn, lambda: handler(tracker)) as workers:
        await workers[0].configure_queue("limited", max_running_per_key=1)
        jobs = [
            sq.Job("limited", {"k": i % 4, "n": i}, concurrency_key=f"c{i % 4}") for i in range(40)
        ]
        await workers[0].insert_jobs(jobs)
        await eventually(lambda: count(dsn, "status = 'completed'") == 40, timeout=30)
    assert tracker.peak_per_key == 1
    assert tracker.peak > 1  # keys ran side by side
    for key in range(4):
        ran = [d["n"] for d in tracker.order if d["k"] == key]
        assert ran == sorted(ran)


async def test_a_rate_limit_caps_starts_per_window_across_workers(dsn: str) -> None:
    tracker = Tracker()
    async with fleet(dsn, lambda: handler(tracker, sleep=0)) as workers:
        await workers[0].configure_queue("limited", rate_limit=sq.Rate(5, per=timedelta(seconds=1)))
        await workers[0].insert_jobs([sq.Job("limited", {"i": i}) for i in range(16)])
        began = time.monotonic()
        await eventually(lambda: count(dsn, "status = 'completed'") == 16, timeout=30)
        took = time.monotonic() - began
    times = [at for at, _ in tracker.starts]
    # Starts are counted when claimed; a handler starts a few ms later: a small slack.
    assert max_in_window(times, 0.8) <= 5
    assert took >= 3.0  # 16 starts at 5 per second: three full windows at least
    assert took < 8.0  # and the workers kept up with the rate


async def test_a_rate_limit_per_key_leaves_other_keys_alone(dsn: str) -> None:
    tracker = Tracker()
    async with fleet(dsn, lambda: handler(tracker, sleep=0)) as workers:
        await workers[0].configure_queue(
            "limited", rate_limit_per_key=sq.Rate(2, per=timedelta(seconds=1))
        )
        hot = [sq.Job("limited", {"i": i}, concurrency_key="hot") for i in range(6)]
        cold = [sq.Job("limited", {"i": i}, concurrency_key=f"cold{i}") for i in range(6)]
        await workers[0].insert_jobs(hot + cold)
        await eventually(
            lambda: count(dsn, "status = 'completed' AND concurrency_key <> 'hot'") == 6
        )
        cold_done = time.monotonic()
        await eventually(lambda: count(dsn, "status = 'completed'") == 12, timeout=30)
    hot_times = [at for at, key in tracker.starts if key == "hot"]
    assert max_in_window(hot_times, 0.8) <= 2
    assert max(hot_times) - min(hot_times) >= 2.0  # six at two per second
    assert cold_done - min(at for at, _ in tracker.starts) < 1.5  # not behind the hot key


async def test_fair_queues_take_every_key_in_turn(dsn: str) -> None:
    order: list[str] = []

    class Record(sq.Handler):
        QUEUE = "limited"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            order.append(job.concurrency_key or "")

    async with sq.SimpleQueue.from_url(dsn, **FAST, global_permits=1) as queue:
        await queue.configure_queue("limited", fair=True)
        noisy = [sq.Job("limited", {}, concurrency_key="noisy") for _ in range(30)]
        quiet = [sq.Job("limited", {}, concurrency_key=f"quiet{i}") for i in range(3)]
        await queue.insert_jobs(noisy + quiet)  # the noisy tenant's jobs are older
        queue.register_handler(Record())
        await queue.start()
        await eventually(lambda: len(order) == 33, timeout=20)
    # The quiet keys' jobs ran among the first, not after the noisy key's thirty.
    assert set(order[:4]) == {"noisy", "quiet0", "quiet1", "quiet2"}


async def test_a_new_limit_takes_effect_at_run_time(dsn: str) -> None:
    tracker = Tracker()
    make = lambda: handler(tracker, sleep=0.5)  # noqa: E731
    async with fleet(dsn, make, workers=2, queue_permits=4) as workers:
        await workers[0].insert_jobs([sq.Job("limited", {}) for _ in range(40)])
        await eventually(lambda: tracker.peak >= 4)
        await workers[0].configure_queue("limited", max_running=1)
        await asyncio.sleep(1.5)  # workers follow within a second; running jobs finish
        tracker.peak = tracker.now
        await asyncio.sleep(1.0)
        assert tracker.peak <= 1
        await workers[0].configure_queue("limited")  # lifted
        await eventually(lambda: tracker.now > 1, timeout=5)
        for q in workers:
            await q.stop(timeout=1)


async def test_limits_do_not_slow_other_queues(dsn: str) -> None:
    tracker, other = Tracker(), Tracker()

    def both() -> sq.Handler:
        return handler(tracker)

    async with fleet(dsn, both, workers=2) as workers:
        for q in workers:
            q.register_handler(handler(other, "free", sleep=0))
        await workers[0].configure_queue("limited", max_running=1)
        await workers[0].insert_jobs([sq.Job("limited", {"sleep": 0.5}) for _ in range(10)])
        await workers[0].insert_jobs([sq.Job("free", {}) for _ in range(50)])
        await eventually(lambda: count(dsn, "queue = 'free' AND status = 'completed'") == 50)
        assert count(dsn, "queue = 'limited' AND status = 'completed'") < 5
        for q in workers:
            await q.stop(timeout=1)


async def test_a_paused_controlled_queue_is_not_claimed(dsn: str) -> None:
    tracker = Tracker()
    async with fleet(dsn, lambda: handler(tracker), workers=1) as [worker]:
        await worker.configure_queue("limited", max_running=2)
        await worker.pause_queue("limited")
        await worker.insert_jobs([sq.Job("limited", {}) for _ in range(3)])
        await asyncio.sleep(1.5)
        assert tracker.starts == []
        await worker.resume_queue("limited")
        await eventually(lambda: count(dsn, "status = 'completed'") == 3)


# -- parking -----------------------------------------------------------------------


async def test_a_parked_key_starts_nothing_before_until_and_everything_after(dsn: str) -> None:
    parked: dict[str, float] = {}
    starts: list[tuple[float, str, int]] = []

    class Limited(sq.Handler):
        QUEUE = "limited"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult | None:
            key = job.concurrency_key or ""
            starts.append((time.monotonic(), key, job.attempt))
            if key == "throttled" and not parked:
                parked[key] = time.monotonic()
                return sq.JobResult.park(datetime.now(UTC) + timedelta(seconds=2))
            return None

    async with fleet(dsn, Limited, workers=2) as workers:
        throttled = [sq.Job("limited", {}, concurrency_key="throttled") for _ in range(5)]
        others = [sq.Job("limited", {}, concurrency_key=f"other{i}") for i in range(5)]
        await workers[0].insert_jobs(throttled + others)
        await eventually(lambda: count(dsn, "status = 'completed'") == 10, timeout=15)
        assert count(dsn, "attempt = 1", table="jobs") == 10  # the park spent no attempt
    at = parked["throttled"]
    during = [s for s in starts if s[1] == "throttled" and at + 0.05 < s[0] < at + 1.9]
    assert during == []
    assert sum(1 for s in starts if s[1] == "throttled") == 6  # the parked one ran again
    assert all(s[0] < at + 1.9 for s in starts if s[1].startswith("other"))


async def test_a_job_without_key_parks_its_whole_queue(dsn: str) -> None:
    starts: list[float] = []

    class Limited(sq.Handler):
        QUEUE = "limited"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult | None:
            starts.append(time.monotonic())
            if len(starts) == 1:
                return sq.JobResult.park(datetime.now(UTC) + timedelta(seconds=1.5))
            return None

    async with fleet(dsn, Limited, workers=1, global_permits=1) as [worker]:
        await worker.insert_jobs([sq.Job("limited", {}) for _ in range(3)])
        await eventually(lambda: count(dsn, "status = 'completed'") == 3, timeout=10)
        [info] = await worker.list_queues()
    assert starts[1] - starts[0] >= 1.4
    assert info.parked_until is None  # over


async def test_operators_park_and_unpark_a_queue_or_a_key(dsn: str) -> None:
    tracker = Tracker()
    async with fleet(dsn, lambda: handler(tracker, sleep=0), workers=1) as [worker]:
        until = datetime.now(UTC) + timedelta(hours=1)
        await worker.park("limited", until, key="k1")
        await worker.insert_jobs(
            [sq.Job("limited", {}, concurrency_key=k) for k in ("k1", "k2", "k1")]
        )
        await eventually(lambda: count(dsn, "status = 'completed'") == 1, timeout=5)
        await asyncio.sleep(1.2)
        assert count(dsn, "status = 'completed'") == 1
        assert await worker.drain(timeout=1) == {}  # parked jobs are not due
        assert await worker.unpark("limited", key="k1") is True
        await eventually(lambda: count(dsn, "status = 'completed'") == 3, timeout=5)
        assert await worker.unpark("limited", key="k1") is False

        await worker.park("limited", until)
        [info] = await worker.list_queues()
        assert info.parked_until is not None
        await worker.insert_job(sq.Job("limited", {}))
        await asyncio.sleep(1.2)
        assert count(dsn, "status = 'pending'") == 1
        assert await worker.unpark("limited") is True
        await eventually(lambda: count(dsn, "status = 'completed'") == 4, timeout=5)


async def test_a_park_is_never_shortened_by_a_later_call(queue: sq.SimpleQueue, dsn: str) -> None:
    far = datetime.now(UTC) + timedelta(hours=2)
    await queue.park("limited", far, key="k")
    await queue.park("limited", datetime.now(UTC) + timedelta(minutes=1), key="k")
    [(until,)] = query(dsn, "SELECT until FROM simplequeue.parked_keys")
    assert until == far


async def test_park_refuses_bad_input_and_changes_nothing(queue: sq.SimpleQueue, dsn: str) -> None:
    with pytest.raises(sq.InvalidArgumentError, match="naive"):
        await queue.park("limited", datetime(2031, 1, 1))
    with pytest.raises(sq.InvalidArgumentError):
        await queue.park("limited", "tomorrow")  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError):
        await queue.park("limited", datetime.now(UTC), key="")
    with pytest.raises(sq.InvalidJobError, match="naive"):
        sq.JobResult.park(datetime(2031, 1, 1))
    assert count(dsn, table="queues") == 0 and count(dsn, table="parked_keys") == 0


async def test_a_park_from_a_run_that_lost_its_job_parks_nothing(dsn: str) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    class Slow(sq.Handler):
        QUEUE = "limited"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult:
            started.set()
            await release.wait()
            return sq.JobResult.park(datetime.now(UTC) + timedelta(hours=1))

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Slow())
        await queue.start()
        job_id = await queue.insert_job(sq.Job("limited", {}, concurrency_key="k"))
        await asyncio.wait_for(started.wait(), 5)
        await queue.cancel_job(job_id)
        release.set()
        await asyncio.sleep(0.5)
    assert count(dsn, table="parked_keys") == 0
    assert count(dsn, "status = 'cancelled'") == 1


def test_the_example_of_the_limits_page(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_docs_examples import DOCS, run, url

    monkeypatch.setenv("DATABASE_URL", url(dsn))
    run(["limits"], DOCS / "limits.md")
    assert count(dsn, "status = 'completed'") == 9
    [(limits,)] = query(dsn, "SELECT max_running FROM simplequeue.queues")
    assert limits == 20


async def test_the_reaper_forgets_parks_that_ended(queue: sq.SimpleQueue, dsn: str) -> None:
    await queue.park("limited", datetime.now(UTC) + timedelta(seconds=0.3), key="gone")
    await queue.park("limited", datetime.now(UTC) + timedelta(hours=1), key="kept")
    await asyncio.sleep(0.5)
    await queue.reap()
    assert query(dsn, "SELECT key FROM simplequeue.parked_keys") == [("kept",)]
