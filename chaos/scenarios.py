"""The five scenarios. Each injects real faults, then checks exact accounting and reports."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

import simplequeue as sq
from chaos import app
from chaos.harness import (
    Accounting,
    Fleet,
    Server,
    WorkerSettings,
    account,
    create_database,
    dead_tuples,
    deadlocks,
    live_count,
    log_lines,
    make_plans,
    problems_in_logs,
    sql,
    status_counts,
    table_bytes,
    unreachable_by_outage,
    wait_until_drained,
)

# -- sizes, reports, context -----------------------------------------------------------


@dataclass(frozen=True)
class Size:
    storm_jobs: int
    kill_every: float
    outage_jobs: int
    outage_rate: float  # jobs/s inserted while the database goes away
    outage_down: float  # seconds the server stays stopped
    terminate_rounds: int
    stall_hold: float
    shutdown_jobs: int
    soak_seconds: float
    soak_warmup: float
    soak_rate: float
    edge_jobs: int  # jobs per round of the edge scenarios (chaos/edges.py)
    edge_rounds: int
    edge_seconds: float  # how long the contention scenario's callers call


SIZES = {
    "small": Size(
        storm_jobs=2000, kill_every=1.0, outage_jobs=1500, outage_rate=100, outage_down=3.0,
        terminate_rounds=3, stall_hold=4.0, shutdown_jobs=2000, soak_seconds=60,
        soak_warmup=15, soak_rate=80, edge_jobs=40, edge_rounds=2, edge_seconds=6,
    ),
    "full": Size(
        storm_jobs=20000, kill_every=2.0, outage_jobs=8000, outage_rate=150, outage_down=5.0,
        terminate_rounds=6, stall_hold=6.0, shutdown_jobs=10000, soak_seconds=600,
        soak_warmup=60, soak_rate=100, edge_jobs=120, edge_rounds=5, edge_seconds=30,
    ),
}  # fmt: skip


@dataclass
class Report:
    name: str
    seconds: float = 0.0
    inserted: int = 0
    kills: int = 0
    restarts: str = ""
    conns_terminated: int = 0
    lost: int = 0
    duplicates: int = 0
    peak_bytes: int | None = None
    rss_start: int | None = None
    rss_end: int | None = None
    bad_tried: int = 0
    bad_rejected: int = 0
    notes: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.violations.append(message)

    def take(self, acc: Accounting) -> None:
        self.inserted = acc.inserted
        self.lost = acc.lost
        self.duplicates = acc.duplicate_executions
        self.violations.extend(acc.violations())
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(acc.by_status.items()))
        self.notes.append(f"final states: {statuses} (= {sum(acc.by_status.values())} rows)")
        self.notes.append(
            f"executions {acc.executions}; redone after a reap or shutdown "
            f"{acc.duplicate_executions} (reaped from a live worker: {acc.reaped_live}; "
            f"interrupted by shutdown: {acc.interrupted})"
        )
        if acc.exits_by_source:
            exits = ", ".join(f"{k} {v}" for k, v in sorted(acc.exits_by_source.items()))
            self.notes.append(
                f"running -> * transitions by source: {exits}; each claim ended exactly "
                f"once: {'yes' if not (acc.double_exits or acc.open_claims) else 'NO'}"
            )
        for example in acc.examples[:8]:
            self.notes.append(f"  e.g. {example}")


class Context:
    def __init__(self, server: Server, log_dir: Path, size: Size, rng: random.Random) -> None:
        self.server = server
        self.log_dir = log_dir
        self.size = size
        self.rng = rng
        self.fleets: list[Fleet] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def fleet(self, name: str, db: str, settings: WorkerSettings, n: int = 3, **dsn: Any) -> Fleet:
        worker_dsn = self.server.dsn_for(db, application_name="chaos-worker", **dsn)
        record_dsn = self.server.dsn_for(db, application_name="chaos-record")
        fleet = Fleet(name, worker_dsn, record_dsn, n, settings, self.log_dir)
        self.fleets.append(fleet)
        return fleet

    def background(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    def cleanup(self) -> None:
        for task in self.tasks:
            task.cancel()
        for fleet in self.fleets:
            fleet.kill_all()


@contextlib.asynccontextmanager
async def producer(dsn: str) -> AsyncIterator[sq.SimpleQueue]:
    """The application side: a queue that only inserts."""
    async with sq.SimpleQueue.from_url(dsn, pool_min_size=1, pool_max_size=4) as queue:
        yield queue


def job(
    plan: str, rng: random.Random, *, sync_share: float = 0.2, work: float | None = None,
    long: bool = False,
) -> sq.Job:  # fmt: skip
    if work is None:
        work = rng.uniform(0.3, 1.2) if plan == "slow" else rng.uniform(0.0, 0.03)
    base = "chaos_long" if long else "chaos"
    queue = f"{base}_sync" if rng.random() < sync_share else base
    return sq.Job(
        queue, {"plan": plan, "work": round(work, 4)}, max_attempts=app.max_attempts(plan)
    )


async def insert(queue: sq.SimpleQueue, dsn: str, jobs: Sequence[sq.Job]) -> None:
    """Insert through the library, then remember each job's plan for the final check."""
    ids = await queue.insert_jobs(jobs)
    assert all(i is not None for i in ids)
    await remember(dsn, jobs)


async def remember(dsn: str, jobs: Sequence[sq.Job]) -> None:
    await sql(
        dsn,
        "INSERT INTO chaos.expected (job_id, plan) SELECT * FROM unnest(%s::uuid[], %s::text[]) "
        "ON CONFLICT DO NOTHING",
        [[j.id for j in jobs], [j.data["plan"] for j in jobs]],
    )


