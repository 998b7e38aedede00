"""Steady-state pickup latency: producers paced open-loop at a share of the capacity.

One worker process at concurrency STEADY_CONCURRENCY. For each producer count, a short
flat-out phase measures what this worker and these producers sustain together (the
capacity), then each load (a share of that capacity) runs for a fixed time with every
producer on its own connection, one job per transaction, sending on an absolute schedule:
a slow insert is followed by the next one at once, so it does not lower the offered rate.
Latency is the existing `latency` workload's: the producer's clock right after its commit
returns, to the handler's clock at its start. A load whose achieved rate falls below
SATURATED of the offered one is flagged saturated, not reported as if it had held.

Why the capacity is measured here and not taken from drain_1x100: a preloaded drain runs
at 20-40k jobs/s for the fast systems, while one producer committing one job per
transaction reaches ~2k/s on this machine; a quarter of the drain figure would already be
out of every producer's reach and each cell would measure the producers. The report
prints the same run's drain_1x100 beside the capacity.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from adapters.base import Adapter, Producer
from harness import (
    CaseFailed,
    Report,
    Sizes,
    WorkerGroup,
    Workload,
    checkpoint,
    db_conn,
    percentile,
    wait_for_done,
)

STEADY_CONCURRENCY = 100
"""The worker's concurrency, that of drain_1x100."""
SATURATED = 0.95
"""A cell whose achieved rate is below this share of the offered rate is saturated."""
TARGET_P99_MS = 20.0
TARGET_LOAD = 80
"""The target the report prints beside the table: p99 <= 20 ms at 80% load."""
WARMUP = 20
"""Unmeasured jobs before each capacity phase: fresh connections, cold caches."""
BACKLOG_TIMEOUT = 30.0
"""Seconds a phase's backlog may take to be worked off before the case fails."""


