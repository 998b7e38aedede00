"""Durability modes: a fast queue's own writes commit with synchronous_commit off, a durable
queue's never do, inserts never do; set and shown on every surface; on a real PostgreSQL.

A server crash is not needed to see the mode: synchronous_commit is a setting of each
transaction, read at its commit. A trigger records, for every row a statement writes,
the setting of the statement's transaction when it ends (after-row triggers run at the
end of the statement; the library's statements are each a transaction of their own, so
that is the setting their commit uses).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg_pool import AsyncConnectionPool

import simplequeue as sq
from simplequeue.drivers import commits_alone, run, run_sync
from simplequeue.durability import FastQueues
from simplequeue.runtime.results import ResultWriter
from simplequeue.store import Outcome, Store
from tests.conftest import FAST, count, eventually, query

OBSERVE = """
CREATE TABLE public.observed (
    n    bigserial PRIMARY KEY,
    job  uuid,
    queue text,
    kind text,
    sync text,
    xact text,
    at   timestamptz
);
CREATE FUNCTION public.observe() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.observed (job, queue, kind, sync, xact, at)
    VALUES (
        NEW.id,
        NEW.queue,
        CASE WHEN TG_OP = 'INSERT' THEN 'insert'
             WHEN OLD.status IS DISTINCT FROM NEW.status THEN NEW.status
             WHEN OLD.scheduled AND NOT NEW.scheduled THEN 'promoted'
             WHEN OLD.progress IS DISTINCT FROM NEW.progress THEN 'progress'
             WHEN OLD.heartbeat_at IS DISTINCT FROM NEW.heartbeat_at THEN 'beat'
             ELSE 'other' END,
        current_setting('synchronous_commit'),
        pg_current_xact_id()::text,
        clock_timestamp());
    RETURN NULL;
END
$$;
CREATE FUNCTION public.observe_park() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.observed (queue, kind, sync, xact, at)
    VALUES (NEW.queue, 'park', current_setting('synchronous_commit'),
            pg_current_xact_id()::text, clock_timestamp());
    RETURN NULL;
END
$$;
CREATE TRIGGER observe AFTER INSERT OR UPDATE ON simplequeue.jobs
    FOR EACH ROW EXECUTE FUNCTION public.observe();
CREATE TRIGGER observe AFTER INSERT OR UPDATE ON simplequeue.parked_keys
    FOR EACH ROW EXECUTE FUNCTION public.observe_park();