def chunks(items: Sequence[sq.Job], n: int) -> list[Sequence[sq.Job]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


async def sample_sizes(dsn: str, report: Report, every: float = 1.0) -> None:
    """Keep `report.peak_bytes` at the largest jobs+archive+dlq size seen."""
    while True:
        with contextlib.suppress(psycopg.Error):
            total = sum((await table_bytes(dsn)).values())
            report.peak_bytes = max(report.peak_bytes or 0, total)
        await asyncio.sleep(every)


async def rss_at_start(report: Report, fleet: Fleet) -> None:
    """Mean RSS of the fleet once every worker is up (the soak measures after a warm-up)."""
    for worker in fleet.alive():
        await worker.wait_ready()
    rss = fleet.rss()
    report.rss_start = int(statistics.mean(rss.values())) if rss else None


def rss_at_end(report: Report, fleet: Fleet) -> None:
    rss = fleet.rss()
    report.rss_end = int(statistics.mean(rss.values())) if rss else None


def check_logs(report: Report, fleet: Fleet) -> None:
    problems = problems_in_logs(log_lines(fleet))
    for problem, n in problems.most_common():
        report.violations.append(f"worker log: {problem} (x{n})")


STORM_WEIGHTS = {
    "ok": 30, "success": 10, "slow": 6, "raise": 5, "raise_once": 8, "failed": 4, "retry_at": 6,
    "reschedule": 6, "cancel": 4, "critical": 4, "unprocessable": 4, "timeout": 3,
    "timeout_once": 3,
}  # fmt: skip


# -- 1. crash storm --------------------------------------------------------------------


async def crash_storm(ctx: Context) -> Report:
    size, rng = ctx.size, ctx.rng
    report = Report("1 crash storm")
    dsn = await create_database(ctx.server, "chaos_storm", transitions=True)
    settings = WorkerSettings(
        heartbeat_interval=0.3,
        empty_poll_sleep=0.5,
        global_permits=50,
        queue_permits=50,
        overrides={"reaper_interval": 0.3, "janitor_interval": 2.0},
    )
    fleet = ctx.fleet("storm", "chaos_storm", settings)
    ctx.background(sample_sizes(dsn, report))
    n = size.storm_jobs
    jobs = [job(plan, rng) for plan in make_plans(n, rng, STORM_WEIGHTS)]
    started = time.monotonic()
    deadline = started + max(120.0, n * 0.05)
    async with producer(dsn) as queue:
        half = n // 2
        for batch in chunks(jobs[:half], 500):
            await insert(queue, dsn, batch)
        fleet.start()
        rest = list(chunks(jobs[half:], 500))
        while True:
            await asyncio.sleep(size.kill_every)
            if rest:
                await insert(queue, dsn, rest.pop(0))
            fleet.kill_and_restart(rng)
            if not rest and await live_count(dsn) == 0:
                break
            if time.monotonic() > deadline:
                report.violations.append(f"not drained after {deadline - started:.0f}s")
                break
    chaos_seconds = time.monotonic() - started
    drained = await wait_until_drained(dsn, n, 60)
    report.check(drained, "jobs still pending or running at the end")
    exits = await fleet.stop(30)
    report.check(
        all(code == 0 for code, _ in exits.values()), f"a worker did not stop cleanly: {exits}"
    )
    acc = await account(dsn, killed_pids=[w.pid for w in fleet.all if w.killed])
    report.take(acc)
    report.kills = fleet.kills
    report.restarts = f"{fleet.restarts} workers"
    report.notes.insert(
        0,
        f"{n} jobs through 3 workers in {chaos_seconds:.0f}s while SIGKILLing one every "
        f"{size.kill_every:g}s ({n / chaos_seconds:.0f} jobs/s)",
    )
    check_logs(report, fleet)
    return report


# -- 2. database restart and terminated connections ------------------------------------


@dataclass
class Production:
    """What the application saw while inserting through the outages."""

    inserted: int = 0
    failed: list[sq.Job] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0


async def produce(
    queue: sq.SimpleQueue,
    dsn: str,
    make: Callable[[], sq.Job],
    total: int | None,
    rate: float,
    out: Production,
    batch: int = 10,
    gate: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Insert `rate` jobs/s in small batches until `total` (or forever), while `gate` is
    set and until `stop` is; failures are recorded, not retried: that is what an application
    sees."""
    interval = batch / rate
    while total is None or out.inserted + len(out.failed) < total:
        if gate is not None:
            await gate.wait()
        if stop is not None and stop.is_set():
            return  # never cancelled mid-batch: a job inserted but not remembered is a phantom
        jobs = [make() for _ in range(batch)]
        t0 = time.monotonic()
        try:
            await insert(queue, dsn, jobs)
            out.inserted += len(jobs)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:110]
            out.errors[f"{type(exc).__module__}.{type(exc).__name__}: {first}"] += 1
            out.failed.extend(jobs)
        elapsed = time.monotonic() - t0
        out.slowest = max(out.slowest, elapsed)
        await asyncio.sleep(max(interval - elapsed, 0))


async def settle_failed_inserts(dsn: str, failed: Sequence[sq.Job]) -> int:
    """Jobs whose insert raised but that exist all the same (the commit raced the outage):
    they must be processed like any other, so remember them. Returns how many."""
    if not failed:
        return 0
    rows = await sql(
        dsn,
        "SELECT id FROM simplequeue.jobs WHERE id = ANY(%(ids)s) "
        "UNION ALL SELECT id FROM simplequeue.archive WHERE id = ANY(%(ids)s) "
        "UNION ALL SELECT id FROM simplequeue.dlq WHERE id = ANY(%(ids)s)",
        {"ids": [j.id for j in failed]},
    )
    present = {r[0] for r in rows}
    await remember(dsn, [j for j in failed if j.id in present])
    return len(present)


@contextlib.asynccontextmanager
async def probe_queue(dsn: str) -> AsyncIterator[sq.SimpleQueue]:
    """An application's queue on its own pool, which waits 2 s at most for a connection."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=1, timeout=2.0, kwargs={"autocommit": True}, open=False,
        name="chaos-probe",
    )  # fmt: skip
    await pool.open(wait=True)
    try:
        yield sq.SimpleQueue(pool)
    finally:
        await pool.close()


async def probe_insert(queue: sq.SimpleQueue, one: sq.Job) -> str:
    """What the caller of insert_job sees while the server is down, and how soon."""
    t0 = time.monotonic()
    try:
        await queue.insert_job(one)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:100]
        return (
            f"raised {type(exc).__module__}.{type(exc).__name__} after "
            f"{time.monotonic() - t0:.1f}s: {first}"
        )
    return f"SUCCEEDED after {time.monotonic() - t0:.1f}s (unexpected)"


