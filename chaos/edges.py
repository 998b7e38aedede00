"""Scenarios at the edges: what only shows from outside, with an API call racing another, a
heartbeat window missed, threads that cannot be stopped, a network that goes silent, and an
application that keeps calling through a server restart."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

import simplequeue as sq
from chaos.harness import WorkerSettings, account, create_database, deadlocks, sql
from chaos.harness import wait_until_drained as drained_within
from chaos.proxy import SilentProxy
from chaos.scenarios import Context, Report, check_logs, insert, job, producer, remember

__all__ = ["EDGE_SCENARIOS"]

STALL = 0.3 * 2.5
"""The stall threshold of the fleets below (heartbeat 0.3 s)."""


async def _runs_started(dsn: str, ids: list[Any]) -> int:
    rows = await sql(
        dsn, "SELECT count(DISTINCT job_id) FROM chaos.executions WHERE job_id = ANY(%s)", [ids]
    )
    return int(rows[0][0])


async def _leads(dsn: str) -> bool:
    """Some worker holds the maintenance lease (runs the reaper)."""
    rows = await sql(dsn, "SELECT count(*) FROM simplequeue.leader WHERE expires_at > now()")
    return bool(rows[0][0])


async def _until(check: Any, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(every)
    return False


# -- 7. a missed heartbeat window ------------------------------------------------------


async def missed_beats(ctx: Context) -> Report:
    """Running jobs' rows are held locked past the stall threshold: their beats skip them,
    another worker's reaper hands them back (their own worker's reaper knows they run),
    and their worker claims them again while their first runs still execute. Each must run
    exactly twice: the stale run fenced off, the new one beating on after the stale one
    ends."""
    size, rng = ctx.size, ctx.rng
    report = Report("7 missed beats")
    db = "chaos_beats"
    dsn = await create_database(ctx.server, db, transitions=True)
    # Once the rows are free, the reaper (every 0.05 s) usually sweeps before the next beat
    # (every 0.3 s); rounds go on until enough of them had jobs reaped.
    settings = WorkerSettings(
        heartbeat_interval=0.3, global_permits=200, queue_permits=200,
        overrides={"reaper_interval": 0.05},
    )  # fmt: skip
    fleet = ctx.fleet("beats", db, settings, n=1)
    reaping = WorkerSettings(
        heartbeat_interval=0.3,
        overrides={"reaper_interval": 0.05},
        env={"CHAOS_QUEUES": "chaos_hung"},
    )
    reaper = ctx.fleet("beats-reaper", db, reaping, n=1)  # claims none of these jobs
    reaper.start()  # first: it leads the maintenance, so its reaper is the one that runs
    led = await _until(lambda: _leads(dsn), 30)
    report.check(led, "the reaping worker did not become the leader")
    fleet.start()
    held = rounds = reaping_rounds = 0
    async with producer(dsn) as queue:
        while reaping_rounds < size.edge_rounds and rounds < 4 * size.edge_rounds:
            rounds += 1
            jobs = [
                job("slow", rng, long=True, sync_share=0.3, work=3 * STALL + 1.0)
                for _ in range(size.edge_jobs)
            ]
            await insert(queue, dsn, jobs)
            ids = [j.id for j in jobs]
            started = await _until(lambda ids=ids: _started_all(dsn, ids), 30)
            report.check(started, "the jobs did not all start")
            async with await psycopg.AsyncConnection.connect(dsn) as locker:
                await locker.execute(
                    "SELECT 1 FROM simplequeue.jobs WHERE id = ANY(%s) FOR UPDATE", [ids]
                )
                await asyncio.sleep(3 * STALL)
                await locker.rollback()
            held += len(ids)
            await asyncio.sleep(2 * STALL)
            reaped_now = await sql(
                dsn,
                "SELECT count(*) FROM chaos.transitions WHERE source = 'reap' AND job_id = ANY(%s)",
                [ids],
            )
            reaping_rounds += int(reaped_now[0][0]) > 0
        drained = await drained_within(dsn, held, 60)
        report.check(drained, "jobs still pending or running at the end")
    exits = {**await fleet.stop(30), **await reaper.stop(30)}
    report.check(all(c == 0 for c, _ in exits.values()), f"unclean exit: {exits}")
    acc = await account(dsn)
    report.take(acc)
    runs = Counter(
        int(n) for (n,) in await sql(dsn, "SELECT count(*) FROM chaos.executions GROUP BY job_id")
    )
    ((reaped,),) = await sql(
        dsn, "SELECT count(DISTINCT job_id) FROM chaos.transitions WHERE source = 'reap'"
    )
    report.notes.append(
        f"{held} running jobs' rows held locked for {3 * STALL:.2f}s ({STALL:.2f}s stall "
        f"threshold) in {rounds} rounds, {reaping_rounds} of which ended with the reaper "
        f"first: {reaped} reaped by another worker and claimed again by their own; runs per job "
        + ", ".join(f"{k}: {v}" for k, v in sorted(runs.items()))
    )
    report.check(reaped > 0, "no job was reaped: the scenario is void")
    report.check(max(runs) <= 2, f"a job ran {max(runs)} times after one missed window")
    report.check(runs.get(2, 0) == reaped, f"{reaped} jobs reaped but {runs.get(2, 0)} ran twice")
    check_logs(report, fleet)
    return report


async def _started_all(dsn: str, ids: list[Any]) -> bool:
    return await _runs_started(dsn, ids) == len(ids)


# -- 8. sync handlers past their timeout -----------------------------------------------


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


async def sync_limits(ctx: Context) -> Report:
    """A sync queue whose handler blocks 1 s past a 0.3 s timeout, with 3 permits; and,
    while it is stuck, a healthy sync queue. Threads past their timeout keep their permits,
    so no more than 3 block at once, and the healthy queue's jobs never time out."""
    size = ctx.size
    report = Report("8 sync timeouts")
    db = "chaos_sync"
    dsn = await create_database(ctx.server, db, transitions=True)
    permits = 3
    fleet = ctx.fleet("sync", db, WorkerSettings(global_permits=50, queue_permits=permits), n=1)
    fleet.start()
    hung = [
        sq.Job("chaos_hung", {"plan": "hung", "work": 1.0}, max_attempts=2)
        for _ in range(size.edge_jobs // 4)
    ]
    healthy = [
        sq.Job("chaos_long_sync", {"plan": "ok", "work": 0.01}) for _ in range(size.edge_jobs)
    ]
    async with producer(dsn) as queue:
        await insert(queue, dsn, hung)
        await _until(lambda: _started_any(dsn, [j.id for j in hung]), 30)
        await asyncio.sleep(0.5)  # the first ones are past their timeout, still blocking
        t0 = time.monotonic()
        await insert(queue, dsn, healthy)
        ok = await _until(
            lambda: _all_in(dsn, [j.id for j in healthy], "completed"), 60, every=0.05
        )
        healthy_seconds = time.monotonic() - t0
        report.check(ok, "the healthy sync queue's jobs did not all complete")
        drained = await drained_within(dsn, len(hung) + len(healthy), 120)
        report.check(drained, "jobs still pending or running at the end")
        # the last runs are failed at their timeout; their threads end a moment later
        await _until(lambda: _all_ended(dsn, 2 * len(hung)), 10)
    exits = await fleet.stop(30)
    report.check(all(c == 0 for c, _ in exits.values()), f"unclean exit: {exits}")
    acc = await account(dsn)
    report.take(acc)
    rows = await sql(
        dsn,
        "SELECT extract(epoch FROM started), extract(epoch FROM ended) FROM chaos.executions "
        "WHERE queue = 'chaos_hung' AND ended IS NOT NULL",
    )
    intervals = [(float(a), float(b)) for a, b in rows]
    most = _most_at_once(intervals)
    timed_out = int(
        (
            await sql(
                dsn,
                "SELECT count(*) FROM simplequeue.jobs WHERE queue = 'chaos_long_sync' "
                "AND last_error IS NOT NULL",
            )
        )[0][0]
    )
    report.notes.append(
        f"{len(intervals)} runs of a sync handler blocking 1 s past a 0.3 s timeout, queue "
        f"permits {permits}: at most {most} threads blocked at once; {len(healthy)} jobs of a "
        f"healthy sync queue completed in {healthy_seconds:.1f}s, {timed_out} failed"
    )
    report.check(len(intervals) == 2 * len(hung), "some runs never recorded their end")
    report.check(most <= permits, f"{most} threads ran at once on a {permits}-permit queue")
    report.check(timed_out == 0, f"{timed_out} healthy jobs failed while the other queue hung")
    check_logs(report, fleet)
    return report


async def _all_ended(dsn: str, runs: int) -> bool:
    rows = await sql(
        dsn,
        "SELECT count(*) FROM chaos.executions WHERE queue = 'chaos_hung' AND ended IS NOT NULL",
    )
    return int(rows[0][0]) >= runs


async def _started_any(dsn: str, ids: list[Any]) -> bool:
    return await _runs_started(dsn, ids) > 0


async def _all_in(dsn: str, ids: list[Any], status: str) -> bool:
    rows = await sql(
        dsn,
        "SELECT count(*) FROM (SELECT id, status FROM simplequeue.jobs UNION ALL "
        "SELECT id, status FROM simplequeue.archive) AS t WHERE id = ANY(%s) AND status = %s",
        [ids, status],
    )
    return int(rows[0][0]) == len(ids)


# -- 9. a silent partition -------------------------------------------------------------


async def partition(ctx: Context) -> Report:
    """Workers reach the server through a proxy that goes silent: no byte passes, no
    connection closes. SIGTERM must still stop them within the documented bound; the jobs
    they leave running are recovered by the next fleet, none lost."""
    size, rng = ctx.size, ctx.rng
    report = Report("9 partition")
    db = "chaos_partition"
    dsn = await create_database(ctx.server, db, transitions=True)
    server = conninfo_to_dict(ctx.server.dsn)
    timeout = 2.0
    bound = timeout + 8.0  # stop(): the timeout, 5 s to write back, 2 s to cancel; 1 s to close
    jobs = [
        job("slow" if rng.random() < 0.5 else "ok", rng, long=True, work=rng.uniform(0.5, 3))
        for _ in range(size.edge_jobs * 4)
    ]
    with SilentProxy(str(server["host"]), int(server.get("port") or 5432)) as proxy:
        first = ctx.fleet(
            "partition-1", db,
            WorkerSettings(global_permits=40, queue_permits=40, shutdown_timeout=timeout),
            n=2, host="127.0.0.1", port=proxy.port,
        )  # fmt: skip
        first.start()
        for worker in first.alive():  # both connected before the network goes silent
            await worker.wait_ready()
        async with producer(dsn) as queue:
            await insert(queue, dsn, jobs)
        await _until(lambda: _runs_at_least(dsn, len(jobs) // 4), 60)
        running = int(
            (await sql(dsn, "SELECT count(*) FROM simplequeue.jobs WHERE status = 'running'"))[0][0]
        )
        proxy.freeze()
        exits = await first.stop(60)
        proxy.thaw()
    slowest = max(s for _, s in exits.values())
    report.notes.append(
        f"network silent under 2 workers with {running} jobs running; SIGTERM (timeout "
        f"{timeout:g}s): exits " + ", ".join(f"rc {c} after {s:.1f}s" for c, s in exits.values())
    )
    report.check(all(c == 0 for c, _ in exits.values()), f"unclean exit: {exits}")
    report.check(slowest <= bound + 1.5, f"a worker took {slowest:.1f}s to stop (bound {bound:g}s)")
    second = ctx.fleet("partition-2", db, WorkerSettings(global_permits=40, queue_permits=40))
    second.start()
    drained = await drained_within(dsn, len(jobs), 120)
    report.check(drained, "jobs still pending or running at the end")
    await second.stop(30)
    acc = await account(dsn, killed_pids=[w.pid for w in first.all])
    report.take(acc)
    report.restarts = "2 workers"
    check_logs(report, second)
    return report


async def _runs_at_least(dsn: str, n: int) -> bool:
    return int((await sql(dsn, "SELECT count(*) FROM chaos.executions"))[0][0]) >= n


# -- 10. inserts and cancels against the result writer ----------------------------------


async def contention(ctx: Context) -> Report:
    """Producers insert batches sharing unique keys in random orders, and cancellers cancel
    by fingerprint and by id, while two workers drain and write results: no call may fail
    and PostgreSQL may detect no deadlock."""
    size, rng = ctx.size, ctx.rng
    report = Report("10 contention")
    db = "chaos_contention"
    dsn = await create_database(ctx.server, db, transitions=True)
    fleet = ctx.fleet("contention", db, WorkerSettings(global_permits=100, queue_permits=100), n=2)
    fleet.start()
    calls: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    known: list[Any] = []
    stop = asyncio.Event()
    keys = [f"key{n}" for n in range(40)]

    async def call(kind: str, coro: Any) -> Any:
        calls[kind] += 1
        try:
            return await coro
        except Exception as exc:
            errors[f"{kind}: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"] += 1
            return None

    async def produce_keys(queue: sq.SimpleQueue, seed: int) -> None:
        local = random.Random(seed)
        while not stop.is_set():
            batch = [
                _planned(local, unique_key=k, fingerprint=f"fp{local.randrange(5)}")
                for k in local.sample(keys, 20)
            ]
            ids = await call("insert (shared keys)", queue.insert_jobs(batch))
            stored = [j for j, i in zip(batch, ids or [], strict=False) if i is not None]
            await remember(dsn, stored)
            known.extend(j.id for j in stored)
            await asyncio.sleep(0.01)

    async def produce_plain(queue: sq.SimpleQueue, seed: int) -> None:
        local = random.Random(seed)
        while not stop.is_set():
            batch = [_planned(local, fingerprint=f"fp{local.randrange(5)}") for _ in range(30)]
            if await call("insert (fingerprints)", queue.insert_jobs(batch)) is not None:
                await remember(dsn, batch)
                known.extend(j.id for j in batch)
            await asyncio.sleep(0.01)

    async def cancel(queue: sq.SimpleQueue, seed: int) -> None:
        local = random.Random(seed)
        while not stop.is_set():
            if local.random() < 0.5:
                await call(
                    "cancel by fingerprint",
                    queue.cancel_jobs_by_fingerprint(f"fp{local.randrange(5)}"),
                )
            elif known:
                await call("cancel by id", queue.cancel_job(local.choice(known)))
            await asyncio.sleep(local.uniform(0.01, 0.05))

    queues = [sq.SimpleQueue.from_url(dsn, pool_min_size=1, pool_max_size=2) for _ in range(5)]
    for q in queues:
        await q.__aenter__()
    try:
        tasks = [
            asyncio.ensure_future(produce_keys(queues[0], rng.randrange(1 << 30))),
            asyncio.ensure_future(produce_keys(queues[1], rng.randrange(1 << 30))),
            asyncio.ensure_future(produce_plain(queues[2], rng.randrange(1 << 30))),
            asyncio.ensure_future(cancel(queues[3], rng.randrange(1 << 30))),
            asyncio.ensure_future(cancel(queues[4], rng.randrange(1 << 30))),
        ]
        await asyncio.sleep(size.edge_seconds)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for q in queues:
            await q.__aexit__(None, None, None)
    drained = await drained_within(dsn, len(known), 120)
    report.check(drained, "jobs still pending or running at the end")
    await fleet.stop(30)
    acc = await account(dsn, check_plans=False)
    report.take(acc)
    found = await deadlocks(dsn)
    ends = Counter(
        str(s)
        for (s,) in await sql(
            dsn,
            "SELECT status FROM simplequeue.jobs UNION ALL SELECT status FROM simplequeue.archive "
            "UNION ALL SELECT status FROM simplequeue.dlq",
        )
    )
    report.notes.append(
        f"{sum(calls.values())} API calls in {size.edge_seconds:g}s ("
        + ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
        + f"); failed: {sum(errors.values())}; deadlocks detected by PostgreSQL: {found}"
    )
    for error, n in errors.most_common(5):
        report.notes.append(f"  failed (x{n}): {error}")
    report.check(not errors, f"{sum(errors.values())} API calls raised")
    report.check(found == 0, f"PostgreSQL detected {found} deadlock(s)")
    report.check(
        set(ends) <= {"completed", "cancelled"}, f"unexpected final statuses: {dict(ends)}"
    )
    check_logs(report, fleet)
    return report


def _planned(rng: random.Random, **kwargs: Any) -> sq.Job:
    return sq.Job("chaos_long", {"plan": "ok", "work": round(rng.uniform(0, 0.05), 4)}, **kwargs)


# -- 11. a producer through a server restart ---------------------------------------------


async def producer_restart(ctx: Context) -> Report:
    """An application keeps calling the API (insert, get, counts), on the pool `from_url`
    builds and on a pool of its own, while the server restarts. Calls fail while it is down;
    once it is back, none may fail."""
    size = ctx.size
    report = Report("11 producer restart")
    db = "chaos_producer"
    dsn = await create_database(ctx.server, db, transitions=False)
    own: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=4, max_size=4, kwargs={"autocommit": True}, open=False
    )
    await own.open(wait=True)
    library = sq.SimpleQueue.from_url(dsn, pool_min_size=4, pool_max_size=4)
    await library.__aenter__()
    states: dict[str, Any] = {"phase": "before", "back": None}
    outcomes: dict[tuple[str, str], Counter[str]] = {}
    first_ok_after: dict[str, float] = {}
    stored: list[sq.Job] = []
    stop = asyncio.Event()

    async def app(name: str, queue: sq.SimpleQueue) -> None:
        last: Any = None
        while not stop.is_set():
            phase = states["phase"]
            tally = outcomes.setdefault((name, phase), Counter())
            one = sq.Job("chaos_long", {"plan": "ok", "work": 0})
            for kind, coro in (
                ("insert", queue.insert_job(one)),
                ("get", queue.get_job(last) if last else queue.counts()),
                ("counts", queue.counts()),
            ):
                try:
                    result = await coro
                    tally["ok"] += 1
                    back = states["back"]
                    if back is not None and name not in first_ok_after:
                        first_ok_after[name] = time.monotonic() - back
                    if kind == "insert" and result is not None:
                        last = result
                        stored.append(one)
                except Exception as exc:
                    tally[f"{type(exc).__name__}"] += 1
            await asyncio.sleep(0.02)

    mine = sq.SimpleQueue(own)
    tasks = [
        asyncio.ensure_future(app(name, q))
        for name, q in (("from_url pool", library), ("own pool", mine))
        for _ in range(4)  # four callers each: every pooled connection is in use
    ]
    try:
        await asyncio.sleep(2)
        states["phase"] = "down"
        await asyncio.to_thread(ctx.server.stop)
        await asyncio.sleep(size.outage_down)
        await asyncio.to_thread(ctx.server.start)
        states["phase"], states["back"] = "back", time.monotonic()
        await asyncio.sleep(5)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await library.__aexit__(None, None, None)
        await own.close()
    for (name, phase), tally in sorted(outcomes.items()):
        failed = sum(v for k, v in tally.items() if k != "ok")
        report.notes.append(
            f"{name}, server {phase}: {tally['ok']} calls ok, {failed} failed"
            + (
                f" ({', '.join(f'{k} {v}' for k, v in tally.items() if k != 'ok')})"
                if failed
                else ""
            )
        )
        if phase in ("before", "back"):
            report.check(failed == 0, f"{name}: {failed} calls failed with the server {phase}")
    for name, seconds in sorted(first_ok_after.items()):
        report.notes.append(f"{name}: first call done {seconds:.1f}s after the server was back")
    report.check(len(first_ok_after) == 2, "a pool made no call after the server was back")
    await remember(dsn, stored)
    report.inserted = len(stored)
    report.restarts = "1 server"
    return report


EDGE_SCENARIOS = {
    "beats": missed_beats,
    "sync": sync_limits,
    "partition": partition,
    "contention": contention,
    "restart": producer_restart,
}