"""
"""What the tests look at: each row written to jobs (and parked_keys), with the
synchronous_commit of its transaction at the end of the statement that wrote it."""


def observe(dsn: str) -> None:
    query(dsn, OBSERVE)


def observed(dsn: str, where: str = "true", params: Any = None) -> list[tuple[Any, ...]]:
    """(queue, kind, sync, xact) of the rows written, in order."""
    return query(
        dsn, f"SELECT queue, kind, sync, xact FROM public.observed WHERE {where} ORDER BY n", params
    )


def settings(dsn: str, where: str, params: Any = None) -> set[str]:
    return {row[2] for row in observed(dsn, where, params)}


def worker(dsn: str, *handlers: sq.Handler, **settings: Any) -> sq.SimpleQueue:
    queue = sq.SimpleQueue.from_url(dsn, **{**FAST, **settings})
    for handler in handlers:
        queue.register_handler(handler)
    return queue


PARKED: set[str] = set()
"""The jobs that parked their key once already (a park gives the attempt back)."""


def work(name: str) -> sq.Handler:
    """Reports progress, runs long enough to be beaten, fails once or parks its key once
    when asked, and returns a result."""

    class Work(sq.Handler):
        QUEUE = name

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
            data = job.data
            if data.get("fail") and job.attempt == 1:
                raise RuntimeError("the first attempt fails")
            if data.get("park") and str(job.id) not in PARKED:
                PARKED.add(str(job.id))
                return sq.JobResult.park(datetime.now(UTC) + timedelta(seconds=0.2))
            assert await job.set_progress({"half": data["n"]})
            await asyncio.sleep(float(data.get("sleep", 0.3)))
            return {"n": data["n"]}

    return Work()


async def completed(dsn: str, n: int, queue: str | None = None, timeout: float = 20) -> None:
    where = "status = 'completed'" + ("" if queue is None else " AND queue = %s")
    params = None if queue is None else [queue]
    await eventually(lambda: count(dsn, where, params) == n, timeout=timeout)


# -- setting it ------------------------------------------------------------------------


async def test_configure_queue_stores_the_durability_and_reads_it_back(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    info = await queue.configure_queue("q", max_running=2, durability=sq.Durability.FAST)
    assert info.durability is sq.Durability.FAST
    assert info.limits == sq.QueueLimits(max_running=2)
    [listed] = await queue.list_queues()
    assert listed.durability is sq.Durability.FAST
    assert listed.to_dict()["durability"] == "fast"
    # Not a limit: the queue is claimed by the plain claim (no turns under a lock).
    assert (await queue.configure_queue("plain", durability="fast")).durability == "fast"
    assert query(dsn, "SELECT controlled FROM simplequeue.queues WHERE name = 'plain'") == [
        (False,)
    ]
    # Each call sets them all: a call that leaves it out makes the queue durable again.
    info = await queue.configure_queue("q", max_running=3)
    assert info.durability is sq.Durability.DURABLE
    # Declared by a worker, paused by an operator: durable until configured.
    await queue.declare_queues(["declared"])
    await queue.pause_queue("paused")
    found = {i.name: i.durability for i in await queue.list_queues()}
    assert found["declared"] == found["paused"] == sq.Durability.DURABLE
    with sq.SyncQueue.from_url(dsn) as sync:
        assert sync.configure_queue("s", durability="fast").durability is sq.Durability.FAST
        assert sync.configure_queue("s").durability is sq.Durability.DURABLE


@pytest.mark.parametrize("bad", ["slow", "FAST", "Fast", "", None, True, 1, b"fast", ["fast"]])
async def test_a_bad_durability_is_refused_and_changes_nothing(
    queue: sq.SimpleQueue, dsn: str, bad: Any
) -> None:
    await queue.configure_queue("q", max_running=5, durability="fast")
    with pytest.raises(sq.InvalidArgumentError, match="durability must be 'durable' or 'fast'"):
        await queue.configure_queue("q", durability=bad)
    with sq.SyncQueue.from_url(dsn) as sync, pytest.raises(sq.InvalidArgumentError):
        sync.configure_queue("q", durability=bad)
    [info] = await queue.list_queues()
    assert info.durability is sq.Durability.FAST and info.limits.max_running == 5


async def test_the_schema_knows_the_modes_python_knows(dsn: str) -> None:
    """The modes are defined once in Python (`Durability`) and checked by the schema."""
    [(definition,)] = query(
        dsn,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conname = 'queues_durability_known'",
    )
    for mode in sq.Durability:
        assert f"'{mode.value}'" in definition
    with pytest.raises(psycopg.errors.CheckViolation):
        query(dsn, "INSERT INTO simplequeue.queues (name, durability) VALUES ('q', 'slow')")


def test_the_command_line_sets_and_shows_it(dsn: str) -> None:
    from simplequeue.cli import cli

    runner = CliRunner()
    done = runner.invoke(cli, ["queues", "configure", "q", "--durability", "fast", "--dsn", dsn])
    assert done.exit_code == 0, done.output
    assert "durability fast" in done.output
    listed = runner.invoke(cli, ["queues", "list", "--dsn", dsn])
    assert listed.exit_code == 0 and "fast" in listed.output
    refused = runner.invoke(cli, ["queues", "configure", "q", "--durability", "slow", "--dsn", dsn])
    assert refused.exit_code == 2 and "slow" in refused.output
    assert query(dsn, "SELECT durability FROM simplequeue.queues") == [("fast",)]
    again = runner.invoke(cli, ["queues", "configure", "q", "--max-running", "2", "--dsn", dsn])
    assert again.exit_code == 0 and "durability durable" in again.output


# -- what it does ----------------------------------------------------------------------


async def test_a_fast_queue_processes_its_jobs_and_commits_its_own_writes_fast(dsn: str) -> None:
    observe(dsn)
    # The failed attempt's retry waits out the park and the poller's next look at which
    # queues are controlled: a claim while the key is parked goes through
    # claim_controlled, which is durable by design.
    async with worker(dsn, work("fast"), result_flush_interval=0.05, backoff=sq.Fixed(2)) as queue:
        await queue.configure_queue("fast", durability="fast")
        jobs = [sq.Job("fast", {"n": n}) for n in range(20)]
        jobs += [sq.Job("fast", {"n": 100, "fail": True})]
        jobs += [sq.Job("fast", {"n": 200, "park": True}, concurrency_key="partner")]
        ids = await queue.insert_jobs(jobs)
        await queue.start()
        await completed(dsn, 22)
        for job_id, job in zip(ids, jobs, strict=True):
            stored = await queue.get_job(job_id)
            assert stored is not None and stored.status == sq.JobStatus.COMPLETED
            assert stored.result == {"n": job.data["n"]}
            assert stored.progress == {"half": job.data["n"]}
        failed = await queue.get_job(ids[20])
        assert failed is not None and failed.attempt == 2 and len(failed.errors) == 1
    kinds = {kind for _, kind, _, _ in observed(dsn)}
    assert kinds == {"insert", "running", "progress", "beat", "pending", "park", "promoted",
                     "completed"}  # fmt: skip
    # Every write of the worker for the queue's jobs committed fast; the insert did not.
    assert settings(dsn, "kind <> 'insert'") == {"off"}
    assert settings(dsn, "kind = 'insert'") == {"on"}


async def test_a_durable_queue_is_never_weakened_by_a_fast_one_beside_it(dsn: str) -> None:
    """One worker, a fast queue and a durable one running side by side: claims, beats and
    result batches hold jobs of both. No write of a durable job commits fast; the fast
    queue's results are written apart (their own transactions), fast."""
    observe(dsn)
    async with worker(
        dsn, work("fast"), work("durable"), result_flush_interval=0.2, queue_permits=20
    ) as queue:
        await queue.configure_queue("fast", durability="fast")
        for round_ in range(3):
            await queue.insert_jobs(
                [
                    sq.Job(name, {"n": n, "sleep": 0.4})
                    for name in ("fast", "durable")
                    for n in range(10)
                ]
            )
            if round_ == 0:
                await queue.start()
            await completed(dsn, 20 * (round_ + 1))
    assert settings(dsn, "queue = 'durable'") == {"on"}
    assert settings(dsn, "queue = 'fast' AND kind IN ('completed', 'progress')") == {"off"}
    # Each completion's transaction held jobs of one queue only.
    queues_of: dict[str, set[str]] = {}
    for queue_name, _, _, xact in observed(dsn, "kind = 'completed'"):
        queues_of.setdefault(xact, set()).add(queue_name)
    assert all(len(names) == 1 for names in queues_of.values())
    # The batches did mix (the writer split them): completions of both queues were
    # written between two of the other's.
    order = [row[0] for row in observed(dsn, "kind = 'completed'")]
    assert sum(a != b for a, b in itertools.pairwise(order)) >= 1
    # Claims and beats that held jobs of both queues committed durably.
    assert "on" in settings(dsn, "queue = 'fast' AND kind IN ('running', 'beat')")


