"""Benchmark harness: simplequeue vs procrastinate vs pgqueuer (two drivers) vs bare SQL.

Every (system, workload) case gets a fresh database, runs through the same adapter
interface (bench/adapters), and is verified by counting jobs in the database: a case
that processed fewer jobs than it should is reported FAILED, never as a number.

    python bench/run.py [--quick] [--only sq,procrastinate,...] [--dsn URL]

Writes bench/results/<date>.json (+ .png chart) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

import burndown
import steady
from adapters import SYSTEMS, expand, make_adapter
from adapters.base import Adapter
from adapters.simplequeue_adapter import QUEUE
from harness import (
    BENCH_DIR,
    DB_PREFIX,
    CaseFailed,
    Outcome,
    Report,
    Results,
    Sizes,
    WorkerGroup,
    Workload,
    db_conn,
    drain,
    drain_timeout,
    fresh_db,
    installed_versions,
    machine_info,
    percentile,
    server_settings,
    wait_for_done,
)

RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_DSN = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
LATENCY_CONCURRENCY = 10
LATENCY_WARMUP = 20
SCALE_CONCURRENCY = 100

# --------------------------------------------------------------------------- workloads


async def enqueue_one(adapter: Adapter, dsn: str, n: int, producers: int) -> dict[str, float]:
    """n single-job transactions from `producers` concurrent producers."""
    await adapter.setup(dsn)
    producer = await adapter.open_producer(dsn, producers)
    try:

        async def produce(k: int) -> None:
            for i in range(k, n, producers):
                await producer.enqueue_one({"i": i})

        t0 = time.perf_counter()
        await asyncio.gather(*(produce(k) for k in range(producers)))
        elapsed = time.perf_counter() - t0
    finally:
        await producer.aclose()
    return await _verified_rate(adapter, dsn, n, elapsed)


async def _verified_rate(adapter: Adapter, dsn: str, n: int, elapsed: float) -> dict[str, float]:
    """The enqueue rate, once the database holds every one of the n jobs."""
    async with db_conn(dsn) as conn:
        queued = await adapter.count_queued(conn)
    if queued != n:
        raise CaseFailed(f"{queued}/{n} jobs in the table")
    return {"jobs_per_s": n / elapsed, "seconds": elapsed}


BULK_BATCHES = (100, 1_000, 10_000)
"""Batch sizes of the bulk rows beside the one call of the whole set (`bulk`)."""


async def bulk_enqueue(adapter: Adapter, dsn: str, n: int, chunk: int) -> dict[str, float]:
    """n jobs through the batch API (COPY for the floor)."""
    await adapter.setup(dsn)
    payloads = [{"i": i} for i in range(n)]
    producer = await adapter.open_producer(dsn, 1)
    try:
        t0 = time.perf_counter()
        for lo in range(0, n, chunk):
            await producer.enqueue_bulk(payloads[lo : lo + chunk])
        elapsed = time.perf_counter() - t0
    finally:
        await producer.aclose()
    return await _verified_rate(adapter, dsn, n, elapsed)


async def pickup_latency(adapter: Adapter, dsn: str, n: int, gap: float) -> dict[str, float]:
    """An idle worker; n jobs committed `gap` apart; commit-return -> handler-start.

    The producer takes time.time() right after its commit returns and keeps it by job
    index (a timestamp taken after the commit cannot ride in the same insert); the
    handler records time.time() at its start. Same clock, same machine.
    """
    await adapter.setup(dsn)
    group = WorkerGroup(adapter.name, dsn, 1, LATENCY_CONCURRENCY, record_starts=True)
    committed: dict[int, float] = {}
    try:
        await group.wait_ready()
        producer = await adapter.open_producer(dsn, 1)
        try:
            # Warm-up, not measured: a fresh database and fresh connections make the first
            # few pickups pay for catalog caches and prepared statements.
            for i in range(LATENCY_WARMUP):
                await producer.enqueue_one({"i": -1 - i, "t": time.time()})
                await asyncio.sleep(gap)
            await group.wait_handled(LATENCY_WARMUP, time.monotonic() + 60)
            await asyncio.sleep(2.0)  # then idle: LISTEN and any fallback polls settle
            t0 = time.perf_counter()
            for i in range(n):
                delay = t0 + i * gap - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await producer.enqueue_one({"i": i, "t": time.time()})
                committed[i] = time.time()
        finally:
            await producer.aclose()
        n += LATENCY_WARMUP
        deadline = time.monotonic() + 60
        await group.wait_handled(n, deadline)
        async with db_conn(dsn) as conn:
            await wait_for_done(adapter, conn, n, deadline)
        await group.stop()
        errors = group.errors()
        starts = group.starts()
        async with db_conn(dsn) as conn:
            done = await adapter.count_done(conn)
    finally:
        await group.stop()
        group.close()
    if errors:
        raise RuntimeError(f"worker error: {errors[0]}")
    if done != n or len(starts) != n:
        raise CaseFailed(
            f"{done}/{n} completed in the database (warm-up included), {len(starts)} handler starts"
        )
    lat_ms = sorted((starts[i] - committed[i]) * 1000 for i in committed)
    return {
        "p50_ms": percentile(lat_ms, 50),
        "p99_ms": percentile(lat_ms, 99),
        "max_ms": lat_ms[-1],
        "mean_ms": statistics.fmean(lat_ms),
    }


# --------------------------------------------------------------------------- plan


def _drain_case(
    procs: int, concurrency: int
) -> Callable[[Adapter, str, Sizes], Awaitable[dict[str, float]]]:
    async def run(adapter: Adapter, dsn: str, sizes: Sizes) -> dict[str, float]:
        n = sizes.drain_jobs(adapter.name)
        return await drain(
            adapter,
            dsn,
            total=n,
            target=n,
            procs=procs,
            concurrency=concurrency,
            preload=lambda: adapter.preload(dsn, n, sizes.preload_chunk),
            timeout=drain_timeout(n),
        ) | {"jobs": n}

    return run


async def _scale(
    adapter: Adapter, dsn: str, sizes: Sizes, *, pending: int, finished: int
) -> dict[str, float]:
    """Drain `scale_drain` jobs out of a table preloaded with `pending` and `finished` rows."""

    async def preload() -> None:
        async with db_conn(dsn) as conn:
            await adapter.preload_sql(conn, pending=pending, finished=finished)

    return await drain(
        adapter,
        dsn,
        total=pending,
        target=sizes.scale_drain,
        procs=1,
        concurrency=SCALE_CONCURRENCY,
        preload=preload,
        timeout=drain_timeout(sizes.scale_drain),
    )


LIMITED_KEYS = 1_000
"""Concurrency keys of the per-key drain: jobs spread evenly over them."""


def _limited_case(
    keys: int = 0,
    rate: int | None = None,
    procs: int = 2,
    concurrency: int = 100,
    **limits: Any,
) -> Callable[[Adapter, str, Sizes], Awaitable[dict[str, float]]]:
    """The drain of drain_2x100 (or of `procs` x `concurrency`) on a queue configured with
    `configure_queue(**limits)` (fleet-wide limits, `rate`: starts per second; or a
    durability), its jobs spread over `keys` concurrency keys: what the limits cost, what
    fast commits gain."""

    async def run(adapter: Adapter, dsn: str, sizes: Sizes) -> dict[str, float]:
        import simplequeue as sq

        n = sizes.drain_jobs(adapter.name)

        async def preload() -> None:
            await adapter.preload(dsn, n, sizes.preload_chunk)
            async with db_conn(dsn) as conn:
                if keys:
                    await conn.execute(
                        "UPDATE simplequeue.jobs SET concurrency_key = "
                        "'customer-' || (abs(hashtext(id::text)) %% %s)",
                        [keys],
                    )
            if rate is not None:
                limits["rate_limit"] = sq.Rate(rate, per=1.0)
            async with sq.SimpleQueue.from_url(dsn) as queue:
                await queue.configure_queue(QUEUE, **limits)

        return await drain(
            adapter,
            dsn,
            total=n,
            target=n,
            procs=procs,
            concurrency=concurrency,
            preload=preload,
            timeout=drain_timeout(n),
        ) | {"jobs": n}

    return run


async def _scale_pending(adapter: Adapter, dsn: str, sizes: Sizes) -> dict[str, float]:
    return await _scale(adapter, dsn, sizes, pending=sizes.scale_rows, finished=0)


async def _scale_finished(adapter: Adapter, dsn: str, sizes: Sizes) -> dict[str, float]:
    return await _scale(adapter, dsn, sizes, pending=sizes.scale_drain, finished=sizes.scale_rows)


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "enqueue_one_1",
        "enqueue one, 1 producer",
        "jobs_per_s",
        "jobs/s",
        True,
        lambda a, d, s: enqueue_one(a, d, s.enqueue_one, 1),
    ),
    Workload(
        "enqueue_one_8",
        "enqueue one, 8 producers",
        "jobs_per_s",
        "jobs/s",
        True,
        lambda a, d, s: enqueue_one(a, d, s.enqueue_one, s.producers),
    ),
    Workload(
        "bulk",
        "bulk enqueue (batch API / COPY)",
        "jobs_per_s",
        "jobs/s",
        True,
        lambda a, d, s: bulk_enqueue(a, d, s.bulk, s.bulk_chunk),
    ),
    *(
        Workload(
            f"bulk_{batch}",
            f"bulk enqueue in batches of {batch:,}",
            "jobs_per_s",
            "jobs/s",
            True,
            # the batches applications send, the jobs built in the timed loop as they are
            (lambda b: lambda a, d, s: bulk_enqueue(a, d, s.bulk, min(b, s.bulk)))(batch),
        )
        for batch in BULK_BATCHES
    ),
    Workload(
        "drain_1x10", "drain, 1 worker x c=10", "jobs_per_s", "jobs/s", True, _drain_case(1, 10)
    ),
    Workload(
        "drain_1x100", "drain, 1 worker x c=100", "jobs_per_s", "jobs/s", True, _drain_case(1, 100)
    ),
    Workload(
        "drain_2x100", "drain, 2 workers x c=100", "jobs_per_s", "jobs/s", True, _drain_case(2, 100)
    ),
    Workload(
        "latency",
        "pickup latency (idle worker)",
        "p50_ms",
        "ms",
        False,
        lambda a, d, s: pickup_latency(a, d, s.latency, s.latency_gap_s),
    ),
    Workload(  # bench/pgbouncer.py, imported when run: it needs simplequeue
        "pgbouncer",
        "pickup through PgBouncer",
        "listen_p50_ms",
        "ms",
        False,
        lambda a, d, s: __import__("pgbouncer").pgbouncer_case(a, d, s),
        sq_only=True,
    ),
    *steady.WORKLOADS,  # beside the other latency workloads, before the big preloads
    Workload(
        "limit_running",
        "drain 2x100, max_running=100",
        "jobs_per_s",
        "jobs/s",
        True,
        _limited_case(max_running=100),
        sq_only=True,
    ),
    Workload(
        "limit_per_key",
        "drain 2x100, 1,000 keys, max_running_per_key=1",
        "jobs_per_s",
        "jobs/s",
        True,
        _limited_case(keys=LIMITED_KEYS, max_running_per_key=1),
        sq_only=True,
    ),
    Workload(
        "limit_rate",
        "drain 2x100, rate limit 1M/s (counted, not reached)",
        "jobs_per_s",
        "jobs/s",
        True,
        _limited_case(rate=1_000_000),
        sq_only=True,
    ),
    Workload(
        "durability_fast",
        "drain 2x100, durability fast (against drain_2x100, durable)",
        "jobs_per_s",
        "jobs/s",
        True,
        _limited_case(durability="fast"),
        sq_only=True,
    ),
    Workload(
        "durability_fast_1x10",
        "drain 1x10, durability fast (against drain_1x10, durable)",
        "jobs_per_s",
        "jobs/s",
        True,
        _limited_case(procs=1, concurrency=10, durability="fast"),
        sq_only=True,
    ),
    Workload(
        "scale_pending", "drain with 1M pending", "jobs_per_s", "jobs/s", True, _scale_pending, True
    ),
    Workload(
        "scale_finished",
        "drain with 1M finished rows",
        "jobs_per_s",
        "jobs/s",
        True,
        _scale_finished,
        True,
    ),
    # Modules beside run.py add their workloads (and their own report sections) here;
    # the long burn-down last.
    *burndown.WORKLOADS,
)

#: Rows of the report: (label, workload key, metric, unit, higher is better).
REPORT_ROWS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("enqueue one, 1 producer", "enqueue_one_1", "jobs_per_s", "jobs/s", True),
    ("enqueue one, 8 producers", "enqueue_one_8", "jobs_per_s", "jobs/s", True),
    ("bulk enqueue", "bulk", "jobs_per_s", "jobs/s", True),
    *(
        (f"bulk enqueue, batches of {b:,}", f"bulk_{b}", "jobs_per_s", "jobs/s", True)
        for b in BULK_BATCHES
    ),
    ("drain 1 proc x c=10", "drain_1x10", "jobs_per_s", "jobs/s", True),
    ("drain 1 proc x c=100", "drain_1x100", "jobs_per_s", "jobs/s", True),
    ("drain 2 procs x c=100", "drain_2x100", "jobs_per_s", "jobs/s", True),
    ("pickup latency p50", "latency", "p50_ms", "ms", False),
    ("pickup latency p99", "latency", "p99_ms", "ms", False),
    ("pickup via PgBouncer, listen_dsn, p50", "pgbouncer", "listen_p50_ms", "ms", False),
    ("pickup via PgBouncer, listen_dsn, p99", "pgbouncer", "listen_p99_ms", "ms", False),
    ("pickup via PgBouncer, fallback poll, p50", "pgbouncer", "poll_p50_ms", "ms", False),
    ("pickup via PgBouncer, fallback poll, p99", "pgbouncer", "poll_p99_ms", "ms", False),
    ("drain 2x100, max_running=100", "limit_running", "jobs_per_s", "jobs/s", True),
    ("drain 2x100, 1,000 keys, 1 running per key", "limit_per_key", "jobs_per_s", "jobs/s", True),
    ("drain 2x100, rate limit (counted)", "limit_rate", "jobs_per_s", "jobs/s", True),
    ("drain 2x100, durability fast", "durability_fast", "jobs_per_s", "jobs/s", True),
    ("drain 1x10, durability fast", "durability_fast_1x10", "jobs_per_s", "jobs/s", True),
    ("drain, {rows} pending", "scale_pending", "jobs_per_s", "jobs/s", True),
    ("drain, {rows} finished rows", "scale_finished", "jobs_per_s", "jobs/s", True),
    ("burn-down, {burndown} preloaded, 1 proc x c=100", "burndown", "jobs_per_s", "jobs/s", True),
)
"""Worker RSS has its own table (rss_table), steady-state latency its own section."""


def sq_available() -> str | None:
    """None if simplequeue's public API is importable in this interpreter, else why not."""
    try:
        import simplequeue as sq
    except Exception as exc:
        return f"import simplequeue failed: {exc!r}"
    missing = [n for n in ("setup", "Handler", "SimpleQueue", "Job") if not hasattr(sq, n)]
    return f"simplequeue lacks {', '.join(missing)}" if missing else None