TERMINATE = """
SELECT count(*),
       count(*) FILTER (WHERE query LIKE 'LISTEN%%'),
       count(*) FILTER (WHERE query LIKE '%%SET heartbeat_at = clock_timestamp() FROM beatable%%')
FROM (SELECT query, pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = current_database() AND application_name LIKE 'chaos-worker%%') AS t
"""


async def db_outage(ctx: Context) -> Report:
    size, rng = ctx.size, ctx.rng
    report = Report("2 db outage")
    db = "chaos_outage"
    dsn = await create_database(ctx.server, db, transitions=True)
    ctx.background(sample_sizes(dsn, report))
    settings = WorkerSettings(
        heartbeat_interval=0.3,
        empty_poll_sleep=0.5,
        global_permits=30,
        queue_permits=30,
        overrides={"reaper_interval": 0.3, "janitor_interval": 2.0},
    )
    fleet = ctx.fleet("outage", db, settings)
    # No handler timeouts here: a handler recording its start waits out the outage, and a
    # timeout would (rightly) spend an attempt on that wait, which no plan foresees.
    weights = {**STORM_WEIGHTS, "slow": 15}
    del weights["timeout"], weights["timeout_once"]
    fleet.start()
    await rss_at_start(report, fleet)
    production = Production()
    outages: list[float] = []
    wall = time.time
    async with producer(dsn) as queue:
        feeding = ctx.background(
            produce(
                queue, dsn, lambda: job(make_plans(1, rng, weights)[0], rng, long=True),
                size.outage_jobs, size.outage_rate, production,
            )
        )  # fmt: skip
        await asyncio.sleep(4)
        # -- the server goes away mid-drain, and comes back on the same data dir
        outages.append(wall())
        t0 = time.monotonic()
        async with probe_queue(dsn) as probe:
            first = job("ok", rng)
            await insert(probe, dsn, [first])  # now the probe's pool holds a live connection
            await asyncio.to_thread(ctx.server.stop)
            stopped = time.monotonic()
            for attempt in (1, 2):
                report.notes.append(f"insert #{attempt} while the server is down: "
                                    f"{await probe_insert(probe, job('ok', rng))}")  # fmt: skip
        await asyncio.sleep(max(size.outage_down - (time.monotonic() - stopped), 0))
        await asyncio.to_thread(ctx.server.start)
        report.check(
            all("raised" in n for n in report.notes if n.startswith("insert #")),
            "an insert during the outage did not fail",
        )
        report.notes.append(
            f"server stopped in {stopped - t0:.1f}s, down {size.outage_down:g}s, back after "
            f"{time.monotonic() - t0:.1f}s"
        )
        await asyncio.sleep(4)
        # -- every worker connection killed, several times
        listeners = heartbeats = 0
        for _ in range(size.terminate_rounds):
            outages.append(wall())
            ((total, listen, beat),) = await sql(dsn, TERMINATE)
            report.conns_terminated += total
            listeners += listen
            heartbeats += beat
            await asyncio.sleep(2.5)
        report.notes.append(
            f"{size.terminate_rounds} rounds of pg_terminate_backend: {report.conns_terminated} "
            f"worker connections, of which {listeners} LISTEN and {heartbeats} heartbeat"
        )
        report.check(listeners > 0 and heartbeats > 0, "the listener's and heartbeat's "
                     "connections were not among those terminated")  # fmt: skip
        await feeding
    ambiguous = await settle_failed_inserts(dsn, production.failed)
    drained = await wait_until_drained(dsn, production.inserted + ambiguous, 90)
    report.check(drained, "jobs still pending or running at the end")
    rss_at_end(report, fleet)
    exits = await fleet.stop(30)
    report.check(all(c == 0 for c, _ in exits.values()), f"a worker did not stop cleanly: {exits}")

    for error, count in production.errors.most_common():
        report.notes.append(f"insert during the outage raised (x{count}): {error}")
    report.notes.append(
        f"{len(production.failed)} inserts failed ({ambiguous} of them committed anyway); "
        f"slowest insert call {production.slowest:.1f}s"
    )
    acc = await account(dsn, killed_pids=())
    report.take(acc)
    report.restarts = "1 server"
    # -- what the workers logged: once per outage, not once per job
    lines = log_lines(fleet)
    per_outage, before = unreachable_by_outage(lines, outages)
    report.check(before == 0, f"{before} 'database unreachable' lines before any outage")
    for index in range(len(outages)):
        counts = per_outage.get(index, Counter())
        what = "restart" if index == 0 else f"terminate #{index}"
        components = Counter(component for (_, component) in counts.elements())
        report.notes.append(
            f"'database unreachable' lines for {what}: {sum(counts.values())} "
            f"({', '.join(f'{c} {n}' for c, n in sorted(components.items())) or 'none'})"
        )
        repeated = {k: v for k, v in counts.items() if v > 1}
        report.check(not repeated, f"{what}: logged more than once per outage: {repeated}")
    report.check(bool(per_outage.get(0)), "the restart left no 'database unreachable' line")
    pool_lines = sum(1 for line in lines if line.logger == "psycopg.pool")
    report.notes.append(f"psycopg_pool's own warnings (a line per connection): {pool_lines}")
    writer_lines = sum(1 for line in lines if line.message.startswith("result writer: database"))
    report.notes.append(f"result writer outage/recovery lines: {writer_lines}")
    report.check(acc.reaped_live == 0, f"{acc.reaped_live} finished or running jobs of live "
                 "workers were taken away by the reaper (their results dropped)")  # fmt: skip
    check_logs(report, fleet)
    return report


