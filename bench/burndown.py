"""Burn-down: a backlog of a million jobs, drained by one worker process.

The backlog goes in by the fastest path each system has (straight SQL into its tables
where the adapter knows them, else its batch API), then VACUUM ANALYZE; one worker
process at concurrency BURNDOWN_CONCURRENCY (drain_1x100's configuration) drains it, timed
from its first handler start to the last completion the database records, and every job
is counted in the database like every other drain. A CHECKPOINT after the preload and
its VACUUM ANALYZE keeps their flush out of the timed drain.
"""

from __future__ import annotations

import time
from typing import Any

from adapters.base import Adapter
from harness import Report, Sizes, Workload, db_conn, drain

BURNDOWN_CONCURRENCY = 100
"""drain_1x100's configuration: one process, c=100."""
BURNDOWN_CHUNK = 50_000
"""Jobs per batch-API call for systems without an SQL preload."""
MIN_RATE = 3_000
"""Jobs/s the time limit assumes: a case slower than this is FAILED, not waited for."""

SKIPPED: dict[str, str] = {
    "procrastinate": "fetches one job per round trip (~200-800 jobs/s here)",
    "pgqueuer-psycopg": "drains at ~2-9k jobs/s here at c=100",
    "pgqueuer-asyncpg": "drains at ~4-9k jobs/s here at c=100",
}
"""Why each system of Sizes.burndown_skip is left out: a million jobs at its rate would
take minutes the 15-minute budget does not have (`--burndown-all` runs them anyway)."""


def burndown_timeout(n: int) -> float:
    """The drain's limit: a healthy system is far faster than MIN_RATE."""
    return 30 + n / MIN_RATE


async def burndown(adapter: Adapter, dsn: str, sizes: Sizes) -> dict[str, Any]:
    """Preload `sizes.burndown` jobs (timed), then drain them with one worker at c=100."""
    n = sizes.burndown
    timings: dict[str, float] = {}

    async def preload() -> None:
        t0 = time.perf_counter()
        try:
            async with db_conn(dsn) as conn:
                await adapter.preload_sql(conn, pending=n, finished=0)
            timings["preload_sql"] = 1.0
        except NotImplementedError:
            await adapter.preload(dsn, n, BURNDOWN_CHUNK)
            timings["preload_sql"] = 0.0
        timings["preload_s"] = time.perf_counter() - t0

    result = await drain(
        adapter,
        dsn,
        total=n,
        target=n,
        procs=1,
        concurrency=BURNDOWN_CONCURRENCY,
        preload=preload,
        timeout=burndown_timeout(n),
        settle=True,
    )
    return result | timings | {"jobs": n}


def _skip(system: str, sizes: Sizes) -> str | None:
    if system not in sizes.burndown_skip:
        return None
    why = SKIPPED.get(system, "too slow for the budget")
    return f"{why}: {sizes.burndown:,} jobs would not fit the run's budget (--burndown-all)"


def section(report: Report) -> list[str]:
    """Jobs/s and wall time per system, the skipped ones with their reason, the hardware."""
    per = report.results.get("burndown", {})
    if not per:
        return []
    out = [
        f"### Burn-down ({report.sizes.burndown:,} jobs preloaded, 1 worker process,"
        f" c={BURNDOWN_CONCURRENCY})",
        "",
        "| system | jobs/s | drain wall time s | preload s (path) | worker peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    notes = []
    for system in report.systems:
        outcome = per.get(system)
        if outcome is None:
            continue
        if outcome.status == "SKIPPED":
            out.append(f"| {system} | skipped | | | |")
            note = f"- {system} skipped: {outcome.detail}"
            drain = report.results.get("drain_1x100", {}).get(system)
            if drain and drain.status == "ok" and drain.metrics.get("jobs_per_s"):
                rate = drain.metrics["jobs_per_s"]
                minutes = report.sizes.burndown / rate / 60
                note += f"; at this run's drain_1x100 rate ({rate:,.0f} jobs/s): ~{minutes:.1f} min"
            notes.append(note)
            continue
        if outcome.status != "ok":
            out.append(f"| {system} | {outcome.status} | | | |")
            continue
        m = outcome.metrics
        path = "SQL" if m.get("preload_sql") else "batch API"
        out.append(
            f"| {system} | {m['jobs_per_s']:,.0f} | {m['seconds']:.1f}"
            f" | {m['preload_s']:.1f} ({path}) | {m['peak_rss_mb']:.1f} |"
        )
    out += ["", *notes, "", *hardware_lines(report)]
    return out


def hardware_lines(report: Report) -> list[str]:
    """The machine and server the figures were taken on, as read during the run."""
    m, s = report.machine, report.server
    settings = ", ".join(f"{k}={v}" for k, v in s.items() if k != "server_version" and v != "")
    return [
        f"Hardware: {m.get('cpu_model', '?')}, {m.get('cpus', '?')} logical CPUs"
        f" ({m.get('physical_cores', '?')} cores), {m.get('ram_gib', '?')} GiB RAM,"
        f" {m.get('platform', '?')}; PostgreSQL {s.get('server_version', '?')} on the same"
        f" machine (loopback), {settings}.",
    ]


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "burndown",
        "burn-down: drain 1M preloaded jobs, 1 worker x c=100",
        "jobs_per_s",
        "jobs/s",
        True,
        burndown,
        skip=_skip,
        section=section,
    ),
)