async def run_case(workload: Workload, system: str, admin_dsn: str, sizes: Sizes) -> Outcome:
    adapter = make_adapter(system)
    if workload.scale_only and not adapter.supports_scale:
        return Outcome("SKIPPED", detail="scale workloads: simplequeue and the floor only")
    if workload.sq_only and system != "sq":
        return Outcome("SKIPPED", detail="simplequeue's own features: simplequeue only")
    reason = workload.skip(system, sizes) if workload.skip else None
    if reason:
        return Outcome("SKIPPED", detail=reason)
    t0 = time.perf_counter()
    try:
        async with fresh_db(
            admin_dsn, f"{DB_PREFIX}{system.replace('-', '_')}_{workload.key}"
        ) as dsn:
            measured = await workload.run(adapter, dsn, sizes)
        cells = measured.pop("cells", [])
        return Outcome("ok", measured, seconds=time.perf_counter() - t0, cells=cells)
    except CaseFailed as exc:
        return Outcome("FAILED", detail=str(exc), seconds=time.perf_counter() - t0)
    except Exception as exc:
        return Outcome(
            "ERROR", detail=f"{type(exc).__name__}: {exc}"[:300], seconds=time.perf_counter() - t0
        )


# --------------------------------------------------------------------------- report


def human(n: int) -> str:
    """1000000 -> 1M, 100000 -> 100k: for row labels."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def cell_line(row: dict[str, Any]) -> str:
    """One row of a workload's own table, for the progress log."""
    return " ".join(f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def row_label(label: str, sizes: Sizes) -> str:
    """A REPORT_ROWS label with this run's sizes in it."""
    return label.format(rows=human(sizes.scale_rows), burndown=human(sizes.burndown))


def fmt(value: float, unit: str) -> str:
    if unit == "jobs/s":
        return f"{value:,.0f}"
    return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def cell(
    results: dict[str, dict[str, Outcome]], key: str, system: str, metric: str
) -> float | None:
    outcome = results.get(key, {}).get(system)
    if outcome is None or outcome.status != "ok":
        return None
    return outcome.metrics.get(metric)


def status_text(results: dict[str, dict[str, Outcome]], key: str, system: str) -> str:
    outcome = results.get(key, {}).get(system)
    if outcome is None:
        return "-"
    if outcome.status == "SKIPPED":
        return "n/a"
    return outcome.status


def markdown(report: Report) -> str:
    """Raw values, ratios vs the bare floor and vs simplequeue, worker RSS, then the
    sections of the workloads that have a table of their own."""
    results, systems, sizes = report.results, report.systems, report.sizes
    drain_size = sizes.drain
    rows = [(row_label(r[0], sizes), *r[1:]) for r in REPORT_ROWS]
    out: list[str] = []
    header = "| workload | unit | " + " | ".join(systems) + " |"
    rule = "|---|---|" + "---:|" * len(systems)
    out += ["### Results", "", header, rule]
    for label, key, metric, unit, _ in rows:
        cells = []
        for system in systems:
            value = cell(results, key, system, metric)
            cells.append(
                fmt(value, unit) if value is not None else status_text(results, key, system)
            )
        out.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    for ref, title in (("bare", "the bare floor"), ("sq", "simplequeue")):
        if ref not in systems:
            continue
        out += [
            "",
            f"### Ratio vs {title} (throughput: >1 is faster than {ref}; latency/RSS: >1 is worse)",
            "",
            header.replace("| unit |", "| |"),
            rule,
        ]
        for label, key, metric, unit, _ in rows:
            base = cell(results, key, ref, metric)
            cells = []
            for system in systems:
                value = cell(results, key, system, metric)
                cells.append(f"{value / base:.2f}x" if value is not None and base else "-")
            out.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    sizes_used = sorted(
        {
            f"- {system} drains {o.metrics['jobs']:,.0f} jobs per drain case (README: Sizes)"
            for key, per in results.items()
            if key.startswith("drain_")
            for system, o in per.items()
            if o.status == "ok" and o.metrics.get("jobs") not in (None, drain_size)
        }
    )
    if sizes_used:
        out += ["", f"Drain cases use {drain_size:,} jobs, except:", "", *sizes_used]
    out += ["", *rss_table(results, systems)]
    for workload in WORKLOADS:
        if workload.section and workload.key in results:
            lines = workload.section(report)
            if lines:
                out += ["", *lines]
    problems = [
        f"- {key} / {system}: **{o.status}** {o.detail}"
        for key, per in results.items()
        for system, o in per.items()
        if o.status in ("FAILED", "ERROR")
    ]
    if problems:
        out += ["", "### Failures", "", *problems]
    return "\n".join(out)


RSS_CASES: tuple[tuple[str, str], ...] = (
    ("drain_1x10", "drain 1x10"),
    ("drain_1x100", "drain 1x100"),
    ("drain_2x100", "drain 2x100 (per process)"),
    ("steady", "steady"),
    ("burndown", "burn-down"),
)
"""Cases whose worker RSS the table shows; the drain_* ones every system runs alike."""
PEERS = tuple(s for s in SYSTEMS if s not in ("bare", "sq"))


def rss_summary(results: Results, systems: list[str]) -> dict[str, Any]:
    """Each system's worker peak RSS by case, its peak over the drains (the cases every
    system runs in the same configuration), the leanest peer and simplequeue's ratio."""
    per_system: dict[str, Any] = {}
    for system in systems:
        cases = {
            key: value
            for key, _ in RSS_CASES
            if (value := cell(results, key, system, "peak_rss_mb")) is not None
        }
        drains = [v for k, v in cases.items() if k.startswith("drain_")]
        per_system[system] = {"cases_mb": cases, "peak_mb": max(drains, default=None)}
    peers = {s: v["peak_mb"] for s, v in per_system.items() if s in PEERS and v["peak_mb"]}
    leanest = min(peers, key=lambda s: peers[s]) if peers else None
    sq_mb = per_system.get("sq", {}).get("peak_mb")
    return {
        "compared_on": "peak over drain_1x10, drain_1x100, drain_2x100",
        "per_system": per_system,
        "leanest_peer": leanest,
        "leanest_peer_mb": peers[leanest] if leanest else None,
        "sq_mb": sq_mb,
        "sq_vs_leanest_peer": sq_mb / peers[leanest] if leanest and sq_mb else None,
    }


def rss_table(results: Results, systems: list[str]) -> list[str]:
    """Worker peak RSS per system and case, with the leanest peer named."""
    summary = rss_summary(results, systems)
    shown = [(k, label) for k, label in RSS_CASES if k in results]
    if not any(v["peak_mb"] for v in summary["per_system"].values()):
        return []
    lean = summary["leanest_peer_mb"]
    out = [
        "### Worker peak RSS (MB, psutil every 50 ms; one worker process)",
        "",
        "| system | " + " | ".join(label for _, label in shown) + " | peak of the drains"
        " | vs leanest peer |",
        "|---|" + "---:|" * (len(shown) + 2),
    ]
    for system in systems:
        info = summary["per_system"][system]
        row = []
        for key, _ in shown:
            value = info["cases_mb"].get(key)
            row.append(f"{value:.1f}" if value is not None else status_text(results, key, system))
        peak = info["peak_mb"]
        ratio = f"{peak / lean:.2f}x" if peak and lean else "-"
        row += [f"{peak:.1f}" if peak else "-", ratio]
        out.append(f"| {system} | " + " | ".join(row) + " |")
    if summary["leanest_peer"]:
        line = f"Leanest peer: **{summary['leanest_peer']}** at {lean:.1f} MB"
        if summary["sq_vs_leanest_peer"]:
            line += (
                f"; simplequeue {summary['sq_mb']:.1f} MB ="
                f" **{summary['sq_vs_leanest_peer']:.2f}x** of it"
            )
        out += ["", line + " (peak over the drains)."]
    return out


def chart(
    results: dict[str, dict[str, Outcome]], systems: list[str], sizes: Sizes, path: Path, title: str
) -> None:
    """Grouped bars of throughput ratios vs the floor and vs simplequeue (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(row_label(r[0], sizes), *r[1:]) for r in REPORT_ROWS if r[4]]
    refs = [r for r in ("bare", "sq") if r in systems]
    if not refs:
        return
    fig, axes = plt.subplots(len(refs), 1, figsize=(12, 4.5 * len(refs)), squeeze=False)
    for ax, ref in zip(axes[:, 0], refs, strict=True):
        others = [s for s in systems if s != ref]  # the reference is the 1.0 line
        width = 0.8 / max(1, len(others))
        for k, system in enumerate(others):
            xs, ys = [], []
            for x, (_, key, metric, _, _) in enumerate(rows):
                base = cell(results, key, ref, metric)
                value = cell(results, key, system, metric)
                if base and value is not None:
                    xs.append(x + (k - (len(others) - 1) / 2) * width)
                    ys.append(value / base)
            bars = ax.bar(xs, ys, width, label=system)
            ax.bar_label(bars, labels=[f"{y:.2g}" for y in ys], fontsize=6, padding=1)
            for x, (_, key, _, _, _) in enumerate(rows):
                status = status_text(results, key, system)
                if status in ("FAILED", "ERROR"):  # a missing bar must not read as "not run"
                    ax.text(
                        x + (k - (len(others) - 1) / 2) * width,
                        0.02,
                        status,
                        rotation=90,
                        transform=ax.get_xaxis_transform(),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        color="red",
                    )
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([r[0] for r in rows], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"throughput / {ref}")
        ax.set_title(f"{title}: ratio vs {ref} (higher is faster)")
        ax.legend(fontsize=8, ncols=max(1, len(others)))
        ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def cleanup_stale(admin_dsn: str) -> None:
    """Drop databases an interrupted earlier run left behind."""
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (DB_PREFIX + "%",)
        )
        for (name,) in await cur.fetchall():
            await conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def main_async(args: argparse.Namespace) -> int:
    sizes = Sizes().quick() if args.quick else Sizes()
    if args.burndown_all:
        sizes = dataclasses.replace(sizes, burndown_skip=())
    systems = expand(args.only) if args.only else list(SYSTEMS)
    wanted = {k for k in args.workloads.split(",") if k}
    unknown = wanted - {w.key for w in WORKLOADS} - {"producers"}
    if unknown:
        print(f"bench: unknown workloads {sorted(unknown)}; known: {[w.key for w in WORKLOADS]}")
        return 2
    skipped = {k for k in args.skip.split(",") if k}
    unknown = skipped - {w.key for w in WORKLOADS} - {"producers"}
    if unknown:
        print(f"bench: unknown workloads {sorted(unknown)}; known: {[w.key for w in WORKLOADS]}")
        return 2
    workloads = [w for w in WORKLOADS if (not wanted or w.key in wanted) and w.key not in skipped]
    started = time.perf_counter()
    await cleanup_stale(args.dsn)
    settings = await server_settings(args.dsn)
    machine = machine_info()
    results: Results = {w.key: {} for w in workloads}
    sq_problem = sq_available() if "sq" in systems else None
    print(
        f"bench: systems={','.join(systems)} quick={args.quick}"
        f" postgres {settings['server_version']}"
        f" fsync={settings['fsync']} synchronous_commit={settings['synchronous_commit']}",
        flush=True,
    )
    if sq_problem:
        print(f"bench: simplequeue unavailable: {sq_problem}", flush=True)
    for workload in workloads:
        for system in systems:
            if system == "sq" and sq_problem:
                outcome = Outcome("ERROR", detail=sq_problem)
            else:
                outcome = await run_case(workload, system, args.dsn, sizes)
            results[workload.key][system] = outcome
            shown = ", ".join(f"{k}={v:,.2f}" for k, v in outcome.metrics.items()) or outcome.detail
            print(
                f"  {workload.key:<15} {system:<17} {outcome.status:<7}"
                f" {outcome.seconds:6.1f}s  {shown}",
                flush=True,
            )
            for row in outcome.cells:
                print("  " + " " * 33 + cell_line(row), flush=True)
    paths: list[Any] = []
    paths_problem = ""
    if (
        "sq" in systems
        and not sq_problem
        and (not wanted or "producers" in wanted)
        and "producers" not in skipped
    ):
        from producers import producer_paths

        try:
            async with fresh_db(args.dsn, f"{DB_PREFIX}producers") as dsn:
                paths = await producer_paths(dsn, sizes.enqueue_one // 2)
        except Exception as exc:
            paths_problem = f"producer paths: ERROR {exc!r}"
            print(paths_problem, flush=True)
        for path in paths:
            print(
                f"  producers       {path.label:<50} raw {path.raw_us:6.0f} us"
                f"  sq {path.sq_us:6.0f} us  {path.ratio:.2f}x",
                flush=True,
            )
    wall = time.perf_counter() - started

    date = dt.date.today().isoformat()
    stem = date + ("-quick" if args.quick else "")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    versions = installed_versions(
        "procrastinate", "pgqueuer", "psycopg", "psycopg-pool", "asyncpg", "simplequeue"
    )
    payload = {
        "date": date,
        "quick": args.quick,
        "wall_seconds": wall,
        "sizes": dataclasses.asdict(sizes),
        "systems": systems,
        "server": settings,
        "machine": machine,
        "versions": versions,
        "results": {
            k: {s: dataclasses.asdict(o) for s, o in per.items()} for k, per in results.items()
        },
        "rss": rss_summary(results, systems),
        "producer_paths": [dataclasses.asdict(p) | {"ratio": p.ratio} for p in paths],
    }
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    with contextlib.suppress(Exception):
        chart(results, systems, sizes, RESULTS_DIR / f"{stem}.png", f"simplequeue bench {stem}")
    print()
    print(markdown(Report(results, systems, sizes, machine, settings)))
    if paths:
        from producers import markdown as paths_markdown

        print()
        print(paths_markdown(paths))
    elif paths_problem:
        print(f"\n{paths_problem}")
    print(f"\nwall time: {wall:.0f} s; results: {RESULTS_DIR / (stem + '.json')} and .png")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="sizes / 10: a smoke run")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma list of systems or aliases: {', '.join(SYSTEMS)}, pgqueuer",
    )
    parser.add_argument(
        "--workloads",
        default="",
        help="comma list of workload keys, `producers` for the producer paths (default: all)",
    )
    parser.add_argument(
        "--dsn", default=DEFAULT_DSN, help="admin DSN (URL); each case gets its own database"
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of workload keys (or `producers`) to leave out, e.g. burndown",
    )
    parser.add_argument(
        "--burndown-all",
        action="store_true",
        help="burn-down for every system, past the budget (default: those that fit it)",
    )
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