# -- 3. stalls -------------------------------------------------------------------------


async def db_now(dsn: str) -> Any:
    return (await sql(dsn, "SELECT clock_timestamp()"))[0][0]


async def waits_after(dsn: str, gone: Any) -> tuple[int, float]:
    """For jobs that were due when the cause went away and first started after it: how
    many, and the longest wait from then to their start (seconds)."""
    (n, longest), = await sql(
        dsn,
        """
        WITH alljobs AS (
            SELECT id, run_at FROM simplequeue.jobs UNION ALL
            SELECT id, run_at FROM simplequeue.archive UNION ALL
            SELECT id, run_at FROM simplequeue.dlq),
        firsts AS (SELECT job_id, min(started) AS started FROM chaos.executions GROUP BY job_id)
        SELECT count(*), COALESCE(extract(epoch FROM max(f.started - %(gone)s)), 0)
        FROM firsts f JOIN alljobs j ON j.id = f.job_id
        WHERE f.started >= %(gone)s AND j.run_at <= %(gone)s
        """,
        {"gone": gone},
    )  # fmt: skip
    return int(n), float(longest)


async def stalls(ctx: Context) -> Report:
    size, rng = ctx.size, ctx.rng
    report = Report("3 stalls")
    db = "chaos_stalls"
    dsn = await create_database(ctx.server, db, transitions=True)
    ctx.background(sample_sizes(dsn, report))
    poll = 0.5
    settings = WorkerSettings(
        heartbeat_interval=0.3,
        empty_poll_sleep=poll,
        global_permits=40,
        queue_permits=40,
        overrides={"reaper_interval": 0.3, "janitor_interval": 2.0},
        env={"CHAOS_POOL_TIMEOUT": "1.5", "CHAOS_HOG_SECONDS": str(size.stall_hold)},
    )
    fleet = ctx.fleet("stalls", db, settings, options="-c statement_timeout=1000")
    deadlocks_before = await deadlocks(dsn)
    fleet.start()
    await rss_at_start(report, fleet)
    production = Production()
    weights = {"ok": 70, "slow": 20, "raise_once": 5, "reschedule": 5}
    bound = poll + 0.75  # the fallback poll, plus a claim and a record on a busy 2-core box
    gate, stop = asyncio.Event(), asyncio.Event()
    gate.set()
    locked_running: set[Any] = set()
    async with producer(dsn) as queue:
        feeding = ctx.background(
            produce(queue, dsn, lambda: job(make_plans(1, rng, weights)[0], rng), None, 40,
                    production, gate=gate, stop=stop)
        )  # fmt: skip
        await asyncio.sleep(5)

        async def pool_exhaustion() -> Any:
            await fleet.signal_all(signal.SIGUSR1)
            await asyncio.sleep(size.stall_hold + 0.5)
            for _ in range(50):
                rows = await sql(dsn, "SELECT count(*), max(at) FROM chaos.events "
                                 "WHERE kind = 'pool_released'")  # fmt: skip
                if rows[0][0] >= fleet.n:
                    return rows[0][1]
                await asyncio.sleep(0.2)
            raise AssertionError("the workers never released their pool connections")

        async def table_lock() -> Any:
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                await conn.execute("LOCK TABLE simplequeue.jobs IN EXCLUSIVE MODE")
                cur = await conn.execute("SELECT id FROM simplequeue.jobs WHERE status = 'running'")
                locked_running.update(r[0] for r in await cur.fetchall())  # no heartbeat can land
                await asyncio.sleep(size.stall_hold)
                gone = (await (await conn.execute("SELECT clock_timestamp()")).fetchone())[0]  # type: ignore[index]
                await conn.commit()
            return gone

        async def row_locks() -> Any:
            # 100 jobs due in 1 s, locked with every running job before they are due: claims,
            # heartbeats and result writes skip them. The producer pauses, so when the
            # lock goes, no NOTIFY comes: only the fallback poll can find those jobs.
            gate.clear()
            due = datetime.now(UTC) + timedelta(seconds=1)
            batch = [job("ok", rng) for _ in range(100)]
            for one in batch:
                one.run_at = due
            await insert(queue, dsn, batch)
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                cur = await conn.execute(
                    "SELECT id, status FROM simplequeue.jobs "
                    "WHERE status = 'running' OR id = ANY(%s) FOR UPDATE",
                    [[one.id for one in batch]],
                )
                rows = await cur.fetchall()
                locked = Counter(status for _, status in rows)
                locked_running.update(job_id for job_id, status in rows if status == "running")
                await asyncio.sleep(size.stall_hold)
                gone = (await (await conn.execute("SELECT clock_timestamp()")).fetchone())[0]  # type: ignore[index]
                await conn.commit()
            report.notes.append(f"row locks: held {dict(locked)} job rows FOR UPDATE")
            production.inserted += len(batch)
            await asyncio.sleep(2)
            gate.set()
            return gone

        async def one_running_row() -> Any:
            # One running job of one worker locked while the load goes on: that worker's
            # other jobs must keep their heartbeats, or the other workers reap them.
            longs = [
                job("slow", rng, long=True, sync_share=0.0, work=size.stall_hold + 2)
                for _ in range(6)
            ]
            await insert(queue, dsn, longs)
            ids = [one.id for one in longs]
            started = "SELECT count(*) FROM chaos.executions WHERE job_id = ANY(%s)"
            while (await sql(dsn, started, [ids]))[0][0] < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                cur = await conn.execute(
                    "SELECT id FROM simplequeue.jobs WHERE id = ("
                    "  SELECT j.id FROM simplequeue.jobs j JOIN chaos.executions e"
                    "  ON e.job_id = j.id AND e.lease = j.lease"
                    "  WHERE j.status = 'running' AND j.id = ANY(%s)"
                    "  ORDER BY (SELECT count(*) FROM chaos.executions x JOIN simplequeue.jobs y"
                    "            ON y.id = x.job_id AND y.lease = x.lease"
                    "            WHERE y.status = 'running' AND x.pid = e.pid) DESC LIMIT 1)"
                    " FOR UPDATE",
                    [ids],
                )
                held = [r[0] for r in await cur.fetchall()]
                locked_running.update(held)
                await asyncio.sleep(size.stall_hold)
                gone = (await (await conn.execute("SELECT clock_timestamp()")).fetchone())[0]  # type: ignore[index]
                await conn.commit()
            report.notes.append(f"one running row: held {len(held)} running job row FOR UPDATE")
            report.check(len(held) == 1, "could not lock a running job: the stall is void")
            return gone

        # (name, fault, what the workers' logs must mention; None: nothing needs saying,
        # the only invariant is that no other job is taken away)
        stall_kinds: list[tuple[str, Callable[[], Awaitable[Any]], str | None]] = [
            ("pool exhaustion", pool_exhaustion, "connection pool"),
            ("statement_timeout (table locked)", table_lock, "statement timeout"),
            ("long transaction holding job rows", row_locks, None),  # nothing waits on rows
            ("long transaction holding one running job", one_running_row, None),
        ]
        for name, inject, evidence in stall_kinds:
            began = time.time()
            gone = await inject()
            ended = time.time()
            await asyncio.sleep(3)
            n, longest = await waits_after(dsn, gone)
            said = [
                line
                for line in log_lines(fleet)
                if began - 0.2 <= line.at <= ended + 2
                and ("statement" in line.message or "pool" in line.message)
                and (evidence is None or evidence in line.message)
            ]
            components = Counter(line.message.split(":")[0] for line in said)
            report.notes.append(
                f"{name} for {size.stall_hold:g}s: {n} waiting jobs started within "
                f"{longest:.2f}s of the cause going away (bound {bound:.2f}s); logs: "
                f"{dict(components) or 'nothing'}"
            )
            report.check(longest <= bound, f"{name}: a job waited {longest:.2f}s after the cause "
                         f"was gone (fallback poll {poll}s)")  # fmt: skip
            report.check(
                evidence is None or bool(said), f"{name}: no log line mentions '{evidence}'"
            )
        stop.set()
        await feeding
    drained = await wait_until_drained(dsn, production.inserted, 60)
    report.check(drained, "jobs still pending or running at the end (deadlock?)")
    rss_at_end(report, fleet)
    exits = await fleet.stop(30)
    report.check(all(c == 0 for c, _ in exits.values()), f"a worker did not stop cleanly: {exits}")
    found = await deadlocks(dsn) - deadlocks_before
    report.notes.append(f"deadlocks detected by PostgreSQL: {found}")
    report.check(found == 0, f"{found} deadlocks")
    acc = await account(dsn)
    report.take(acc)
    # A running job whose row another transaction held locked (a row lock, or the table
    # lock) for longer than the stall threshold cannot be told from a stalled one: its worker
    # could not beat for it. Taking it over is at-least-once doing its job. Any other job
    # taken from a live worker is not.
    excused = acc.reaped_live_jobs & locked_running
    wrongly = acc.reaped_live_jobs - locked_running
    report.notes.append(
        f"jobs reaped from live workers: {len(excused)} whose rows (or table) were locked "
        f"for {size.stall_hold:g}s (expected), {len(wrongly)} others"
    )
    report.check(not wrongly, f"{len(wrongly)} jobs were reaped from live workers during a "
                 "stall although nothing held their rows (ran twice at once)")  # fmt: skip
    check_logs(report, fleet)
    return report


