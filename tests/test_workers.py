"""Real worker processes: exclusivity, heartbeats, crash recovery, poison jobs, shutdown.

Delivery is at-least-once: a job whose worker dies runs again elsewhere. These tests kill
processes for real and count every execution in `test_executions`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

import simplequeue as sq
from tests.conftest import WorkerProcess, count, eventually, query

pytestmark = pytest.mark.slow


def executions(dsn: str) -> list[tuple[Any, ...]]:
    return query(
        dsn, "SELECT job_id, pid, started, ended FROM public.test_executions ORDER BY started"
    )


async def test_two_workers_never_run_one_job_at_once(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    ids = await queue.insert_jobs([sq.Job("work", {"sleep": 0.01}) for _ in range(400)])
    first, second = workers(), workers()
    await eventually(lambda: count(dsn, "status = 'completed'") == 400, timeout=60)
    runs = executions(dsn)
    by_job: dict[Any, list[tuple[Any, ...]]] = defaultdict(list)
    for run in runs:
        by_job[run[0]].append(run)
    assert set(by_job) == set(ids)
    assert all(len(r) == 1 for r in by_job.values()), "a job ran twice with no crash"
    pids = {run[1] for run in runs}
    assert pids == {first.pid, second.pid}, "both workers should have taken a share"


async def test_a_long_job_survives_on_heartbeats(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    # stall threshold: 2.5 x 0.2 s = 0.5 s; the job runs ten times longer
    job_id = await queue.insert_job(sq.Job("work", {"sleep": 5}))
    workers(), workers()
    assert job_id is not None
    job = await queue.wait_for_job(job_id, timeout=30)
    assert job.status is sq.JobStatus.COMPLETED
    assert (job.attempt, job.reprocess_count) == (1, 0)
    assert len(executions(dsn)) == 1


async def test_a_killed_worker_loses_no_job(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    job_id = await queue.insert_job(sq.Job("work", {"sleep": 2}))
    doomed = workers()
    await eventually(lambda: any(r[1] == doomed.pid for r in executions(dsn)), timeout=20)
    doomed.kill()  # SIGKILL mid-job: no cleanup, no result
    assert count(dsn, "status = 'running'") == 1
    rescuer = workers()
    assert job_id is not None
    await eventually(lambda: count(dsn, "id = %s AND status = 'completed'", [job_id]), timeout=30)
    job = await queue.get_job(job_id)
    assert job is not None and (job.attempt, job.reprocess_count) == (1, 1)
    runs = executions(dsn)
    assert [r[1] for r in runs] == [doomed.pid, rescuer.pid]  # at-least-once: it ran twice
    assert runs[0][3] is None and runs[1][3] is not None


async def test_a_job_that_kills_its_worker_ends_as_bad_job(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    job_id = await queue.insert_job(sq.Job("work", {"crash": True}))
    for _ in range(8):
        worker = workers("--max-reprocess-count", "2")
        deadline = time.monotonic() + 20
        while worker.proc.poll() is None and time.monotonic() < deadline:
            if count(dsn, "status = 'bad_job'"):
                break
            await asyncio.sleep(0.05)
        if count(dsn, "status = 'bad_job'"):
            break
        assert worker.proc.returncode == 17, worker.output()
    job = await queue.get_job(job_id)  # type: ignore[arg-type]
    assert job is not None and job.status is sq.JobStatus.BAD_JOB
    assert job.reprocess_count == 2 and "poison" in (job.last_error or "")
    assert len(executions(dsn)) == 2


async def test_wait_for_job_across_processes(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    workers()
    job_id = await queue.insert_job(sq.Job("work", {"sleep": 0.2}))
    assert job_id is not None
    job = await queue.wait_for_job(job_id, timeout=20)
    assert job.status is sq.JobStatus.COMPLETED
    assert executions(dsn)[0][1] != __import__("os").getpid()


async def test_sigterm_drains_running_jobs(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers()
    await queue.insert_jobs([sq.Job("work", {"sleep": 1}) for _ in range(5)])
    await eventually(lambda: len(executions(dsn)) == 5, timeout=20)
    output = worker.terminate(timeout=30)
    assert worker.proc.returncode == 0, output
    assert count(dsn, "status = 'completed'") == 5
    assert "finishing running jobs" in output


async def test_sigterm_past_the_timeout_returns_jobs_without_spending_attempts(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers("--shutdown-timeout", "0.5")
    await queue.insert_jobs([sq.Job("work", {"sleep": 60}) for _ in range(3)])
    await eventually(lambda: len(executions(dsn)) == 3, timeout=20)
    started = time.monotonic()
    output = worker.terminate(timeout=30)
    assert time.monotonic() - started < 10
    assert worker.proc.returncode == 0, output
    assert count(dsn, "status = 'pending' AND attempt = 0 AND reprocess_count = 0") == 3, output


async def test_a_second_sigterm_interrupts_at_once(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers("--shutdown-timeout", "60")
    await queue.insert_jobs([sq.Job("work", {"sleep": 60}) for _ in range(2)])
    await eventually(lambda: len(executions(dsn)) == 2, timeout=20)
    worker.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    started = time.monotonic()
    output = worker.terminate(timeout=30)
    assert time.monotonic() - started < 10, output
    assert count(dsn, "status = 'pending' AND attempt = 0") == 2, output


async def test_stop_in_process_lets_jobs_finish_within_the_timeout(dsn: str) -> None:
    finished: list[int] = []

    class Sleepy(sq.Handler):
        QUEUE = "sleepy"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            await asyncio.sleep(job.data)
            finished.append(job.data)

    async with sq.SimpleQueue.from_url(dsn) as queue:
        queue.register_handler(Sleepy())
        await queue.insert_jobs(
            [sq.Job("sleepy", 0.3), sq.Job("sleepy", 0.3), sq.Job("sleepy", 60)]
        )
        await queue.start()
        await eventually(lambda: count(dsn, "status = 'running'") == 3)
        await queue.stop(timeout=1.0)
        assert not queue.running
    assert finished == [0.3, 0.3]
    assert count(dsn, "status = 'completed'") == 2
    assert count(dsn, "status = 'pending' AND attempt = 0 AND data = '60'") == 1
