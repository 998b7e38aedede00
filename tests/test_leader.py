"""One leader for the maintenance: elected through a lease row, renewed from the event
loop, handed over at a graceful stop, lost on a blocked loop, an outage or a newer term;
and every maintenance step correct while two leaders overlap."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import simplequeue as sq
from chaos.proxy import SilentProxy
from tests.conftest import FAST, WorkerProcess, count, eventually, query

TTL = 1.0
"""The lease of these tests: renewed every third of a second."""


class Ok(sq.Handler):
    QUEUE = "ok"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        return None


def lease(dsn: str) -> tuple[Any, ...] | None:
    """The maintenance lease as the database holds it: holder, term, live or not."""
    rows = query(
        dsn,
        "SELECT worker_id, term, expires_at > now(), renewed_at FROM simplequeue.leader "
        "WHERE name = 'maintenance'",
    )
    return rows[0] if rows else None


def holder(dsn: str) -> uuid.UUID | None:
    row = lease(dsn)
    return row[0] if row and row[2] else None


@asynccontextmanager
async def started(dsn: str, n: int, **settings: Any) -> AsyncIterator[list[sq.SimpleQueue]]:
    async with AsyncExitStack() as stack:
        queues = []
        for _ in range(n):
            queue = await stack.enter_async_context(
                sq.SimpleQueue.from_url(dsn, **{**FAST, "leader_ttl": TTL, **settings})
            )
            queue.register_handler(Ok())
            await queue.start()
            queues.append(queue)
        yield queues


def leaders(queues: list[sq.SimpleQueue]) -> list[sq.SimpleQueue]:
    return [q for q in queues if q.stats().leader]


def stall(dsn: str, n: int = 1, ago: str = "1 minute") -> None:
    """`n` running jobs of a worker that died `ago`."""
    query(
        dsn,
        "INSERT INTO simplequeue.jobs (id, queue, data, status, attempt, lease, heartbeat_at) "
        "SELECT gen_random_uuid(), 'ok', to_jsonb(i), 'running', 1, 1, now() - %s::interval "
        "FROM generate_series(1, %s) AS i",
        [ago, n],
    )


async def test_one_of_several_workers_leads_and_only_it_runs_the_maintenance(dsn: str) -> None:
    async with started(dsn, 3) as queues:
        [leader] = await eventually(lambda: leaders(queues))
        await eventually(lambda: "reaper" in leader.stats().services)
        for queue in queues:
            services = queue.stats().services
            assert ("reaper" in services) is (queue is leader), services
            assert ("janitor" in services) is (queue is leader), services
            assert "leader" in services
        stats = leader.stats()
        assert stats.leader_term is not None and stats.leader_term >= 1
        assert holder(dsn) == leader.worker_id
        listed = await eventually(lambda: _all_listed(queues))
        assert [w.id for w in listed if w.leader] == [leader.worker_id]
        with sq.SyncQueue.from_url(dsn) as sync:
            assert [w.id for w in sync.list_workers() if w.leader] == [leader.worker_id]
        # the leader's reaper does the work of the fleet
        stall(dsn, 3)
        await eventually(lambda: count(dsn, "status = 'completed'") == 3)


async def _all_listed(queues: list[sq.SimpleQueue]) -> list[sq.WorkerInfo] | None:
    found = await queues[0].list_workers()
    return found if len(found) == len(queues) and any(w.leader for w in found) else None


async def test_the_lease_is_renewed_under_the_same_term(dsn: str) -> None:
    async with started(dsn, 2) as queues:
        [leader] = await eventually(lambda: leaders(queues))
        first = lease(dsn)
        assert first is not None
        await asyncio.sleep(3 * TTL)  # three TTLs: it would have expired thrice
        again = lease(dsn)
        assert again is not None and again[:3] == (leader.worker_id, first[1], True)
        assert again[3] > first[3]  # renewed
        assert leaders(queues) == [leader] and leader.stats().leader_term == first[1]


async def test_a_graceful_stop_hands_the_lease_over_at_once(dsn: str) -> None:
    settings = {**FAST, "leader_ttl": 6.0}  # tried every 2 s; an expiry would take 6
    async with (
        sq.SimpleQueue.from_url(dsn, **settings) as first,
        sq.SimpleQueue.from_url(dsn, **settings) as second,
    ):
        await first.start()
        await eventually(lambda: first.stats().leader)
        await second.start()
        term = first.stats().leader_term
        assert term is not None
        await first.stop()
        row = lease(dsn)
        assert row is not None and row[0] is None and not row[2]  # given up, not expiring
        stopped = time.monotonic()
        await eventually(lambda: second.stats().leader, timeout=15)
        took = time.monotonic() - stopped
        assert took < 6 / 3 + 0.5, f"taken over after {took:.1f}s"
        assert second.stats().leader_term == term + 1
        assert holder(dsn) == second.worker_id


async def test_a_leader_superseded_stops_its_duties_at_once(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with started(dsn, 1) as (queue,):
        await eventually(lambda: "reaper" in queue.stats().services)
        # Another worker took the lease (as after this one's expiry) and holds it.
        query(
            dsn,
            "UPDATE simplequeue.leader SET worker_id = gen_random_uuid(), term = term + 1, "
            "expires_at = now() + interval '1 hour'",
        )
        await eventually(lambda: not queue.stats().leader, timeout=TTL * 2)
        stats = queue.stats()
        assert "reaper" not in stats.services and stats.leader_term is None
        assert "lost the maintenance lease" in caplog.text
        stall(dsn)
        await asyncio.sleep(1.5 * TTL)
        assert count(dsn, "status = 'running'") == 1  # nobody here reaps it any more


async def test_a_leader_cut_off_from_the_database_stops_leading(dsn: str) -> None:
    """Packets dropped: its renewals hang. Its duties stop once the lease may have
    expired, and a worker that reaches the database takes over."""
    params = conninfo_to_dict(dsn)
    with SilentProxy(str(params.get("host", "127.0.0.1")), int(params.get("port", 5432))) as proxy:
        proxied = make_conninfo(dsn, host="127.0.0.1", port=proxy.port)
        async with sq.SimpleQueue.from_url(proxied, **FAST, leader_ttl=TTL) as cut:
            await cut.start()
            await eventually(lambda: "reaper" in cut.stats().services)
            async with sq.SimpleQueue.from_url(dsn, **FAST, leader_ttl=TTL) as other:
                await other.start()
                proxy.freeze()
                frozen = time.monotonic()
                await eventually(lambda: not cut.stats().leader, timeout=TTL * 2)
                assert time.monotonic() - frozen <= TTL + 0.2
                assert "reaper" not in cut.stats().services
                await eventually(lambda: other.stats().leader, timeout=TTL * 3)
                stall(dsn)
                await eventually(lambda: count(dsn, "status = 'pending'") == 1)  # reaped
                proxy.thaw()


async def test_a_leader_whose_loop_is_blocked_loses_the_lease_to_one_that_reaps(
    dsn: str,
) -> None:
    """A handler that never awaits blocks the leader's event loop, where the maintenance
    runs: its lease is renewed on that loop, so it expires, and a worker on another loop
    (here a thread) takes over and reaps. Once the loop runs again, the old leader knows
    at once that its lease is gone, before any renewal tells it."""
    async with sq.SimpleQueue.from_url(dsn, **FAST, leader_ttl=TTL) as blocked:
        await blocked.start()
        await eventually(lambda: "reaper" in blocked.stats().services)
        ready, stop_other = threading.Event(), threading.Event()
        other_ids: list[uuid.UUID] = []

        async def other_worker() -> None:
            async with sq.SimpleQueue.from_url(dsn, **FAST, leader_ttl=TTL) as other:
                await other.start()
                other_ids.append(other.worker_id)
                ready.set()
                await asyncio.to_thread(stop_other.wait, 60)

        thread = threading.Thread(target=asyncio.run, args=(other_worker(),))
        thread.start()
        try:
            assert await asyncio.to_thread(ready.wait, 30)
            stall(dsn, ago="0 seconds")  # stalled 0.5 s from now
            time.sleep(4 * TTL)  # noqa: ASYNC251 (the handler that blocks the loop)
            assert not blocked.stats().leader, "a lease past its TTL is not held"
            assert holder(dsn) == other_ids[0]
            # reaped while this loop could run nothing: by the other worker
            assert count(dsn, "status = 'running'") == 0
            await eventually(lambda: "reaper" not in blocked.stats().services, timeout=TTL)
        finally:
            stop_other.set()
            thread.join(30)


async def test_without_election_every_worker_runs_the_maintenance(dsn: str) -> None:
    async with started(dsn, 2, leader_election=False) as queues:
        for queue in queues:
            stats = queue.stats()
            assert {"reaper", "janitor"} <= set(stats.services) and "leader" not in stats.services
            assert not stats.leader and stats.leader_term is None
        stall(dsn)
        await eventually(lambda: count(dsn, "status = 'completed'") == 1)
        assert lease(dsn) is None
        assert not any(w.leader for w in await queues[0].list_workers())


async def test_a_schema_without_the_lease_table_runs_the_maintenance_unelected(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="simplequeue.leader")
    query(dsn, "DROP TABLE simplequeue.leader")
    async with started(dsn, 1) as (queue,):
        await eventually(lambda: "reaper" in queue.stats().services)
        assert not queue.stats().leader
        stall(dsn)
        await eventually(lambda: count(dsn, "status = 'completed'") == 1)
    assert "without an election" in caplog.text


async def test_manual_sweeps_run_in_any_worker(dsn: str) -> None:
    hourly = {"reaper_interval": 3600, "janitor_interval": 3600}  # the leader's first round only
    async with started(dsn, 2, **hourly) as queues:
        [leader] = await eventually(lambda: leaders(queues))
        [follower] = [q for q in queues if q is not leader]
        await asyncio.sleep(0.5)
        stall(dsn, ago="1 hour")
        query(dsn, "UPDATE simplequeue.jobs SET queue = 'nobody'")  # nobody runs them again
        assert (await follower.reap()).recovered == 1
        query(dsn, "UPDATE simplequeue.jobs SET status = 'completed'")
        assert (await follower.run_janitor()).archived == 1


async def test_overlapping_leaders_lose_and_duplicate_nothing(dsn: str) -> None:
    """Four reapers and four janitors at once on the same rows (as leaders that overlap
    for a moment): every row is changed once, none is lost."""
    stall(dsn, 1500)
    query(  # out of attempts, pending: the reaper's other step
        dsn,
        "INSERT INTO simplequeue.jobs (id, queue, data, status, attempt) "
        "SELECT gen_random_uuid(), 'ok', to_jsonb(-i), 'pending', 5 "
        "FROM generate_series(1, 700) AS i",
    )
    async with AsyncExitStack() as stack:
        queues = [
            await stack.enter_async_context(
                sq.SimpleQueue.from_url(dsn, janitor_batch_size=37, max_reprocess_count=2)
            )
            for _ in range(4)
        ]
        reports = []
        while count(dsn, "status = 'running' OR (status = 'pending' AND attempt >= max_attempts)"):
            reports += await asyncio.gather(*(q.reap() for q in queues))
        assert sum(r.recovered for r in reports) == 1500
        assert sum(r.exhausted for r in reports) == 700
        rows = query(dsn, "SELECT reprocess_count, attempt, status FROM simplequeue.jobs")
        recovered = [r for r in rows if r[0] > 0]
        assert len(recovered) == 1500 and all(r[0] == 1 for r in recovered)
        assert all(r[1:] == (0, "pending") for r in recovered)  # the attempt given back once
        assert count(dsn, "status = 'failed'") == 700
        # half completed, the rest dead: the janitors move each row exactly once
        query(dsn, "UPDATE simplequeue.jobs SET status = 'completed' WHERE status = 'pending'")
        janitors = []
        while count(dsn):
            janitors += await asyncio.gather(*(q.run_janitor() for q in queues))
        assert sum(r.archived for r in janitors) == 1500 == count(dsn, table="archive")
        assert sum(r.dead_lettered for r in janitors) == 700 == count(dsn, table="dlq")
        assert not any(r.failed_steps for r in janitors)
        query(dsn, "UPDATE simplequeue.archive SET moved_at = now() - interval '30 days'")
        purged = await asyncio.gather(*(q.run_janitor() for q in queues))
        while count(dsn, table="archive"):
            purged += await asyncio.gather(*(q.run_janitor() for q in queues))
        assert sum(r.purged for r in purged) == 1500


def test_the_lease_ttl_is_derived_and_validated() -> None:
    assert sq.QueueConfig.build().leader_lease == 5.0
    assert sq.QueueConfig.build(heartbeat_interval=0.2).leader_lease == 1.0
    assert sq.QueueConfig.build(heartbeat_interval=2).leader_lease == 4.0
    assert sq.QueueConfig.build(heartbeat_interval=60).leader_lease == 5.0
    assert sq.QueueConfig.build(leader_ttl=12).leader_lease == 12.0
    for bad in (0.1, -1, "soon", 7200):
        with pytest.raises(sq.ConfigError, match="leader_ttl"):
            sq.QueueConfig.build(leader_ttl=bad)


@pytest.mark.slow
async def test_a_killed_leader_is_replaced_and_its_stalled_job_recovered(
    queue: sq.SimpleQueue, dsn: str, workers: Callable[..., WorkerProcess]
) -> None:
    """Four worker processes, one job each; the leader is SIGKILLed mid-job. Another
    process leads within a few seconds, its reaper takes the stalled job back, and the job
    completes elsewhere."""
    # Stalled after 2 s without a heartbeat (not the 0.5 s of 0.2 s beats): four worker
    # processes on a loaded machine can miss half a second, and the recovered run must not
    # be reaped a second time for that (at-least-once allows it; the count would differ).
    started = [
        workers("--global-permits", "1", "--leader-ttl", str(TTL), "--stall-factor", "10")
        for _ in range(4)
    ]
    await eventually(lambda: count(dsn, "true", table="workers") == 4, timeout=30)
    ids = await queue.insert_jobs([sq.Job("work", {"sleep": 2}) for _ in range(4)])

    def running_pids() -> set[int]:
        return {r[0] for r in query(dsn, "SELECT pid FROM public.test_executions")}

    await eventually(lambda: len(running_pids()) == 4, timeout=20)
    ((leader_id, leader_pid, term),) = query(
        dsn,
        "SELECT l.worker_id, w.pid, l.term FROM simplequeue.leader AS l "
        "JOIN simplequeue.workers AS w ON w.id = l.worker_id WHERE l.expires_at > now()",
    )
    [doomed] = [w for w in started if w.pid == leader_pid]
    ((stalled,),) = query(
        dsn,
        "SELECT id FROM simplequeue.jobs WHERE worker_id = %s AND status = 'running'",
        [leader_id],
    )
    doomed.kill()  # SIGKILL: no release, no result
    killed = time.monotonic()

    def new_leader() -> tuple[Any, ...] | None:
        row = lease(dsn)
        return row if row and row[2] and row[0] != leader_id else None

    successor = await eventually(new_leader, timeout=10, every=0.01)
    failover = time.monotonic() - killed
    assert failover < TTL * 4 / 3 + 1, f"a new leader after {failover:.2f}s"
    assert successor[1] == term + 1
    pids = {w.pid for w in started} - {leader_pid}
    [(successor_pid,)] = query(
        dsn, "SELECT pid FROM simplequeue.workers WHERE id = %s", [successor[0]]
    )
    assert successor_pid in pids
    print(f"failover after SIGKILL: {failover:.2f}s (lease {TTL}s)")
    await eventually(lambda: count(dsn, "status = 'completed'") == 4, timeout=30)
    job = await queue.get_job(stalled)
    assert job is not None and job.status is sq.JobStatus.COMPLETED
    assert (job.attempt, job.reprocess_count) == (1, 1)  # recovered by the reaper
    runs = [
        r[0]
        for r in query(dsn, "SELECT pid FROM public.test_executions WHERE job_id = %s", [stalled])
    ]
    assert runs[0] == leader_pid and runs[1] in pids and len(runs) == 2
    assert all(ids)