# -- 4. shutdown under load ------------------------------------------------------------


async def count_where(dsn: str, where: str) -> int:
    return int((await sql(dsn, f"SELECT count(*) FROM simplequeue.jobs WHERE {where}"))[0][0])


async def shutdown(ctx: Context) -> Report:
    size, rng = ctx.size, ctx.rng
    report = Report("4 shutdown")
    db = "chaos_shutdown"
    dsn = await create_database(ctx.server, db, transitions=True)
    ctx.background(sample_sizes(dsn, report))
    n = size.shutdown_jobs
    # Heartbeats every second (stalled after 2.5 s), not the harness's 0.3 s: this scenario
    # holds what a stop does, and 300 jobs ending at once on two cores can delay a beat past
    # 0.75 s, which would let the leader's reaper take a live worker's job (the reaper's own
    # scenarios hold that case).
    beats = {"heartbeat_interval": 1.0}
    first = ctx.fleet(
        "shutdown-1", db,
        WorkerSettings(global_permits=100, queue_permits=100, shutdown_timeout=2.0, **beats),
    )  # fmt: skip
    # 70% short jobs, 30% that outlive the 2 s shutdown timeout
    jobs = [
        job("ok", rng, long=True, work=rng.uniform(0.02, 0.3))
        if rng.random() < 0.7
        else job("slow", rng, long=True, work=rng.uniform(2.5, 6.0))
        for _ in range(n)
    ]
    async with producer(dsn) as queue:
        for batch in chunks(jobs, 500):
            await insert(queue, dsn, batch)
        first.start()
        while (await sql(dsn, "SELECT count(*) FROM chaos.executions"))[0][0] < n * 0.3:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        running = await count_where(dsn, "status = 'running'")
        exits = await first.stop(30)
        report.notes.append(
            f"SIGTERM (timeout 2s) with {running} jobs running: exits "
            + ", ".join(f"rc {c} after {s:.1f}s" for c, s in exits.values())
        )
        report.check(all(c == 0 for c, _ in exits.values()), f"unclean exit: {exits}")
        slowest = max(s for _, s in exits.values())
        report.check(slowest <= 2.0 + 3.0, f"a worker took {slowest:.1f}s to exit after SIGTERM "
                     "with a 2s shutdown timeout (sync handlers still running in threads keep "
                     "the process alive after their jobs went back to pending)")  # fmt: skip
        stuck = await count_where(dsn, "status = 'running'")
        spent = await count_where(
            dsn, "status = 'pending' AND (attempt <> 0 OR reprocess_count <> 0)"
        )
        interrupted = (await sql(
            dsn, "SELECT count(DISTINCT e.job_id) FROM chaos.executions e JOIN simplequeue.jobs j "
            "ON j.id = e.job_id WHERE j.status = 'pending'"))[0][0]  # fmt: skip
        report.notes.append(
            f"after the first SIGTERM: {interrupted} interrupted jobs back to pending; "
            f"running {stuck}, pending with an attempt spent {spent}"
        )
        report.check(stuck == 0, f"{stuck} jobs left running after a clean stop")
        report.check(spent == 0, f"{spent} pending jobs had an attempt consumed by the shutdown")
        report.check(interrupted > 0, "the first SIGTERM interrupted nothing: the test is void")

        # -- a second SIGTERM cancels the handlers at once, and still writes their jobs back
        second = ctx.fleet(
            "shutdown-2", db,
            WorkerSettings(global_permits=100, queue_permits=100, shutdown_timeout=60.0, **beats),
        )  # fmt: skip
        long_jobs = [job("slow", rng, long=True, sync_share=0.0, work=8.0) for _ in range(60)]
        long_jobs += [job("slow", rng, long=True, sync_share=1.0, work=8.0) for _ in range(9)]
        await insert(queue, dsn, long_jobs)
        second.start()
        long_ids = [j.id for j in long_jobs]
        started_sql = "SELECT count(DISTINCT job_id) FROM chaos.executions WHERE job_id = ANY(%s)"
        while (await sql(dsn, started_sql, [long_ids]))[0][0] < 40:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        running = await count_where(dsn, "status = 'running'")
        await second.signal_all(signal.SIGTERM)
        await asyncio.sleep(0.5)
        t0, wall0 = time.monotonic(), time.time()
        exits = await second.stop(30)  # the second SIGTERM
        took = time.monotonic() - t0
        (written_back,) = (await sql(
            dsn, "SELECT extract(epoch FROM max(at)) FROM chaos.transitions WHERE source = 'write' "
            "AND new_status = 'pending' AND new_attempt = old_attempt - 1 "
            "AND job_id = ANY(%s)", [long_ids]))[0]  # fmt: skip
        report.notes.append(
            f"second SIGTERM 0.5s after the first, {running} jobs running (shutdown timeout "
            f"60s): jobs written back within {float(written_back or wall0) - wall0:.1f}s, exits "
            + ", ".join(f"rc {c} after {s:.1f}s" for c, s in exits.values())
        )
        report.check(all(c == 0 for c, _ in exits.values()), f"unclean exit: {exits}")
        report.check(
            took < 3,
            f"workers took {took:.1f}s to exit after the second SIGTERM (sync handlers "
            "cannot be interrupted and keep the process alive)",
        )
        stuck = await count_where(dsn, "status = 'running'")
        spent = await count_where(
            dsn, "status = 'pending' AND (attempt <> 0 OR reprocess_count <> 0)"
        )
        report.check(stuck == 0, f"{stuck} jobs left running after the second SIGTERM")
        report.check(spent == 0, f"{spent} pending jobs had an attempt consumed by the shutdown")

        # -- everything still runs to completion afterwards, exactly once more
        third = ctx.fleet("shutdown-3", db, WorkerSettings(global_permits=100, queue_permits=100))
        third.start()
        drained = await wait_until_drained(dsn, n + len(long_jobs), 120)
        report.check(drained, "jobs still pending or running at the end")
        exits = await third.stop(30)
    acc = await account(dsn)
    report.take(acc)
    report.restarts = f"{2 * first.n} workers"
    check_logs(report, first)
    check_logs(report, second)
    check_logs(report, third)
    return report