async def test_a_mixed_batch_of_results_is_written_apart(queue: sq.SimpleQueue, dsn: str) -> None:
    """The result writer itself, given a batch of outcomes of both queues."""
    observe(dsn)
    ids = await queue.insert_jobs([sq.Job(name, n) for n in range(5) for name in ("f", "d")])
    store = Store(queue.schema)
    async with queue.pool.connection() as conn:
        claimed = await run(conn, store.claim(["f", "d"], [5, 5], 10))
    assert len(claimed) == len(ids) == 10
    fast = FastQueues()
    fast.names = frozenset({"f"})
    writer = ResultWriter(queue.pool, store, batch_size=100, flush_interval=0.0, fast_queues=fast)
    for n, job in enumerate(claimed):
        status = ("completed", "failed", "pending")[n % 3]
        outcome = Outcome(job.id, job.lease, status, error=None if n % 3 == 0 else "e")
        outcome.queue = job.queue
        await writer.submit(outcome)
    writer.close(time.monotonic() + 5)
    await writer.run()
    assert writer.written == 10
    ended = "kind IN ('completed', 'failed', 'pending')"
    assert settings(dsn, f"{ended} AND queue = 'd'") == {"on"}
    assert settings(dsn, f"{ended} AND queue = 'f'") == {"off"}
    assert len({row[3] for row in observed(dsn, ended)}) >= 2


