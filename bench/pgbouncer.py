"""Pickup latency through PgBouncer in transaction pooling, both ways a worker learns of
new jobs there: its LISTEN on a direct connection (`--listen-dsn`), or, without one, the
fallback poll at the default `empty_poll_sleep` (the listener stands down behind a pooler).

For each way: Debian's `pgbouncer` in front of a fresh database (pool_mode = transaction,
default_pool_size = 3), one idle `simplequeue worker` process whose pool goes through it,
N jobs committed through it one at a time `gap` seconds apart by a producer whose pool
goes through it too. Pickup is commit-return -> handler start (the handler returns its
start time as the job's result; same clock, same machine), after 10 unmeasured warm-up
jobs and 2 s of idleness. Every job must complete exactly once.

    python bench/pgbouncer.py [--dsn ADMIN_URL] [--jobs 200] [--gap 0.05]

`bench/run.py` runs it as the `pgbouncer` workload (simplequeue only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import simplequeue as sq

__all__ = ["Pickup", "pgbouncer_case", "pickup_through_pgbouncer"]

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DSN = os.environ.get("BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
QUEUE = "pickup"
WARMUP = 10
POOL_SIZE = 3


class Pickup(sq.Handler):
    """Returns when it started: the job's result carries it back to the bench."""

    QUEUE = QUEUE

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
        return {"started": time.time()}


def _binary() -> str:
    found = shutil.which("pgbouncer")
    for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if found is None and os.access(path, os.X_OK):
            found = path
    if found is None:
        raise RuntimeError("no pgbouncer binary: apt-get install pgbouncer")
    return found


@contextlib.contextmanager
def pgbouncer(dsn: str) -> Iterator[str]:
    """A PgBouncer in transaction pooling in front of `dsn`'s server; yields `dsn`
    through it. It refuses to run as root: then it runs as nobody (as the socket
    directory's owner for a server on a unix socket)."""
    params = conninfo_to_dict(dsn)
    host, user = str(params.get("host") or "127.0.0.1"), str(params.get("user") or "postgres")
    run_as: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
        run_as = ["-u", owner]
    with (
        tempfile.TemporaryDirectory(prefix="sqbench-pgbouncer-") as tmp,
        tempfile.TemporaryFile("w+b") as log,
    ):
        users, config = Path(tmp, "users.txt"), Path(tmp, "pgbouncer.ini")
        users.write_text(f'"{user}" "{params.get("password") or ""}"\n')
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config.write_text(
            f"[databases]\n* = host={host} port={params.get('port') or 5432}\n[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\npool_mode = transaction\n"
            f"default_pool_size = {POOL_SIZE}\nmax_client_conn = 500\n"
            "log_connections = 0\nlog_disconnections = 0\n"
        )
        proc = subprocess.Popen([_binary(), *run_as, str(config)], stdout=log, stderr=log)
        bounced = make_conninfo(dsn, host="127.0.0.1", port=port)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    psycopg.connect(bounced, connect_timeout=2).close()
                    break
                except psycopg.OperationalError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"pgbouncer did not start: {log.read()!r}") from None
                    time.sleep(0.05)
            try:
                yield bounced
            except Exception as exc:  # what PgBouncer saw says why, often (server full?)
                log.seek(0)
                tail = log.read().decode(errors="replace").splitlines()[-5:]
                raise RuntimeError(f"{exc!r}; pgbouncer's log ends: {tail}") from exc
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def worker(bounced: str, listen_dsn: str | None, log: IO[str]) -> Iterator[subprocess.Popen[str]]:
    """`simplequeue worker pgbouncer:Pickup` through PgBouncer, c=10, logging to `log`."""
    listen = ["--listen-dsn", listen_dsn] if listen_dsn else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "simplequeue", "worker", "pgbouncer:Pickup", "--dsn", bounced,
         "--no-migrate", "--global-permits", "10", "--queue-permits", "10", *listen],
        cwd=BENCH_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def _workers(direct: str) -> int:
    async with await psycopg.AsyncConnection.connect(direct, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM simplequeue.workers")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def _completed(queue: sq.SimpleQueue, ids: list[uuid.UUID], deadline: float) -> list[Any]:
    """Each job once completed, at its first attempt; their results."""
    results: list[Any] = []
    for job_id in ids:
        while True:
            job = await queue.get_job(job_id)
            if job is not None and job.status == sq.JobStatus.COMPLETED:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} not completed in time: {job and job.status}")
            await asyncio.sleep(0.05)
        if job.attempt != 1:
            raise RuntimeError(f"job {job_id} ran {job.attempt} times")
        results.append(job.result)
    return results