# -- 5. soak ---------------------------------------------------------------------------


async def soak(ctx: Context) -> Report:
    size, rng = ctx.size, ctx.rng
    report = Report("5 soak")
    db = "chaos_soak"
    dsn = await create_database(ctx.server, db, transitions=False)
    settings = WorkerSettings(
        heartbeat_interval=0.5,
        empty_poll_sleep=0.5,
        global_permits=50,
        queue_permits=50,
        overrides={"reaper_interval": 0.5, "janitor_interval": 2.0},
    )
    fleet = ctx.fleet("soak", db, settings)
    weights = {k: v for k, v in STORM_WEIGHTS.items() if not k.startswith("timeout")}
    weights["slow"] = 2
    bytes_start = await table_bytes(dsn)
    fleet.start()
    production = Production()
    stop = asyncio.Event()
    dead_peak: dict[str, int] = Counter()
    sizes_peak: dict[str, int] = Counter()
    started = time.monotonic()
    async with producer(dsn) as queue:
        feeding = ctx.background(
            produce(queue, dsn, lambda: job(make_plans(1, rng, weights)[0], rng), None,
                    size.soak_rate, production, stop=stop)
        )  # fmt: skip
        rss_start: dict[int, int] = {}
        bytes_warm: dict[str, int] = {}
        vacuums_warm: dict[str, tuple[int, int, int]] = {}
        timeline: list[str] = []
        every = size.soak_seconds / 10
        while time.monotonic() - started < size.soak_seconds:
            await asyncio.sleep(2)
            sizes = await table_bytes(dsn)
            if time.monotonic() - started >= every * (len(timeline) + 1):
                timeline.append(f"{sizes.get('jobs', 0) / 1024:.0f}")
            for name, value in sizes.items():
                sizes_peak[name] = max(sizes_peak[name], value)
            report.peak_bytes = max(report.peak_bytes or 0, sum(sizes.values()))
            dead = await dead_tuples(dsn)
            for name, (n_dead, _, _) in dead.items():
                dead_peak[name] = max(dead_peak[name], n_dead)
            if not rss_start and time.monotonic() - started >= size.soak_warmup:
                rss_start = fleet.rss()
                bytes_warm, vacuums_warm = sizes, dead
        rss_end = fleet.rss()
        bytes_end = await table_bytes(dsn)
        dead_end = await dead_tuples(dsn)
        stop.set()
        await feeding
    elapsed = time.monotonic() - started
    drained = await wait_until_drained(dsn, production.inserted, 60)
    report.check(drained, "jobs still pending or running at the end")
    counts = await status_counts(dsn)
    exits = await fleet.stop(30)
    report.check(all(c == 0 for c, _ in exits.values()), f"a worker did not stop cleanly: {exits}")
    report.check(
        not production.failed, f"{len(production.failed)} inserts failed: {production.errors}"
    )
    acc = await account(dsn, transitions=False)
    report.take(acc)
    report.notes.insert(
        0,
        f"{production.inserted} jobs in {elapsed:.0f}s ({production.inserted / elapsed:.0f}/s), "
        f"janitor every 2s; live rows at the end: {counts}",
    )

    def sizes_text(sizes: dict[str, int]) -> str:
        return ", ".join(f"{k} {v / 1024:.0f}kB" for k, v in sorted(sizes.items()))

    report.notes.append(f"bytes at start: {sizes_text(bytes_start)}")
    report.notes.append(f"bytes after {size.soak_warmup:g}s warm-up: {sizes_text(bytes_warm)}")
    report.notes.append(f"bytes at end: {sizes_text(bytes_end)}; peak: {sizes_text(sizes_peak)}")
    report.notes.append(f"jobs table kB every {every:g}s: {' '.join(timeline)}")
    for name in sorted(dead_end):
        n_dead, n_live, vacuums = dead_end[name]
        before = vacuums_warm.get(name, (0, 0, 0))[2]
        report.notes.append(
            f"{name}: n_dead_tup peak {dead_peak[name]}, at end {n_dead} (live {n_live}); "
            f"vacuums during the soak: {vacuums - before}"
        )
    pids = sorted(set(rss_start) & set(rss_end))
    report.check(len(pids) == fleet.n, "a worker died during the soak")
    if pids:
        report.rss_start = int(statistics.mean(rss_start[p] for p in pids))
        report.rss_end = int(statistics.mean(rss_end[p] for p in pids))
        for pid in pids:
            growth = rss_end[pid] / rss_start[pid] - 1
            report.notes.append(
                f"worker {pid} RSS {rss_start[pid] / 2**20:.1f}MB -> {rss_end[pid] / 2**20:.1f}MB "
                f"({growth:+.1%})"
            )
            report.check(growth < 0.10, f"worker {pid} RSS grew {growth:.1%} (limit 10%)")
    check_logs(report, fleet)
    return report