async def test_a_change_of_mode_takes_effect_within_a_second(dsn: str) -> None:
    observe(dsn)

    async def one(queue: sq.SimpleQueue, n: int) -> set[str]:
        job_id = await queue.insert_job(sq.Job("q", {"n": n, "sleep": 0.25}))
        await eventually(lambda: count(dsn, "id = %s AND status = 'completed'", [job_id]))
        return settings(dsn, "job = %s AND kind <> 'insert'", [job_id])

    async with worker(dsn, work("q")) as queue:
        await queue.start()
        assert await one(queue, 1) == {"on"}
        await queue.configure_queue("q", durability=sq.Durability.FAST)
        await asyncio.sleep(1.5)
        assert await one(queue, 2) == {"off"}
        await queue.configure_queue("q")  # durable again
        await asyncio.sleep(1.5)
        assert await one(queue, 3) == {"on"}


async def test_a_busy_worker_follows_a_change_while_its_jobs_run(dsn: str) -> None:
    """Every permit taken, no claim for a while: the worker still hears within a second
    that its fast queue became durable, and its running job's writes commit durably."""
    observe(dsn)
    switched = asyncio.Event()

    class Long(sq.Handler):
        QUEUE = "long"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            for step in range(40):
                await job.set_progress(step)
                if step == 10:
                    switched.set()
                await asyncio.sleep(0.1)

    async with worker(dsn, Long(), global_permits=1, empty_poll_sleep=5.0) as queue:
        await queue.configure_queue("long", durability="fast")
        await queue.insert_job(sq.Job("long", {}))
        await queue.start()
        await asyncio.wait_for(switched.wait(), 10)
        [(at,)] = query(dsn, "SELECT clock_timestamp()")
        await queue.configure_queue("long")
        await completed(dsn, 1)
    assert settings(dsn, "kind = 'progress' AND at < %s", [at]) == {"off"}
    assert settings(dsn, "kind <> 'insert' AND at > %s", [at + timedelta(seconds=1.5)]) == {"on"}


async def test_inserts_are_never_fast(dsn: str) -> None:
    """The library's own insert commits durably, and an insert in the caller's
    transaction leaves that transaction's setting as the caller made it."""
    observe(dsn)
    async with sq.SimpleQueue.from_url(dsn) as queue:
        await queue.configure_queue("fast", durability="fast")
        await queue.insert_job(sq.Job("fast", 1))
        await queue.insert_jobs([sq.Job("fast", n) for n in range(3)])
        await queue.insert_jobs([sq.Job("fast", n) for n in range(600)])  # COPY
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await conn.execute("SET LOCAL synchronous_commit = remote_write")
            await queue.insert_job(sq.Job("fast", "mine"), conn=conn)
            cur = await conn.execute("SHOW synchronous_commit")
            assert await cur.fetchone() == ("remote_write",)
    assert settings(dsn, "kind = 'insert' AND job IS NOT NULL") == {"on", "remote_write"}
    assert len(observed(dsn, "kind = 'insert' AND sync = 'remote_write'")) == 1


