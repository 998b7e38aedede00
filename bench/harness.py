"""The harness's plumbing, shared by every workload module: sizes, outcomes, fresh
databases, worker processes with their RSS sampler, the verified drain, the registry's
record type.

bench/run.py (the classic workloads, the report, the command line) and the workload
modules beside it (steady.py, burndown.py) import from here, never from run.py: run.py is
the script, and importing it again under its own name would make a second copy of every
class (a CaseFailed raised in one copy is not caught as the other).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapters.base import Adapter, Control

BENCH_DIR = Path(__file__).resolve().parent
DB_PREFIX = os.environ.get("BENCH_DB_PREFIX", "sqbench_")
"""Every case's database starts with this; a run first drops the ones an interrupted run
left behind, so two runs sharing a server need different prefixes (BENCH_DB_PREFIX)."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Workload sizes; --quick divides them by ten."""

    enqueue_one: int = 5_000
    producers: int = 8
    bulk: int = 100_000
    bulk_chunk: int = 100_000  # jobs per batch-API call (the whole set in one call)
    preload_chunk: int = 10_000  # drains preload through the batch API in these chunks
    drain: int = 50_000
    #: Systems too slow for `drain` jobs within the time budget drain this many instead
    #: (still fully verified). procrastinate fetches one job per round trip: ~250-400
    #: jobs/s here, so 50k would cost ~3 minutes per drain case.
    drain_override: tuple[tuple[str, int], ...] = (("procrastinate", 8_000),)
    latency: int = 1_000
    latency_gap_s: float = 0.005
    scale_rows: int = 1_000_000
    scale_drain: int = 50_000
    #: steady: seconds per paced cell, seconds of the flat-out capacity phase before the
    #: cells of each producer count, the loads (% of that capacity), the producer counts.
    steady_seconds: float = 5.0
    steady_capacity_seconds: float = 2.0
    steady_loads: tuple[int, ...] = (25, 50, 80)
    steady_producers: tuple[int, ...] = (1, 4)
    #: Fewer cells where the budget needs it: procrastinate's capacity is its worker's
    #: (~300-800 jobs/s), which more producers do not change.
    steady_producers_override: tuple[tuple[str, tuple[int, ...]], ...] = (("procrastinate", (1,)),)
    burndown: int = 1_000_000
    #: Systems the burn-down leaves out for the budget (burndown.SKIPPED says why);
    #: run.py --burndown-all empties it.
    burndown_skip: tuple[str, ...] = ("procrastinate", "pgqueuer-psycopg", "pgqueuer-asyncpg")

    def drain_jobs(self, system: str) -> int:
        return dict(self.drain_override).get(system, self.drain)

    def steady_producer_counts(self, system: str) -> tuple[int, ...]:
        return dict(self.steady_producers_override).get(system, self.steady_producers)

    def quick(self) -> Sizes:
        return dataclasses.replace(
            self,
            enqueue_one=self.enqueue_one // 10,
            bulk=self.bulk // 10,
            bulk_chunk=self.bulk_chunk // 10,
            preload_chunk=self.preload_chunk // 10,
            drain=self.drain // 10,
            drain_override=tuple((k, v // 10) for k, v in self.drain_override),
            latency=self.latency // 10,
            scale_rows=self.scale_rows // 10,
            scale_drain=self.scale_drain // 10,
            # Durations, not counts: a tenth would leave too few samples for a p99.
            steady_seconds=2.0,
            steady_capacity_seconds=1.0,
            burndown=self.burndown // 10,
        )


@dataclasses.dataclass
class Outcome:
    """One (workload, system) cell: a verified number, or why there is none."""

    status: str  # ok | FAILED | ERROR | SKIPPED
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0
    #: Rows of a workload with a table of its own (the `cells` its run returned).
    cells: list[dict[str, Any]] = dataclasses.field(default_factory=list)


Results = dict[str, dict[str, Outcome]]
"""Outcomes by workload key, then by system."""


class CaseFailed(Exception):
    """The database shows fewer jobs processed than the workload required."""


# --------------------------------------------------------------------------- databases


def dsn_for(admin_dsn: str, dbname: str) -> str:
    """Same server and user, another database; URL form (asyncpg accepts no key=value)."""
    if "://" not in admin_dsn:
        params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
        user = urllib.parse.quote(str(params.get("user", "postgres")))
        password = params.get("password")
        auth = user + (f":{urllib.parse.quote(str(password))}" if password else "")
        host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
        admin_dsn = f"postgresql://{auth}@{host}:{port}/postgres"
    parts = urllib.parse.urlsplit(admin_dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{dbname}"))


@contextlib.asynccontextmanager
async def fresh_db(admin_dsn: str, name: str) -> AsyncIterator[str]:
    """A brand-new database for one case, dropped afterwards (1M-row cases are big)."""
    ident = sql.Identifier(name)
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        yield dsn_for(admin_dsn, name)
    finally:
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@contextlib.asynccontextmanager
async def db_conn(dsn: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        yield conn


async def vacuum_analyze(dsn: str) -> None:
    """After a preload: every system starts its drain with fresh stats and no autovacuum debt."""
    async with db_conn(dsn) as conn:
        await conn.execute("VACUUM ANALYZE")


async def checkpoint(dsn: str) -> None:
    """Write out what earlier cases left dirty, so its flush does not stall this case's
    commits (the long and latency-bound cases ask for it; the server may refuse a role
    without pg_checkpoint, and then the case runs as it is)."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        async with db_conn(dsn) as conn:
            await conn.execute("CHECKPOINT")


# --------------------------------------------------------------------------- workers


class RssSampler(threading.Thread):
    """Peak RSS of each worker process, sampled every 50 ms."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.procs = [psutil.Process(pid) for pid in pids]
        self.peak: dict[int, int] = {pid: 0 for pid in pids}
        self.interval = interval
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            for proc in self.procs:
                with contextlib.suppress(psutil.Error):
                    rss = proc.memory_info().rss
                    self.peak[proc.pid] = max(self.peak[proc.pid], rss)
            self._halt.wait(self.interval)

    def halt(self) -> None:
        self._halt.set()
        self.join()


class WorkerGroup:
    """N worker subprocesses of one system, with their control blocks and RSS sampler."""

    def __init__(
        self,
        system: str,
        dsn: str,
        procs: int,
        concurrency: int,
        record_starts: bool = False,
        *,
        stream_starts: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """`record_starts`: the handler starts, read once the workers exit (starts());
        `stream_starts`: read as they go (take_streamed_starts()), for long runs;
        `settings`: the system's own worker settings (Adapter.configure_worker)."""
        self.tmp = tempfile.TemporaryDirectory(prefix="sqbench-")
        self.controls: list[Control] = []
        self.popen: list[subprocess.Popen[bytes]] = []
        self.results: list[Path] = []
        self.streams: list[Path] = []
        for k in range(procs):
            ctl_path = os.path.join(self.tmp.name, f"ctl{k}")
            result = Path(self.tmp.name, f"result{k}.json")
            self.controls.append(Control(ctl_path, create=True))
            self.results.append(result)
            cmd = [
                sys.executable,
                str(BENCH_DIR / "workerproc.py"),
                system,
                dsn,
                str(concurrency),
                ctl_path,
                str(result),
                "--settings",
                json.dumps(dict(settings or {})),
            ]
            if record_starts:
                cmd.append("--record-starts")
            if stream_starts:
                stream = Path(self.tmp.name, f"starts{k}")
                stream.mkdir()
                self.streams.append(stream)
                cmd += ["--stream-starts", str(stream)]
            self.popen.append(subprocess.Popen(cmd))
        self.sampler = RssSampler([p.pid for p in self.popen])
        self.sampler.start()

    def handled(self) -> int:
        return int(sum(c.get(Control.HANDLED) for c in self.controls))

    def first_start(self) -> float | None:
        firsts = [
            c.get(Control.FIRST_START) for c in self.controls if c.get(Control.FIRST_START) > 0
        ]
        return min(firsts) if firsts else None

    def dead(self) -> list[int]:
        return [p.returncode for p in self.popen if p.poll() is not None]

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(c.get(Control.READY) for c in self.controls):
            if self.dead():
                raise RuntimeError(f"worker exited during start-up: {self.errors()}")
            if time.monotonic() > deadline:
                raise TimeoutError("workers not ready after 60 s")
            await asyncio.sleep(0.02)

    async def wait_handled(self, target: int, deadline: float) -> bool:
        """Until the handlers ran `target` times or the monotonic deadline passes.

        Re-executions count too, so the caller always checks the database afterwards.
        """
        while self.handled() < target:
            if self.dead():
                raise RuntimeError(f"worker exited early: {self.errors()}")
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self, timeout: float = 60.0) -> None:
        for c in self.controls:
            c.set(Control.STOP, 1.0)
        deadline = time.monotonic() + timeout
        # Polling a subprocess and the DB: there is no event to await.
        while any(p.poll() is None for p in self.popen) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for p in self.popen:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.sampler.halt()

    def errors(self) -> list[str]:
        out = []
        for path in self.results:
            if path.exists():
                err = json.loads(path.read_text()).get("error")
                if err:
                    out.append(err.strip().splitlines()[-1])
        return out

    def starts(self) -> dict[int, float]:
        merged: dict[int, float] = {}
        for path in self.results:
            if path.exists():
                for i, t in json.loads(path.read_text()).get("starts", []):
                    merged.setdefault(int(i), float(t))  # a re-run keeps the first start
        return merged

    def take_streamed_starts(self) -> list[tuple[int, float]]:
        """(job index, handler start) of the starts the workers streamed out since the
        last call; each file is deleted once read."""
        out: list[tuple[int, float]] = []
        for stream in self.streams:
            for path in sorted(stream.glob("*.txt")):
                for line in path.read_text().splitlines():
                    i, t = line.split()
                    out.append((int(i), float(t)))
                path.unlink()
        return out

    def peak_rss_mb(self) -> float:
        return max(self.sampler.peak.values(), default=0) / 2**20

    def close(self) -> None:
        for c in self.controls:
            c.close()
        self.tmp.cleanup()


# --------------------------------------------------------------------------- workloads


async def wait_for_done(
    adapter: Adapter, conn: psycopg.AsyncConnection, want: int, deadline: float
) -> None:
    """Poll until the database records `want` completions or the monotonic deadline passes.

    The caller verifies the count either way.
    """
    while await adapter.count_done(conn) < want and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)


async def drain(
    adapter: Adapter,
    dsn: str,
    *,
    total: int,
    target: int,
    procs: int,
    concurrency: int,
    preload: Callable[[], Awaitable[None]],
    timeout: float,
    settle: bool = False,
) -> dict[str, float]:
    """Preload, then time worker processes from the first claim to the last completion.

    `total` jobs are pending; the run stops once `target` handlers ran (== total for a
    full drain). Rate = completions in the DB / (last completion - first handler start).
    """
    await adapter.setup(dsn)
    await preload()
    await vacuum_analyze(dsn)
    if settle:  # a checkpoint now rather than in the middle of a long drain
        await checkpoint(dsn)
    async with db_conn(dsn) as conn:
        baseline = await adapter.count_done(conn)
        pending = await adapter.count_queued(conn)
    if pending != total:
        raise CaseFailed(f"preload left {pending}/{total} jobs pending")
    group = WorkerGroup(adapter.name, dsn, procs, concurrency)
    try:
        await group.wait_ready()
        # One deadline for the handlers and for the database to record them, so a
        # pathological case costs at most `timeout` and then shows as FAILED.
        deadline = time.monotonic() + timeout
        await group.wait_handled(target, deadline)
        async with db_conn(dsn) as conn:
            await wait_for_done(adapter, conn, baseline + target, deadline)
            observed_end = time.time()
        await group.stop()
        errors = group.errors()
        async with db_conn(dsn) as conn:
            done = await adapter.count_done(conn) - baseline
            left = await adapter.count_queued(conn)
            last = await adapter.last_done_epoch(conn)
        first = group.first_start()
    finally:
        await group.stop()
        group.close()
    if errors:
        raise RuntimeError(f"worker error: {errors[0]}")
    if done < target:
        raise CaseFailed(
            f"{done}/{target} completed in the database within the {timeout:.0f} s limit"
        )
    if done + left != total:
        raise CaseFailed(
            f"{done} completed + {left} pending != {total} jobs: jobs lost or duplicated"
        )
    if target == total and done != total:
        raise CaseFailed(f"{done} completions recorded for {total} jobs")
    assert first is not None
    end = last if last is not None else observed_end
    elapsed = end - first
    return {"jobs_per_s": done / elapsed, "seconds": elapsed, "peak_rss_mb": group.peak_rss_mb()}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# --------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class Report:
    """What a workload's own markdown section may read: the whole run."""

    results: Results
    systems: list[str]
    sizes: Sizes
    machine: dict[str, Any]
    server: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Workload:
    """One entry of run.py's registry; a module adds its own tuple of these.

    `run` returns floats for the tables, plus a list of dicts under "cells" when the
    workload has a table of its own (`section` renders it from the Report).
    """

    key: str
    title: str
    metric: str  # the metric shown in the table
    unit: str
    higher_is_better: bool
    run: Callable[[Adapter, str, Sizes], Awaitable[dict[str, Any]]]
    scale_only: bool = False  # needs adapter.supports_scale
    sq_only: bool = False  # simplequeue's own features: the peers have no equivalent
    #: Why a system is not run (printed in the report as SKIPPED with the reason), or None.
    skip: Callable[[str, Sizes], str | None] | None = None
    section: Callable[[Report], list[str]] | None = None


def drain_timeout(n: int) -> float:
    """Generous for a healthy queue (700+ jobs/s at 50k), bounded for the 15-min budget."""
    return 45 + n / 2000


# --------------------------------------------------------------------------- machine


SERVER_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "shared_buffers",
    "effective_cache_size",
    "work_mem",
    "maintenance_work_mem",
    "max_wal_size",
    "checkpoint_timeout",
    "max_connections",
    "autovacuum",
)
"""What the JSON records of the server, read with SHOW (never assumed)."""


async def server_settings(admin_dsn: str, names: Sequence[str] = SERVER_SETTINGS) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        settings = {}
        for name in names:
            cur = await conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
            row = await cur.fetchone()
            settings[name] = str(row[0]) if row else ""
        return settings


def installed_versions(*dists: str) -> dict[str, str]:
    """The installed version of each distribution there is (a missing one is left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in dists:
        with contextlib.suppress(PackageNotFoundError):
            found[dist] = version(dist)
    return found


def machine_info() -> dict[str, Any]:
    """The hardware the figures were taken on, read from the machine."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model or platform.processor() or platform.machine(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