async def _one_way(direct: str, bounced: str, listen: bool, n: int, gap: float) -> list[float]:
    """Pickup in ms of n jobs, sorted, by a fresh worker."""
    with (
        tempfile.TemporaryFile("w+") as log,
        worker(bounced, direct if listen else None, log) as proc,
    ):
        deadline = time.monotonic() + 30
        while await _workers(direct) < 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"worker did not start: {log.read()}")
            await asyncio.sleep(0.05)
        async with sq.SimpleQueue.from_url(bounced) as producer:
            return await _measure(producer, n, gap)


async def _measure(producer: sq.SimpleQueue, n: int, gap: float) -> list[float]:
    warm = [await producer.insert_job(sq.Job(QUEUE, {"i": -1})) for _ in range(WARMUP)]
    await _completed(producer, [i for i in warm if i], time.monotonic() + 30)
    await asyncio.sleep(2.0)  # idle: the worker sleeps on its poll (or its LISTEN)
    committed: list[float] = []
    ids: list[uuid.UUID] = []
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i * gap - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        job_id = await producer.insert_job(sq.Job(QUEUE, {"i": i}))
        committed.append(time.time())
        assert job_id is not None
        ids.append(job_id)
    results = await _completed(producer, ids, time.monotonic() + 60)
    return sorted((r["started"] - c) * 1000 for r, c in zip(results, committed, strict=True))


def _percentile(values: list[float], q: float) -> float:
    return values[max(1, math.ceil(q / 100 * len(values))) - 1]


async def pickup_through_pgbouncer(dsn: str, n: int = 200, gap: float = 0.05) -> dict[str, float]:
    """Pickup p50/p99/max (ms) through PgBouncer of an idle worker woken by its LISTEN on a
    direct connection (`listen_*`), and of one left to its fallback poll (`poll_*`), on
    the database `dsn` (migrated here)."""
    await sq.setup(dsn)
    metrics: dict[str, float] = {"jobs": n}
    with pgbouncer(dsn) as bounced:
        for way, listen in (("listen", True), ("poll", False)):
            ms = await _one_way(dsn, bounced, listen, n, gap)
            metrics |= {
                f"{way}_p50_ms": _percentile(ms, 50),
                f"{way}_p99_ms": _percentile(ms, 99),
                f"{way}_max_ms": ms[-1],
            }
    return metrics


async def pgbouncer_case(adapter: Any, dsn: str, sizes: Any) -> dict[str, float]:
    """bench/run.py's `pgbouncer` workload: a fifth of the latency workload's jobs (it
    runs twice, and the poll costs half a second a job at most), 50 ms apart."""
    return await pickup_through_pgbouncer(dsn, max(sizes.latency // 5, 20), 0.05)


@contextlib.asynccontextmanager
async def _fresh_db(admin_dsn: str) -> AsyncIterator[str]:
    name = f"sqbench_pgbouncer_{os.getpid()}"
    ident = sql.Identifier(name)
    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


async def _main(args: argparse.Namespace) -> int:
    async with _fresh_db(args.dsn) as dsn:
        metrics = await pickup_through_pgbouncer(dsn, args.jobs, args.gap)
    print(f"pickup through PgBouncer (transaction pooling), {args.jobs} jobs {args.gap}s apart:")
    print("| way | p50 ms | p99 ms | max ms |\n|---|---|---|---|")
    for way, label in (("listen", "LISTEN on listen_dsn"), ("poll", "fallback poll (1 s)")):
        p50, p99, most = (metrics[f"{way}_{m}_ms"] for m in ("p50", "p99", "max"))
        print(f"| {label} | {p50:.1f} | {p99:.1f} | {most:.1f} |")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="admin DSN: a database is made")
    parser.add_argument("--jobs", type=int, default=200, help="jobs measured each way")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between commits")
    sys.exit(asyncio.run(_main(parser.parse_args())))