async def test_on_a_pool_not_in_autocommit_a_fast_queue_stays_durable(dsn: str) -> None:
    """There the statements of one borrow share a transaction: a fast one would take a
    durable one with it, so none is fast. (The heartbeat thread's own connection is in
    autocommit whatever the pool's: its beats may be.)"""
    observe(dsn)
    pool = AsyncConnectionPool(dsn, open=False, kwargs={"autocommit": False})
    async with pool, sq.SimpleQueue(pool, **FAST) as queue:
        queue.register_handler(work("fast"))
        await queue.configure_queue("fast", durability="fast")
        await queue.insert_jobs([sq.Job("fast", {"n": n}) for n in range(5)])
        await queue.start()
        await completed(dsn, 5)
    assert settings(dsn, "kind <> 'beat'") == {"on"}


# -- the statements --------------------------------------------------------------------


async def test_each_write_commits_fast_only_when_asked(queue: sq.SimpleQueue, dsn: str) -> None:
    """Every plan of the worker's writes, run in a transaction: with fast=True it leaves
    synchronous_commit off for that transaction only; with fast=False it leaves the
    session's setting alone."""
    store = Store(queue.schema)
    await queue.configure_queue("limited", max_running=100)
    await queue.insert_jobs([sq.Job("q", n) for n in range(20)])
    await queue.insert_jobs([sq.Job("limited", n, concurrency_key=f"k{n}") for n in range(20)])
    soon = datetime.now(UTC) + timedelta(seconds=0.1)
    await queue.insert_jobs([sq.Job("q", "scheduled", run_at=soon) for _ in range(2)])
    await asyncio.sleep(0.2)  # due, not yet promoted
    later = datetime.now(UTC) + timedelta(hours=1)

    with psycopg.connect(dsn, autocommit=True) as conn:

        def setting_after(plan: Any) -> tuple[str, Any]:
            with conn.transaction():
                value = run_sync(conn, plan)
                row = conn.execute("SELECT current_setting('synchronous_commit')").fetchone()
            assert row is not None
            return str(row[0]), value

        for fast in (True, False):
            expected = "off" if fast else "on"
            assert setting_after(store.promote_due(["q"], 1, fast=fast)) == (expected, 1)
            sync, plain = setting_after(store.claim(["q"], [3], 3, fast=fast))
            assert (sync, len(plain)) == (expected, 3)
            sync, limited = setting_after(store.claim_controlled(["limited"], [3], fast=fast))
            assert (sync, len(limited)) == (expected, 3)
            runs = [(job.id, job.lease) for job in plain + limited]
            assert setting_after(store.heartbeat(runs, fast=fast))[0] == expected
            first = plain[0]
            progress = store.set_progress(first.id, first.lease, "1", None, fast=fast)
            assert setting_after(progress) == (expected, True)
            parked = limited[0]  # its key only: the others of the queue are claimed on
            outcomes = [
                Outcome(plain[0].id, plain[0].lease, "completed", result='{"r": 1}'),
                Outcome(plain[1].id, plain[1].lease, "failed", error="no"),
                Outcome(parked.id, parked.lease, "pending", refund=1, park_until=later),
            ]
            sync, changed = setting_after(store.write_outcomes(outcomes, fast=fast))
            assert (sync, len(changed)) == (expected, 3)
            assert setting_after(store.park_runs(outcomes[2:], fast=fast))[0] == "on"  # ended
            # The setting was the transaction's: the session's own is untouched.
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert commits_alone(conn)
        with conn.transaction():
            assert not commits_alone(conn)
    with psycopg.connect(dsn) as conn:
        assert not commits_alone(conn)
    assert count(dsn, "status = 'completed' AND result IS NOT NULL") == 2


def test_the_example_of_the_durability_page(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_docs_examples import DOCS, run, url

    observe(dsn)
    monkeypatch.setenv("DATABASE_URL", url(dsn))
    run(["durability"], DOCS / "durability.md")
    assert count(dsn, "status = 'completed' AND result IS NOT NULL") == 100
    assert settings(dsn, "kind = 'completed'") == {"off"}
    assert settings(dsn, "kind = 'insert'") == {"on"}
