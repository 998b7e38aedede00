"""Fleet-wide limits with four real worker processes: each execution is recorded by its
handler in `test_executions` (start, end, in the database's clock), and the peaks are
computed from those records."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

import simplequeue as sq
from tests.conftest import WorkerProcess, count, eventually, query

pytestmark = pytest.mark.slow

PEAK = """
SELECT coalesce(max(overlapping), 0) FROM (
    SELECT (SELECT count(*) FROM public.test_executions AS other
            JOIN simplequeue.jobs AS oj ON oj.id = other.job_id
            WHERE other.started <= e.started AND (other.ended IS NULL OR other.ended > e.started)
              AND ({same})) AS overlapping
    FROM public.test_executions AS e JOIN simplequeue.jobs AS j ON j.id = e.job_id
) AS peaks
"""


def peak(dsn: str, same: str = "true") -> int:
    """The most executions that overlapped (`same`: which others count, e.g. same key)."""
    return int(query(dsn, PEAK.format(same=same))[0][0])


def four(workers: Callable[..., WorkerProcess]) -> list[WorkerProcess]:
    return [workers("--queue-permits", "10", target="tests.worker_app:limited") for _ in range(4)]


async def test_max_running_is_exact_across_four_processes(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    await queue.configure_queue("limited", max_running=3)
    await queue.insert_jobs([sq.Job("limited", {"sleep": 0.05}) for _ in range(120)])
    four(workers)
    await eventually(lambda: count(dsn, "status = 'completed'") == 120, timeout=60)
    assert peak(dsn) == 3


async def test_max_running_per_key_is_exact_across_four_processes(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    await queue.configure_queue("limited", max_running_per_key=2)
    jobs = [sq.Job("limited", {"sleep": 0.05}, concurrency_key=f"c{i % 5}") for i in range(150)]
    await queue.insert_jobs(jobs)
    four(workers)
    await eventually(lambda: count(dsn, "status = 'completed'") == 150, timeout=60)
    assert peak(dsn, "oj.concurrency_key = j.concurrency_key") == 2
    assert peak(dsn) > 2  # the keys ran side by side


async def test_a_rate_limit_is_exact_across_four_processes(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    await queue.configure_queue("limited", rate_limit=sq.Rate(10, per=timedelta(seconds=1)))
    await queue.insert_jobs([sq.Job("limited", {}) for _ in range(45)])
    four(workers)
    await eventually(lambda: count(dsn, "status = 'completed'") == 45, timeout=60)
    # The most handler starts in any 0.8 s (starts are counted when claimed: a handler
    # starts a little after its claim, later on a loaded machine).
    [(most, first, last)] = query(
        dsn,
        "SELECT (SELECT max((SELECT count(*) FROM public.test_executions AS o"
        "  WHERE o.started >= e.started AND o.started < e.started + interval '0.8 s'))"
        "  FROM public.test_executions AS e), min(started), max(started)"
        " FROM public.test_executions",
    )
    assert most <= 10
    assert (last - first).total_seconds() >= 4.0  # 45 starts at 10 per second


async def test_a_parked_key_starts_nothing_before_until_across_four_processes(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    # One job of a key at a time: the parking job runs first, and the key's next job
    # could start right after it, when it is parked.
    await queue.configure_queue("limited", max_running_per_key=1)
    await queue.insert_jobs(
        [sq.Job("limited", {"park": 2}, concurrency_key="throttled")]
        + [sq.Job("limited", {"sleep": 0.01}, concurrency_key="throttled") for _ in range(20)]
        + [sq.Job("limited", {"sleep": 0.01}, concurrency_key=f"o{i}") for i in range(20)]
    )
    four(workers)
    await eventually(lambda: count(dsn, "status = 'completed'") == 41, timeout=60)
    # The parking run ended when its handler parked the key (for 2 s); its job ran again.
    [(parked_at, again)] = query(
        dsn,
        "SELECT min(e.ended), max(e.started) FROM public.test_executions AS e"
        " JOIN simplequeue.jobs AS j ON j.id = e.job_id WHERE j.data ? 'park'",
    )
    assert again - parked_at >= timedelta(seconds=1.9)
    started_while_parked = query(
        dsn,
        "SELECT count(*) FROM public.test_executions AS e"
        " JOIN simplequeue.jobs AS j ON j.id = e.job_id"
        " WHERE j.concurrency_key = 'throttled' AND e.started > %s AND e.started < %s",
        [parked_at, parked_at + timedelta(seconds=1.9)],
    )[0][0]
    assert started_while_parked == 0
    others = query(
        dsn,
        "SELECT count(*) FROM public.test_executions AS e"
        " JOIN simplequeue.jobs AS j ON j.id = e.job_id"
        " WHERE j.concurrency_key <> 'throttled' AND e.started < %s",
        [parked_at + timedelta(seconds=1.9)],
    )[0][0]
    assert others == 20  # the other keys were not held back