# -- 6. hostile input ------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# Values jsonb stores and Python reads back equal: each rides in a job the fleet processes.
STORABLE: dict[str, Any] = {
    "sql metacharacters": "'; DROP TABLE simplequeue.jobs; -- \\ \" $$ %s {s}",
    "unicode": "\u00e9\u4e2d\U0001f680\u202e\ufeff zero\u200bwidth",
    "control characters": "\x01\x07\t\n\r\x1b[31m",
    "escaped nul text": "\\u0000 is fine as text",
    "a 512 kB string": "x" * (512 * 1024),
    "a 4000-digit integer": int("9" * 4000),
    "float limits": [1.7976931348623157e308, 5e-324, -0.0, 1e16, 2.5e-10],
    "200 levels deep": _nested(200),
    "a wide object": {f"k{i}": i for i in range(10_000)},
    "empty values": [{}, [], "", None, False, 0],
}

# Names and keys with metacharacters, stored and read back, then cancelled by key.
STRANGE_NAMES = ["q'; DROP TABLE x; --", 'q"quoted"', "q\\back", "ü🚀名前", "q %s {0}", " "]


def _hostile_jobs() -> list[tuple[str, Callable[[], sq.Job]]]:
    """What the library must refuse, with InvalidJobError, before anything is written."""
    utc16 = timezone(timedelta(hours=16))
    cases: list[tuple[str, Any, dict[str, Any]]] = [
        ("NaN", {"x": float("nan")}, {}),
        ("Infinity", [float("inf")], {}),
        ("NUL in data", "a\x00b", {}),
        ("NUL in an object key", {"a\x00": 1}, {}),
        ("lone surrogate", "\ud800", {}),
        ("300 levels deep", _nested(300), {}),
        ("a set", {1, 2}, {}),
        ("an object", object(), {}),
        ("an int object key", {1: "x"}, {}),
        ("empty queue", {}, {"queue": ""}),
        ("NUL in queue", {}, {"queue": "q\x00"}),
        ("2 kB unique key", {}, {"unique_key": "k" * 2048}),
        ("surrogate fingerprint", {}, {"fingerprint": "\udfff"}),
        ("max_attempts 0", {}, {"max_attempts": 0}),
        ("priority 2**31", {}, {"priority": 2**31}),
        ("timeout -1", {}, {"timeout": -1}),
        ("naive run_at", {}, {"run_at": datetime.now(UTC).replace(tzinfo=None)}),
        ("run_at in year 1", {}, {"run_at": datetime(1, 1, 1, tzinfo=UTC)}),
        ("run_at at UTC+16", {}, {"run_at": datetime.now(UTC).astimezone(utc16)}),
    ]

    def build(data: Any, kwargs: dict[str, Any]) -> Callable[[], sq.Job]:
        queue = kwargs.pop("queue", "chaos")
        return lambda: sq.Job(queue, data, **kwargs)

    return [(what, build(data, dict(kwargs))) for what, data, kwargs in cases]