class Ids:
    """Job indices handed out densely, so the next unused one counts the jobs sent."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, n: int = 1) -> int:
        first = self.next
        self.next += n
        return first


@dataclasses.dataclass
class _Phase:
    """One paced cell: which indices it sent and when it started."""

    producers: int
    load: int
    rate: float
    first: int
    count: int
    t0_epoch: float


async def steady(adapter: Adapter, dsn: str, sizes: Sizes) -> dict[str, Any]:
    """Every (producers, load) cell of one system against one worker process."""
    await adapter.setup(dsn)
    await checkpoint(dsn)  # the cases before this one leave dirty pages to flush
    group = WorkerGroup(adapter.name, dsn, 1, STEADY_CONCURRENCY, record_starts=True)
    committed: dict[int, float] = {}
    indices = Ids()
    phases: list[_Phase] = []
    capacities: dict[int, dict[str, float]] = {}
    try:
        await group.wait_ready()
        for producers in sizes.steady_producer_counts(adapter.name):
            producer = await adapter.open_producer(dsn, producers)
            try:
                await warm_up(group, producer, indices)
                capacities[producers] = cap = await measure_capacity(
                    group, producer, producers, indices, sizes.steady_capacity_seconds
                )
                for load in sizes.steady_loads:
                    phase = await _paced(
                        producer,
                        producers,
                        load,
                        cap["capacity"] * load / 100,
                        sizes.steady_seconds,
                        indices,
                        committed,
                    )
                    phases.append(phase)
                    await work_off(group, indices.next, f"{producers}p at {load}%")
            finally:
                await producer.aclose()
        total = indices.next
        deadline = time.monotonic() + BACKLOG_TIMEOUT
        await group.wait_handled(total, deadline)
        async with db_conn(dsn) as conn:
            await wait_for_done(adapter, conn, total, deadline)
        await group.stop()
        errors = group.errors()
        starts = group.starts()
        async with db_conn(dsn) as conn:
            done = await adapter.count_done(conn)
            left = await adapter.count_queued(conn)
    finally:
        await group.stop()
        group.close()
    if errors:
        raise RuntimeError(f"worker error: {errors[0]}")
    if done != total or left or len(starts) != total:
        raise CaseFailed(
            f"{done}/{total} completed in the database, {left} still queued,"
            f" {len(starts)} handler starts"
        )
    cells = [_cell(phase, committed, starts, capacities[phase.producers]) for phase in phases]
    metrics: dict[str, Any] = {"peak_rss_mb": group.peak_rss_mb(), "jobs": total}
    for producers, cap in capacities.items():
        metrics[f"capacity_{producers}p"] = cap["capacity"]
    metrics["cells"] = cells
    return metrics


async def warm_up(group: WorkerGroup, producer: Producer, indices: Ids) -> None:
    """A few jobs, each waited for: the measured phases start on warm connections."""
    for _ in range(WARMUP):
        await producer.enqueue_one({"i": indices.take(), "t": time.time()})
    await work_off(group, indices.next, "warm-up")


async def measure_capacity(
    group: WorkerGroup,
    producer: Producer,
    producers: int,
    indices: Ids,
    seconds: float,
) -> dict[str, float]:
    """Producers flat out for `seconds` while the worker runs: handler starts per second.

    Whichever side is slower bounds it: the producers (the worker keeps up) or the
    worker (a backlog grows). The backlog is worked off before the cells start.
    """
    sent = 0
    handled_before = group.handled()
    t0 = time.perf_counter()
    end = t0 + seconds

    async def flat_out() -> None:
        nonlocal sent
        while time.perf_counter() < end:
            await producer.enqueue_one({"i": indices.take(), "t": time.time()})
            sent += 1

    await asyncio.gather(*(flat_out() for _ in range(producers)))
    elapsed = time.perf_counter() - t0
    handled = group.handled() - handled_before
    capacity = handled / elapsed
    if capacity < 1:
        raise CaseFailed(
            f"capacity phase ({producers}p): {handled} jobs started in {elapsed:.1f} s"
        )
    await work_off(group, indices.next, f"capacity phase ({producers}p)")
    return {
        "capacity": capacity,
        "inserted_per_s": sent / elapsed,
        "bound_by_worker": float(handled < SATURATED * sent),
    }


async def _paced(
    producer: Producer,
    producers: int,
    load: int,
    rate: float,
    seconds: float,
    indices: Ids,
    committed: dict[int, float],
) -> _Phase:
    """`rate` jobs/s for `seconds`: one paced cell."""
    count = max(producers, round(rate * seconds))
    first = indices.take(count)
    t0_epoch = time.time()
    await send_paced(producer, producers, rate, first, count, committed)
    return _Phase(producers, load, rate, first, count, t0_epoch)


async def send_paced(
    producer: Producer,
    producers: int,
    rate: float,
    first: int,
    count: int,
    committed: dict[int, float],
    stop_at: float | None = None,
) -> None:
    """Jobs first .. first+count-1 at `rate` jobs/s on an absolute schedule: producer k
    sends jobs k, k+P, ... at t0 + j / rate, a late one followed at once by the next due,
    and keeps each job's commit-return time in `committed` by index. None is sent after
    the perf_counter time `stop_at`: a run of fixed length ends on time even when its
    producers fell behind (the jobs left unsent are those missing from `committed`)."""
    t0 = time.perf_counter()

    async def send(k: int) -> None:
        for j in range(k, count, producers):
            if stop_at is not None and time.perf_counter() >= stop_at:
                return
            delay = t0 + j / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.enqueue_one({"i": first + j, "t": time.time()})
            committed[first + j] = time.time()

    await asyncio.gather(*(send(k) for k in range(producers)))


async def work_off(group: WorkerGroup, sent: int, what: str) -> None:
    """Until every job sent so far has started (then a short pause), or fail the case.

    `sent` is the next unused index (Ids), which counts the jobs sent so far.
    """
    if not await group.wait_handled(sent, time.monotonic() + BACKLOG_TIMEOUT):
        raise CaseFailed(
            f"{what}: {sent - group.handled()} jobs still waiting {BACKLOG_TIMEOUT:.0f} s later"
        )
    await asyncio.sleep(0.3)


def _cell(
    phase: _Phase, committed: dict[int, float], starts: dict[int, float], cap: dict[str, float]
) -> dict[str, Any]:
    """Latency percentiles and achieved rate of one phase (end to end: to the last start)."""
    ids = range(phase.first, phase.first + phase.count)
    lat_ms = sorted((starts[i] - committed[i]) * 1000 for i in ids)
    interval = 1 / phase.rate
    achieved = phase.count / (max(starts[i] for i in ids) - phase.t0_epoch + interval)
    inserted = phase.count / (max(committed[i] for i in ids) - phase.t0_epoch + interval)
    return {
        "producers": phase.producers,
        "load_pct": phase.load,
        "capacity": cap["capacity"],
        "capacity_bound": "worker" if cap["bound_by_worker"] else "producers",
        "offered_per_s": phase.rate,
        "achieved_per_s": achieved,
        "inserted_per_s": inserted,
        "saturated": achieved < SATURATED * phase.rate,
        "jobs": phase.count,
        "p50_ms": percentile(lat_ms, 50),
        "p95_ms": percentile(lat_ms, 95),
        "p99_ms": percentile(lat_ms, 99),
        "max_ms": lat_ms[-1],
    }


def section(report: Report) -> list[str]:
    """The steady-state table: system x producers x load, with the target beside it."""
    per = report.results.get("steady", {})
    if not per:
        return []
    out = [
        f"### Steady-state pickup latency (1 worker process, c={STEADY_CONCURRENCY};"
        f" target: p99 <= {TARGET_P99_MS:.0f} ms at {TARGET_LOAD}% load)",
        "",
        f"Load = share of the capacity measured just before in the same run (producers flat"
        f" out for {report.sizes.steady_capacity_seconds:g} s with the worker running);"
        f" each cell {report.sizes.steady_seconds:g} s, paced open-loop. A cell below"
        f" {SATURATED:.0%} of its offered rate is **saturated**.",
        "",
        "| system | producers | capacity/s (bound) | drain_1x100/s | load | offered/s"
        " | achieved/s | p50 ms | p95 ms | p99 ms | |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for system in report.systems:
        outcome = per.get(system)
        if outcome is None:
            continue
        if outcome.status != "ok":
            out.append(f"| {system} | | | | | | | | | | {outcome.status} {outcome.detail} |")
            continue
        drain = report.results.get("drain_1x100", {}).get(system)
        drain_text = (
            f"{drain.metrics['jobs_per_s']:,.0f}" if drain and drain.status == "ok" else "-"
        )
        for c in outcome.cells:
            notes = []
            if c["saturated"]:
                # Which side fell behind: the inserts themselves, or the worker after them.
                side = (
                    "producers"
                    if c["inserted_per_s"] < SATURATED * c["offered_per_s"]
                    else "worker"
                )
                notes.append(f"**saturated** ({side})")
            if c["load_pct"] == TARGET_LOAD and not c["saturated"]:
                notes.append("meets" if c["p99_ms"] <= TARGET_P99_MS else "**misses**")
            out.append(
                f"| {system} | {c['producers']} | {c['capacity']:,.0f} ({c['capacity_bound']})"
                f" | {drain_text} | {c['load_pct']}% | {c['offered_per_s']:,.0f}"
                f" | {c['achieved_per_s']:,.0f} | {c['p50_ms']:.1f} | {c['p95_ms']:.1f}"
                f" | {c['p99_ms']:.1f} | {' '.join(notes)} |"
            )
    return out


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "steady",
        "steady-state pickup latency at 25/50/80% of capacity, 1 and 4 producers",
        "capacity_1p",
        "jobs/s",
        True,
        steady,
        section=section,
    ),
)
