"""Churn: does the storage stay flat under a long steady load?

A queue that runs for weeks must not bloat: the live table turns over every row it holds
many times a minute, and the archive takes every completed job and lets it go after
`archive_retention`. This runs that for an hour and watches the tables.

On a private PostgreSQL with the production defaults (autovacuum on: `initdb` and
`pg_ctl` from the server's own binaries, a unix socket in a temporary directory, all of
it removed at the end; as root they run as the `postgres` OS user, since PostgreSQL
refuses root), or on `--dsn`'s server: a fresh database, one simplequeue worker process at
c=100 with its janitor sweeping every `--janitor-interval` seconds and an archive
retention of `--retention` seconds, so the archive reaches its steady state within the
run. A short flat-out phase measures the capacity of this worker and these producers
(bench/steady.py's), then the producers send `--load`% of it for `--minutes`, paced
open-loop on one absolute schedule (steady's), one no-op job per transaction.

Every `--sample-seconds`: size (heap, TOAST, table, indexes) of the jobs table, the
archive and the DLQ, summed over the leaves of `pg_partition_tree` (the archive may be
partitioned; a plain table is measured alone), the number of leaves, live and dead
tuples and the autovacuum counts from pg_stat_user_tables, and the pickup latency
(producer commit-return -> handler start) p50/p95/p99 of the jobs whose handler started
in that window, with the rate achieved against the one offered.

    .venv-bench/bin/python bench/churn.py [--minutes 60] [--load 80] [--retention 600]
    .venv-bench/bin/python bench/churn.py --minutes 2 --retention 30      # smoke, ~3 min

Writes bench/results/churn-<date>.json (a run shorter than the default hour:
churn-<date>-quick.json, git-ignored) and prints a markdown table, then a verdict: the
first window that starts after one retention period against the last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from adapters import make_adapter
from adapters.base import Adapter, Producer, scalar
from adapters.simplequeue_adapter import SCHEMA
from harness import (
    BENCH_DIR,
    DB_PREFIX,
    SERVER_SETTINGS,
    CaseFailed,
    WorkerGroup,
    checkpoint,
    db_conn,
    fresh_db,
    installed_versions,
    machine_info,
    percentile,
    server_settings,
)
from steady import (
    BACKLOG_TIMEOUT,
    SATURATED,
    STEADY_CONCURRENCY,
    Ids,
    measure_capacity,
    send_paced,
    warm_up,
)

DEFAULT_MINUTES = 60.0
PG_OS_USER = "postgres"
"""Who runs initdb and the server when this runs as root."""
TABLES = ("jobs", "archive", "dlq")
FLUSH_LAG = 0.6
"""Seconds a window's end waits for the starts just before it (the worker streams its
starts every workerproc.STREAM_INTERVAL)."""
POLL = 1.0
"""Seconds between two reads of the streamed starts."""
UNSENT_NOTED = 0.01
"""Share of the jobs due that, left unsent at the end, is worth a line after the table
(a few always are: each producer's last turn of the schedule)."""
CHURN_SETTINGS = (
    *SERVER_SETTINGS,
    "autovacuum_naptime",
    "autovacuum_vacuum_threshold",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_insert_scale_factor",
    "autovacuum_vacuum_cost_delay",
    "autovacuum_vacuum_cost_limit",
    "autovacuum_max_workers",
)
"""The server settings the JSON records: the bench's, and the autovacuum's own."""


# --------------------------------------------------------------------------- the server


def default_pg_bin() -> str:
    """The newest server binaries Debian's postgresql packages installed (PG_BIN overrides)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return os.environ.get("PG_BIN") or (str(found[-1].parent) if found else "")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg(as_owner: list[str], *cmd: str | Path) -> None:
    """Run one of the server's programs, in a session of its own: a Ctrl-C at the
    terminal stops this script, which then stops the server, rather than the server
    going down under the run's cleanup."""
    done = subprocess.run(
        [*as_owner, *map(str, cmd)], capture_output=True, text=True, start_new_session=True
    )
    if done.returncode:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({done.returncode}): {done.stderr.strip()}")


@contextlib.contextmanager
def private_server(bin_dir: Path) -> Iterator[str]:
    """A PostgreSQL server of this run's own, with initdb's defaults (autovacuum on,
    fsync on: what users run); yields its admin DSN, and stops and removes it after."""
    if not (bin_dir / "initdb").exists():
        raise RuntimeError(f"no initdb in {bin_dir}: apt-get install postgresql, or --pg-bin")
    root = Path(tempfile.mkdtemp(prefix="sqchurn-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam(PG_OS_USER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", PG_OS_USER, "--"]
    data, log, port = root / "data", root / "server.log", _free_port()
    pg_ctl = bin_dir / "pg_ctl"
    try:
        _pg(as_owner, bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust")
        options = f"-c port={port} -c unix_socket_directories='{root}' -c listen_addresses=''"
        try:
            _pg(as_owner, pg_ctl, "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start")
        except RuntimeError as exc:
            tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            raise RuntimeError(f"{exc}; the server's log ends: {tail}") from None
        yield f"postgresql://postgres@/postgres?host={urllib.parse.quote(str(root))}&port={port}"
    finally:
        if (data / "postmaster.pid").exists():
            try:
                _pg(as_owner, pg_ctl, "-D", data, "-m", "fast", "-w", "-t", "60", "stop")
            except RuntimeError:  # gone wrong: the postmaster's PID is the file's first line
                with contextlib.suppress(OSError, ValueError):
                    pid = int((data / "postmaster.pid").read_text().split()[0])
                    os.kill(pid, signal.SIGQUIT)
                    time.sleep(2)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- measures


_STORAGE = """
WITH root AS (
    SELECT c.oid, c.relkind = 'p' AS partitioned
    FROM pg_class AS c WHERE c.oid = to_regclass(%(table)s)
), leaves AS (
    SELECT t.relid FROM root, pg_partition_tree(root.oid) AS t
    WHERE root.partitioned AND t.isleaf
    UNION ALL
    SELECT root.oid FROM root WHERE NOT root.partitioned
)
SELECT count(*)::int,
       coalesce((SELECT partitioned FROM root), false),
       coalesce(sum(pg_relation_size(c.oid)), 0)::bigint,
       coalesce(sum(pg_total_relation_size(nullif(c.reltoastrelid, 0))), 0)::bigint,
       coalesce(sum(pg_table_size(c.oid)), 0)::bigint,
       coalesce(sum(pg_indexes_size(c.oid)), 0)::bigint,
       coalesce(sum(s.n_live_tup), 0)::bigint,
       coalesce(sum(s.n_dead_tup), 0)::bigint,
       coalesce(sum(s.n_tup_ins), 0)::bigint,
       coalesce(sum(s.n_tup_upd), 0)::bigint,
       coalesce(sum(s.n_tup_hot_upd), 0)::bigint,
       coalesce(sum(s.n_tup_del), 0)::bigint,
       coalesce(sum(s.autovacuum_count), 0)::bigint,
       coalesce(sum(s.autoanalyze_count), 0)::bigint,
       max(s.last_autovacuum)
FROM leaves AS l
JOIN pg_class AS c ON c.oid = l.relid
LEFT JOIN pg_stat_user_tables AS s ON s.relid = l.relid
"""
"""One table's storage and activity, summed over its leaves: the partitions of a
partitioned table (the leaves of `pg_partition_tree`; the root has no storage), or the
plain table alone (for which PostgreSQL 15's `pg_partition_tree` returns no row)."""
_STORAGE_COLUMNS = (
    "partitions",
    "partitioned",
    "heap_bytes",
    "toast_bytes",
    "table_bytes",
    "index_bytes",
    "n_live_tup",
    "n_dead_tup",
    "n_tup_ins",
    "n_tup_upd",
    "n_tup_hot_upd",
    "n_tup_del",
    "autovacuum_count",
    "autoanalyze_count",
    "last_autovacuum",
)


async def table_storage(conn: psycopg.AsyncConnection, table: str) -> dict[str, Any]:
    """Sizes, tuples and autovacuum counts of `table` (summed over its partitions)."""
    cur = await conn.execute(_STORAGE, {"table": table})
    row = await cur.fetchone()
    assert row is not None
    out = dict(zip(_STORAGE_COLUMNS, row, strict=True))
    out["total_bytes"] = out["table_bytes"] + out["index_bytes"]
    if out["last_autovacuum"] is not None:
        out["last_autovacuum"] = out["last_autovacuum"].isoformat()
    return out


async def storage(conn: psycopg.AsyncConnection) -> dict[str, dict[str, Any]]:
    return {name: await table_storage(conn, f"{SCHEMA}.{name}") for name in TABLES}


class Pickups:
    """Matches the producers' commit-return times with the handlers' starts, and hands
    out the latencies window by window (by handler start).

    Both sides are let go of as they match, so an hour of jobs never sits in memory. A
    handler can start before its producer's commit returns: such a start waits for it.
    """

    def __init__(self, committed: dict[int, float], first: int) -> None:
        self.committed = committed  # index -> commit-return, filled by the producers
        self.first = first  # jobs before it (warm-up, capacity) have no commit time
        self.early: dict[int, float] = {}
        self.unclaimed: list[tuple[float, float]] = []  # (start, latency ms) not yet windowed
        self.matched = 0

    def absorb(self, starts: list[tuple[int, float]]) -> None:
        for i, t in starts:
            if i >= self.first:
                self.early[i] = t
        for i in [i for i in self.early if i in self.committed]:
            start = self.early.pop(i)
            self.unclaimed.append((start, (start - self.committed.pop(i)) * 1000))
            self.matched += 1

    def sent(self) -> int:
        """Jobs whose commit returned so far."""
        return self.matched + len(self.committed)

    def started(self) -> int:
        return self.matched + len(self.early)

    def window(self, end: float) -> list[float]:
        """Sorted latencies (ms) of the jobs that started before `end` (epoch s)."""
        taken = sorted(lat for start, lat in self.unclaimed if start < end)
        self.unclaimed = [(start, lat) for start, lat in self.unclaimed if start >= end]
        return taken


# --------------------------------------------------------------------------- the run


class Run:
    """What a run has gathered so far: written out even when it is interrupted."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.server: dict[str, str] = {}
        self.capacity: dict[str, float] = {}
        self.samples: list[dict[str, Any]] = []
        self.verified: dict[str, Any] = {}
        self.started = time.time()


async def churn(admin_dsn: str, args: argparse.Namespace, run: Run) -> None:
    """Migrate a fresh database, measure the capacity, then the paced churn, sampled."""
    # SIGTERM cancels the run as Ctrl-C does (asyncio.run's own handling): every cleanup
    # below runs in order. A KeyboardInterrupt raised into the loop would instead cancel
    # every task at once, the pools' own among them, and cut the cleanup short.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    async with fresh_db(admin_dsn, f"{DB_PREFIX}churn") as dsn:
        adapter = make_adapter("sq")
        await adapter.setup(dsn)
        run.server = await server_settings(dsn, CHURN_SETTINGS)
        async with db_conn(dsn) as conn:
            run.settings["schema_version"] = await scalar(
                conn, f"SELECT max(version) FROM {SCHEMA}.schema_migrations"
            )
        if run.server["autovacuum"] != "on":
            print("churn: autovacuum is off on this server: not what users run", flush=True)
        await checkpoint(dsn)
        group = WorkerGroup(
            adapter.name,
            dsn,
            1,
            STEADY_CONCURRENCY,
            stream_starts=True,
            settings=run.settings["worker"],
        )
        try:
            producer = await adapter.open_producer(dsn, args.producers)
            try:
                await group.wait_ready()
                await _churn(adapter, dsn, group, producer, args, run)
            finally:
                await producer.aclose()
        finally:
            await group.stop()
            group.close()


async def _churn(
    adapter: Adapter,
    dsn: str,
    group: WorkerGroup,
    producer: Producer,
    args: argparse.Namespace,
    run: Run,
) -> None:
    indices = Ids()
    await warm_up(group, producer, indices)
    run.capacity = await measure_capacity(
        group, producer, args.producers, indices, args.capacity_seconds
    )
    rate = run.capacity["capacity"] * args.load / 100
    seconds = args.minutes * 60
    count = max(args.producers, round(rate * seconds))
    run.settings.update(offered_per_s=rate, jobs=count)
    bound = "worker" if run.capacity["bound_by_worker"] else "producers"
    print(
        f"churn: capacity {run.capacity['capacity']:,.0f} jobs/s (bound by the {bound});"
        f" offering {args.load:g}% = {rate:,.0f} jobs/s for {args.minutes:g} min"
        f" ({count:,} jobs), janitor every {args.janitor_interval:g} s,"
        f" retention {args.retention:g} s\n",
        flush=True,
    )
    for line in table_head():
        print(line, flush=True)
    committed: dict[int, float] = {}
    first = indices.take(count)
    pickups = Pickups(committed, first)
    async with db_conn(dsn) as conn:
        t0 = time.time()
        clock0 = time.perf_counter()
        sender = asyncio.create_task(
            send_paced(producer, args.producers, rate, first, count, committed, clock0 + seconds)
        )
        try:
            run.samples.append({"t_s": 0.0, "window_s": 0.0, "tables": await storage(conn)})
            print(table_row(run.samples[-1]), flush=True)
            windows = math.ceil(seconds / args.sample_seconds - 1e-9)
            sent_before = 0
            for k in range(1, windows + 1):
                end = min(k * args.sample_seconds, seconds)
                await _collect(group, pickups, sender, clock0 + end + FLUSH_LAG)
                lat = pickups.window(t0 + end)
                span = end - run.samples[-1]["t_s"]
                sent, started = pickups.sent(), pickups.started()
                sample: dict[str, Any] = {
                    "t_s": end,
                    "window_s": span,
                    "offered_per_s": rate,
                    "inserted_per_s": (sent - sent_before) / span,
                    "achieved_per_s": len(lat) / span,
                    "waiting": sent - started,
                    "jobs": len(lat),
                    **latency_summary(lat),
                    "tables": await storage(conn),
                }
                sent_before = sent
                run.samples.append(sample)
                print(table_row(sample), flush=True)
            await sender
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    # The backlog: every job sent must start, and the database must hold none waiting.
    sent = pickups.sent()
    await group.wait_handled(first + sent, time.monotonic() + BACKLOG_TIMEOUT)
    await _collect(group, pickups, sender, time.perf_counter() + FLUSH_LAG)
    await group.stop()
    pickups.absorb(group.take_streamed_starts())
    errors = group.errors()
    async with db_conn(dsn) as conn:
        queued = await adapter.count_queued(conn)
    run.verified = {
        "due": count,
        "sent": sent,
        "started": pickups.started(),
        "still_queued": queued,
        "worker_errors": errors,
        "peak_rss_mb": group.peak_rss_mb(),
    }
    if count - sent > UNSENT_NOTED * count:
        print(
            f"\nchurn: the producers fell behind the schedule: {count - sent:,} of the"
            f" {count:,} jobs due ({(count - sent) / count:.1%}) were not sent by the end",
            flush=True,
        )
    if errors:
        raise RuntimeError(f"worker error: {errors[0]}")
    if pickups.matched != sent or pickups.started() != sent or queued:
        raise CaseFailed(
            f"{pickups.matched}/{sent} jobs sent started, {queued} still queued in the database"
        )


async def _collect(
    group: WorkerGroup, pickups: Pickups, sender: asyncio.Task[None], until: float
) -> None:
    """Absorb the streamed starts until the perf_counter time `until`; a worker or a
    producer that died ends the run."""
    while True:
        pickups.absorb(group.take_streamed_starts())
        if group.dead():
            raise RuntimeError(f"the worker exited: {group.errors()}")
        if sender.done() and not sender.cancelled() and sender.exception():
            raise RuntimeError("a producer failed") from sender.exception()
        left = until - time.perf_counter()
        if left <= 0:
            return
        await asyncio.sleep(min(POLL, left))


def latency_summary(lat: list[float]) -> dict[str, float | None]:
    if not lat:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1],
    }


# --------------------------------------------------------------------------- report


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}" if n < 10 * 2**20 else f"{n / 2**20:.1f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.2f}".rstrip("0").rstrip(".")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table_head() -> list[str]:
    return [
        "| min | offered/s | inserted/s | jobs/s | waiting | p50 ms | p95 ms | p99 ms | jobs MiB"
        " | jobs dead | archive MiB | archive parts | archive rows | archive dead"
        " | autovacuums jobs/archive |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]


def table_row(sample: dict[str, Any]) -> str:
    jobs, archive = sample["tables"]["jobs"], sample["tables"]["archive"]
    offered = sample.get("offered_per_s")

    def rate(key: str) -> str:
        """A rate below SATURATED of the offered one in bold: that side fell behind."""
        value = sample.get(key)
        if value is None or offered is None:
            return "-"
        return f"**{value:,.0f}**" if value < SATURATED * offered else f"{value:,.0f}"

    return (
        f"| {_minutes(sample['t_s'])} | {'-' if offered is None else f'{offered:,.0f}'}"
        f" | {rate('inserted_per_s')} | {rate('achieved_per_s')} | {sample.get('waiting', '-')}"
        f" | {_ms(sample.get('p50_ms'))}"
        f" | {_ms(sample.get('p95_ms'))} | {_ms(sample.get('p99_ms'))}"
        f" | {_mib(jobs['total_bytes'])} | {jobs['n_dead_tup']:,}"
        f" | {_mib(archive['total_bytes'])}"
        f" | {archive['partitions'] if archive['partitioned'] else 'plain'}"
        f" | {archive['n_live_tup']:,} | {archive['n_dead_tup']:,}"
        f" | {jobs['autovacuum_count']}/{archive['autovacuum_count']} |"
    )


def _live_size(sample: dict[str, Any]) -> int:
    return int(sum(sample["tables"][t]["total_bytes"] for t in ("jobs", "archive")))


def verdict(samples: list[dict[str, Any]], warm_up: float, flat_within: float) -> dict[str, Any]:
    """The first full window after the warm-up (by default one retention period: the
    archive has begun to let rows go) against the last: growth of jobs + archive in
    size, and of the p99."""
    settled = [s for s in samples if s["window_s"] and s["t_s"] - s["window_s"] >= warm_up]
    if len(settled) < 2:
        return {
            "text": f"verdict: n/a, {len(settled)} window(s) after the {warm_up:g} s warm-up:"
            " a run needs two to compare",
            "windows": len(settled),
        }
    first, last = settled[0], settled[-1]
    size0, size1 = _live_size(first), _live_size(last)
    if not size0:
        return {"text": "verdict: n/a, the tables were empty", "windows": len(settled)}
    growth = (size1 / size0 - 1) * 100
    peak = (max(_live_size(s) for s in settled) / size0 - 1) * 100
    p99_0, p99_1 = first["p99_ms"], last["p99_ms"]
    p99_growth = (p99_1 / p99_0 - 1) * 100 if p99_0 and p99_1 is not None else None
    flat = growth <= flat_within
    p99_text = f"p99 {_ms(p99_0)} -> {_ms(p99_1)} ms" + (
        f" ({p99_growth:+.0f}%)" if p99_growth is not None else ""
    )
    text = (
        f"verdict: {'flat' if flat else 'GROWING'} (within {flat_within:g}%: minute"
        f" {_minutes(first['t_s'])} against {_minutes(last['t_s'])}): jobs+archive"
        f" {_mib(size0)} -> {_mib(size1)} MiB ({growth:+.1f}%, peak {peak:+.1f}%), {p99_text}"
    )
    return {
        "text": text,
        "flat": flat,
        "from_minute": first["t_s"] / 60,
        "to_minute": last["t_s"] / 60,
        "size_bytes": [size0, size1],
        "size_growth_pct": growth,
        "size_peak_growth_pct": peak,
        "p99_ms": [p99_0, p99_1],
        "p99_growth_pct": p99_growth,
        "windows": len(settled),
    }


def write_results(run: Run, args: argparse.Namespace, outcome: str) -> tuple[Path, dict[str, Any]]:
    date = dt.date.today().isoformat()
    quick = "-quick" if args.minutes < DEFAULT_MINUTES else ""
    path = BENCH_DIR / "results" / f"churn-{date}{quick}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    judged = verdict(run.samples, args.warm_up, args.flat_within)
    payload = {
        "date": date,
        "outcome": outcome,
        "wall_seconds": time.time() - run.started,
        "settings": run.settings,
        "capacity": run.capacity,
        "server": run.server,
        "machine": machine_info(),
        "versions": installed_versions("simplequeue", "psycopg", "psycopg-pool"),
        "verified": run.verified,
        "verdict": judged,
        "samples": run.samples,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path, judged


# --------------------------------------------------------------------------- command line


def _setting(text: str) -> tuple[str, Any]:
    """KEY=VALUE, the value read as JSON when it is JSON (numbers, true), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[a-z_]+", key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM outside the event loop (the server's start and stop) as Ctrl-C: the
    server is stopped and removed all the same."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES)
    parser.add_argument("--load", type=float, default=80, help="%% of the measured capacity")
    parser.add_argument(
        "--retention", type=float, default=600, help="archive_retention, seconds (short)"
    )
    parser.add_argument("--janitor-interval", type=float, default=5, help="seconds")
    parser.add_argument("--sample-seconds", type=float, default=60)
    parser.add_argument("--producers", type=int, default=4, help="connections, paced together")
    parser.add_argument("--capacity-seconds", type=float, default=5, help="the flat-out phase")
    parser.add_argument(
        "--setting",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another QueueConfig setting for the worker (repeatable)",
    )
    parser.add_argument(
        "--warm-up",
        type=float,
        help="seconds before the verdict's first window may start (default: --retention)",
    )
    parser.add_argument(
        "--flat-within", type=float, default=20, help="%% growth the verdict calls flat"
    )
    parser.add_argument("--dsn", help="an admin URL: run on that server instead of a private one")
    parser.add_argument("--pg-bin", default=default_pg_bin(), help="initdb and pg_ctl's folder")
    args = parser.parse_args()
    if args.minutes <= 0 or args.sample_seconds <= 0 or not 0 < args.load <= 100:
        parser.error("--minutes and --sample-seconds must be positive, --load 0 to 100")
    if args.warm_up is None:
        args.warm_up = args.retention

    from simplequeue.maintenance import janitor_enabled

    if not janitor_enabled():  # the worker runs this interpreter: it would run no janitor
        print('churn: no janitor in this environment: pip install "simplequeue[janitor]"')
        return 2
    worker = {"janitor_interval": args.janitor_interval, "archive_retention": args.retention}
    worker.update(dict(args.setting))
    run = Run(
        {
            "minutes": args.minutes,
            "load_pct": args.load,
            "retention_s": args.retention,
            "janitor_interval_s": args.janitor_interval,
            "sample_seconds": args.sample_seconds,
            "warm_up_s": args.warm_up,
            "producers": args.producers,
            "concurrency": STEADY_CONCURRENCY,
            "capacity_seconds": args.capacity_seconds,
            "worker": worker,
            "server_source": "dsn" if args.dsn else "private",
        }
    )
    signal.signal(signal.SIGTERM, _interrupt)
    outcome, code = "ok", 0
    try:
        with contextlib.ExitStack() as stack:
            admin = args.dsn or stack.enter_context(private_server(Path(args.pg_bin)))
            try:
                asyncio.run(churn(admin, args, run))
            finally:  # the loop's SIGTERM handler went with it: the server's stop is next
                signal.signal(signal.SIGTERM, _interrupt)
    except (KeyboardInterrupt, asyncio.CancelledError):
        outcome, code = "interrupted", 130
    except CaseFailed as exc:
        outcome, code = f"FAILED: {exc}", 1
    except Exception as exc:
        outcome, code = f"ERROR: {exc!r}", 1
    if outcome != "ok":
        print(f"\nchurn: {outcome}", flush=True)
    if not run.samples:
        return code
    path, judged = write_results(run, args, outcome)
    print(f"\n{judged['text']}\nresults: {path}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