async def hostile_input(ctx: Context) -> Report:
    report = Report("6 hostile input")
    db = "chaos_hostile"
    dsn = await create_database(ctx.server, db, transitions=True)
    fleet = ctx.fleet("hostile", db, WorkerSettings())
    fleet.start()
    rejected: Counter[str] = Counter()

    def refused(what: str, error: BaseException, expected: type[BaseException]) -> None:
        report.bad_rejected += 1
        report.check(isinstance(error, expected), f"{what}: {type(error).__name__}: {error}")
        rejected[type(error).__name__] += 1

    async with producer(dsn) as queue:
        # Refused by the library, before any statement.
        for what, build in _hostile_jobs():
            report.bad_tried += 1
            try:
                await queue.insert_job(build())
            except Exception as exc:
                refused(what, exc, sq.InvalidJobError)
            else:
                report.check(False, f"{what}: was stored")
        report.bad_tried += 1
        try:
            await queue.insert_job(sq.Job("chaos", {"blob": "x" * (2 * 1024 * 1024)}))
        except Exception as exc:
            refused("a 2 MiB payload (limit 1 MiB)", exc, sq.InvalidJobError)
        # Refused by the database, for producers that bypass the library.
        for run_at in ("-infinity", "infinity", "20000-01-01"):
            report.bad_tried += 1
            try:
                await sql(
                    dsn,
                    "INSERT INTO simplequeue.jobs (id, queue, data, run_at) "
                    "VALUES (gen_random_uuid(), 'chaos', '{\"plan\": \"ok\"}', %s)",
                    [run_at],
                )
            except psycopg.errors.CheckViolation as exc:
                refused(f"raw run_at {run_at}", exc, psycopg.errors.CheckViolation)
            else:
                report.check(False, f"raw SQL run_at {run_at}: was stored")
        report.check(await count_where(dsn, "true") == 0, "a refused job left a row behind")

        # Stored exactly, processed like any other job, by workers that stay up.
        jobs = {
            what: sq.Job("chaos", {"plan": "ok", "work": 0, "blob": value})
            for what, value in STORABLE.items()
        }
        await insert(queue, dsn, list(jobs.values()))
        for what, job_ in jobs.items():
            back = await queue.get_job(job_.id)
            report.check(
                back is not None and back.data == job_.data, f"{what}: not read back equal"
            )
        # Strange queue names, keys and fingerprints: stored, read back, cancelled by key.
        strange = [
            sq.Job(name, {"n": i}, unique_key=name, fingerprint=name, run_at=_far_future())
            for i, name in enumerate(STRANGE_NAMES)
        ]
        ids = await queue.insert_jobs(strange)
        for job_, stored in zip(strange, ids, strict=True):
            back = await queue.get_job(job_.id) if stored else None
            report.check(
                back is not None
                and (back.queue, back.unique_key, back.fingerprint)
                == (job_.queue, job_.unique_key, job_.fingerprint),
                f"queue/key {job_.queue!r}: not read back equal",
            )
            report.check(
                await queue.cancel_job_by_unique_key(job_.queue),
                f"unique key {job_.queue!r}: not cancelled",
            )
            await sql(dsn, "DELETE FROM simplequeue.jobs WHERE id = %s", [job_.id])
        drained = await wait_until_drained(dsn, len(jobs), 60)
        report.check(drained, "the storable hostile jobs were not all processed")
    exits = await fleet.stop(30)
    report.check(all(c == 0 for c, _ in exits.values()), f"a worker did not stop cleanly: {exits}")
    report.take(await account(dsn))
    report.notes.insert(
        0,
        f"{report.bad_tried} bad inputs tried, {report.bad_rejected} rejected before a row was "
        f"written ({', '.join(f'{k} {v}' for k, v in rejected.most_common())}); "
        f"{len(STORABLE)} hostile-but-valid payloads and {len(STRANGE_NAMES)} strange "
        "names/keys stored and read back exactly",
    )
    check_logs(report, fleet)
    return report


def _far_future() -> datetime:
    return datetime.now(UTC) + timedelta(days=1)


SCENARIOS: dict[str, Callable[[Context], Awaitable[Report]]] = {
    "storm": crash_storm,
    "outage": db_outage,
    "stalls": stalls,
    "shutdown": shutdown,
    "soak": soak,
    "hostile": hostile_input,
}
