"""The chaos suite's machinery: its own PostgreSQL, worker processes, probes and checks."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg
from psycopg.conninfo import make_conninfo

import simplequeue as sq
from chaos import app
from simplequeue.embedded import EmbeddedPostgres, start_embedded

ROOT = Path(__file__).resolve().parent.parent

DDL = """
CREATE SCHEMA IF NOT EXISTS chaos;
CREATE TABLE chaos.expected (job_id uuid PRIMARY KEY, plan text NOT NULL);
CREATE TABLE chaos.executions (
    id bigserial PRIMARY KEY, job_id uuid NOT NULL, lease int NOT NULL, attempt int NOT NULL,
    reprocess int NOT NULL, pid int NOT NULL, queue text NOT NULL, plan text NOT NULL,
    started timestamptz NOT NULL DEFAULT clock_timestamp(), ended timestamptz);
CREATE INDEX ON chaos.executions (job_id);
CREATE TABLE chaos.events (
    kind text NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
"""

# Every change of a job's status or lease, with the statement that made it: a claim, a
# fenced result write, the reaper, the exhausted-attempts sweep, a cancel. Written in the
# same transaction as the change, so the log is exact even across SIGKILLs and restarts.
TRANSITIONS_DDL = """
CREATE TABLE chaos.transitions (
    id bigserial PRIMARY KEY, job_id uuid NOT NULL, old_status text, new_status text,
    old_lease int, new_lease int, old_attempt int, new_attempt int,
    old_reprocess int, new_reprocess int, source text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX ON chaos.transitions (job_id);
CREATE FUNCTION chaos.log_transition() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE q text := current_query();
BEGIN
    INSERT INTO chaos.transitions (job_id, old_status, new_status, old_lease, new_lease,
        old_attempt, new_attempt, old_reprocess, new_reprocess, source)
    VALUES (NEW.id, OLD.status, NEW.status, OLD.lease, NEW.lease, OLD.attempt, NEW.attempt,
        OLD.reprocess_count, NEW.reprocess_count,
        CASE WHEN q LIKE '%WITH candidates AS%' THEN 'claim'
             WHEN q LIKE '%AS r(id, lease, status, refund%' THEN 'write'
             WHEN q LIKE '%AS r(id, lease)%' THEN 'write'
             WHEN q LIKE '%AS r(id, lease, result)%' THEN 'write'
             WHEN q LIKE '%stalled: no heartbeat%' THEN 'reap'
             WHEN q LIKE '%no attempts left%' THEN 'exhausted'
             WHEN q LIKE '%SET status = ''cancelled''%' THEN 'cancel'
             ELSE 'other: ' || left(q, 80) END);
    RETURN NULL;
END $$;
CREATE TRIGGER chaos_transitions AFTER UPDATE ON simplequeue.jobs FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.lease IS DISTINCT FROM NEW.lease)
    EXECUTE FUNCTION chaos.log_transition();
"""

TERMINAL = ("completed", "failed", "cancelled", "unprocessable", "critical_failure", "bad_job")


# -- the server ------------------------------------------------------------------------


class Server:
    """The suite's own embedded PostgreSQL on a fixed data dir, so it can be restarted."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._pg: EmbeddedPostgres | None = None
        self.dsn = ""
        self.restarts = 0

    def start(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._pg = start_embedded(self.data_dir)
        if self.dsn and self._pg.dsn != self.dsn:
            raise RuntimeError(f"the server came back on another address: {self._pg.dsn}")
        self.dsn = self._pg.dsn

    def stop(self) -> None:
        if self._pg is not None:
            self._pg.stop()
            self._pg = None

    def dsn_for(self, dbname: str, **params: Any) -> str:
        return make_conninfo(self.dsn, dbname=dbname, **params)

    def log_path(self) -> Path:
        return self.data_dir / "log"


async def sql(
    dsn: str, statement: str, params: Any = None, *, retry_for: float = 60.0
) -> list[tuple[Any, ...]]:
    """One statement on a fresh autocommit connection; waits out a restarting server."""
    deadline = time.monotonic() + retry_for
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=5
            ) as conn:
                cur = await conn.execute(statement, params)
                return await cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def create_database(server: Server, name: str, *, transitions: bool) -> str:
    """A fresh database with the simplequeue schema and the chaos tables; returns its DSN."""
    await sql(server.dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await sql(server.dsn, f"CREATE DATABASE {name}")
    dsn = server.dsn_for(name, application_name="chaos-runner")
    await sq.setup(dsn)
    await sql(dsn, DDL)
    if transitions:
        await sql(dsn, TRANSITIONS_DDL)
    return dsn


# -- worker processes ------------------------------------------------------------------


@dataclass
class WorkerSettings:
    heartbeat_interval: float = 0.3
    empty_poll_sleep: float = 0.5
    global_permits: int = 50
    queue_permits: int = 50
    shutdown_timeout: float = 10.0
    overrides: dict[str, Any] = field(default_factory=dict)  # QueueConfig, via CHAOS_SETTINGS
    env: dict[str, str] = field(default_factory=dict)


class WorkerProc:
    def __init__(
        self, slot: int, generation: int, cmd: list[str], env: dict[str, str], log_path: Path
    ):
        self.slot = slot
        self.generation = generation
        self.log_path = log_path
        self._log = log_path.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.killed = False
        self.exit_seconds: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        """Its signal handlers are installed once it logs that it started."""
        return "worker started" in self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive() and not self.ready():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return self.alive()

    def signal(self, signum: int) -> None:
        if self.alive():
            self.proc.send_signal(signum)

    def kill(self) -> None:
        self.killed = True
        if self.alive():
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def rss(self) -> int | None:
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return None

    async def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:  # noqa: ASYNC110 (a process)
            await asyncio.sleep(0.05)
        code = self.proc.poll()
        if code is not None:
            self._log.close()
        return code


class Fleet:
    """N worker slots; a killed worker is restarted in its slot as a new generation."""

    def __init__(
        self, name: str, dsn: str, record_dsn: str, n: int, settings: WorkerSettings, log_dir: Path
    ) -> None:
        self.name = name
        self.dsn = dsn
        self.record_dsn = record_dsn
        self.n = n
        self.settings = settings
        self.log_dir = log_dir / name
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for old in self.log_dir.glob("*.log"):
            old.unlink()
        self.slots: list[WorkerProc | None] = [None] * n
        self.all: list[WorkerProc] = []
        self.kills = 0
        self.restarts = 0

    def _cmd(self) -> list[str]:
        s = self.settings
        return [
            sys.executable, "-m", "simplequeue", "--log-level", "info", "worker",
            "chaos.app:configure", "--dsn", self.dsn, "--no-migrate",
            "--heartbeat-interval", str(s.heartbeat_interval),
            "--empty-poll-sleep", str(s.empty_poll_sleep),
            "--global-permits", str(s.global_permits),
            "--queue-permits", str(s.queue_permits),
            "--shutdown-timeout", str(s.shutdown_timeout),
        ]  # fmt: skip

    def spawn(self, slot: int) -> WorkerProc:
        import json

        generation = sum(1 for w in self.all if w.slot == slot) + 1
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CHAOS_RECORD_DSN": self.record_dsn,
            "CHAOS_SETTINGS": json.dumps(self.settings.overrides),
            **self.settings.env,
        }
        worker = WorkerProc(
            slot, generation, self._cmd(), env, self.log_dir / f"w{slot}-{generation:03d}.log"
        )
        self.slots[slot] = worker
        self.all.append(worker)
        return worker

    def start(self) -> None:
        for slot in range(self.n):
            self.spawn(slot)

    def alive(self) -> list[WorkerProc]:
        return [w for w in self.slots if w is not None and w.alive()]

    def kill_and_restart(self, rng: random.Random) -> WorkerProc | None:
        candidates = self.alive()
        if not candidates:
            return None
        victim = rng.choice(candidates)
        victim.kill()
        self.kills += 1
        self.restarts += 1
        return self.spawn(victim.slot)

    async def signal_all(self, signum: int) -> None:
        for worker in self.alive():
            await worker.wait_ready()
            worker.signal(signum)

    async def stop(self, timeout: float = 60.0) -> dict[int, tuple[int | None, float]]:
        """SIGTERM every live worker; returns pid -> (exit code, seconds to exit)."""
        started = time.monotonic()
        workers = self.alive()
        for worker in workers:  # SIGTERM before the handlers are installed would just kill it
            await worker.wait_ready()
        for worker in workers:
            worker.signal(signal.SIGTERM)
        result: dict[int, tuple[int | None, float]] = {}
        for worker in workers:
            code = await worker.wait(max(timeout - (time.monotonic() - started), 0.1))
            result[worker.pid] = (code, time.monotonic() - started)
            if code is None:
                worker.kill()
        return result

    def kill_all(self) -> None:
        for worker in self.all:
            if worker.alive():
                worker.kill()

    def rss(self) -> dict[int, int]:
        return {w.pid: r for w in self.alive() if (r := w.rss()) is not None}

    def logs(self) -> list[tuple[WorkerProc, list[str]]]:
        return [(w, w.log_path.read_text(errors="replace").splitlines()) for w in self.all]


# -- log analysis ----------------------------------------------------------------------

_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ([\w.]+): (.*)$")
_UNREACHABLE = re.compile(r"^([\w ]+): database unreachable")


def parse_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class LogLine:
    at: float
    level: str
    logger: str
    message: str
    worker: WorkerProc


def log_lines(fleet: Fleet) -> list[LogLine]:
    lines: list[LogLine] = []
    for worker, text in fleet.logs():
        for raw in text:
            match = _LINE.match(raw)
            if match:
                at, level, logger, message = match.groups()
                lines.append(LogLine(parse_time(at), level, logger, message, worker))
    return lines


def unreachable_by_outage(
    lines: Sequence[LogLine], outages: Sequence[float]
) -> tuple[dict[int, Counter[tuple[int, str]]], int]:
    """'database unreachable' lines, per outage (index into `outages`, start times), counted
    per (worker pid, component). Returns that and the number of lines before any outage."""
    per: dict[int, Counter[tuple[int, str]]] = defaultdict(Counter)
    before = 0
    for line in lines:
        match = _UNREACHABLE.match(line.message)
        if not match:
            continue
        index = max((i for i, t in enumerate(outages) if t - 0.5 <= line.at), default=-1)
        if index < 0:
            before += 1
        else:
            per[index][(line.worker.pid, match.group(1))] += 1
    return per, before


def problems_in_logs(lines: Sequence[LogLine]) -> Counter[str]:
    """Counts of log lines that point at a bug rather than an injected fault."""
    found: Counter[str] = Counter()
    for line in lines:
        if "crashed; restarting" in line.message:
            found[f"{line.message.split(';')[0]}"] += 1
        elif "deadlock" in line.message:
            found["deadlock"] += 1
        elif line.level in ("ERROR", "CRITICAL"):
            found[f"ERROR {line.logger}: {line.message[:70]}"] += 1
    return found


# -- probes ----------------------------------------------------------------------------


async def table_bytes(dsn: str) -> dict[str, int]:
    rows = await sql(
        dsn,
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'simplequeue' AND c.relname IN ('jobs', 'archive', 'dlq')",
    )
    return {name: int(size) for name, size in rows}


async def dead_tuples(dsn: str) -> dict[str, tuple[int, int, int]]:
    """relname -> (n_dead_tup, n_live_tup, autovacuum_count + vacuum_count)."""
    rows = await sql(
        dsn,
        "SELECT relname, n_dead_tup, n_live_tup, autovacuum_count + vacuum_count "
        "FROM pg_stat_user_tables WHERE schemaname = 'simplequeue'",
    )
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


async def deadlocks(dsn: str) -> int:
    rows = await sql(
        dsn, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(rows[0][0])


async def live_count(dsn: str) -> int:
    rows = await sql(
        dsn, "SELECT count(*) FROM simplequeue.jobs WHERE status IN ('pending', 'running')"
    )
    return int(rows[0][0])


async def status_counts(dsn: str) -> dict[str, int]:
    rows = await sql(
        dsn,
        "SELECT status, count(*) FROM simplequeue.jobs GROUP BY status "
        "UNION ALL SELECT 'archive', count(*) FROM simplequeue.archive "
        "UNION ALL SELECT 'dlq', count(*) FROM simplequeue.dlq",
    )
    return {str(k): int(v) for k, v in rows}


def make_plans(n: int, rng: random.Random, weights: Mapping[str, float]) -> list[str]:
    names = list(weights)
    return rng.choices(names, weights=[weights[p] for p in names], k=n)


async def wait_until_drained(dsn: str, expected: int, timeout: float) -> bool:
    """True once every expected job is terminal (in jobs, archive or DLQ)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await live_count(dsn) == 0:
            rows = await sql(
                dsn,
                "SELECT (SELECT count(*) FROM simplequeue.jobs) "
                "+ (SELECT count(*) FROM simplequeue.archive) "
                "+ (SELECT count(*) FROM simplequeue.dlq)",
            )
            if int(rows[0][0]) >= expected:
                return True
        await asyncio.sleep(0.3)
    return False


# -- the final checks ------------------------------------------------------------------


@dataclass
class Accounting:
    inserted: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    phantom: int = 0
    in_two_places: int = 0
    live: int = 0
    wrong_outcome: int = 0
    examples: list[str] = field(default_factory=list)
    executions: int = 0
    duplicate_executions: int = 0  # runs whose work was redone: their claim was reaped/refunded
    reaped_live: int = 0  # reaps of a run whose worker was alive and never killed
    reaped_live_jobs: set[Any] = field(default_factory=set)
    double_exits: int = 0  # a claim whose running state ended twice: a result applied twice
    open_claims: int = 0  # a claim whose running state never ended
    unknown_executions: int = 0  # an execution of a (job, lease) nobody claimed
    same_lease_twice: int = 0
    exits_by_source: Counter[str] = field(default_factory=Counter)
    interrupted: int = 0  # runs ended by a shutdown: back to pending, attempt given back

    def violations(self) -> list[str]:
        out = []
        for name in (
            "lost", "phantom", "in_two_places", "live", "wrong_outcome", "double_exits",
            "open_claims", "unknown_executions", "same_lease_twice",
        ):  # fmt: skip
            if getattr(self, name):
                out.append(f"{name}={getattr(self, name)}")
        return out


async def account(
    dsn: str, *, check_plans: bool = True, killed_pids: Iterable[int] = (), transitions: bool = True
) -> Accounting:
    """Compare every expected job with where and how it ended, and every execution with the
    claim it ran under."""
    acc = Accounting()
    expected = {r[0]: r[1] for r in await sql(dsn, "SELECT job_id, plan FROM chaos.expected")}
    acc.inserted = len(expected)
    rows = await sql(
        dsn,
        "SELECT id, status, attempt, 'jobs' FROM simplequeue.jobs "
        "UNION ALL SELECT id, status, attempt, 'archive' FROM simplequeue.archive "
        "UNION ALL SELECT id, status, attempt, 'dlq' FROM simplequeue.dlq",
    )
    seen: dict[Any, tuple[str, int, str]] = {}
    for job_id, status, attempt, table in rows:
        if job_id in seen:
            acc.in_two_places += 1
        seen[job_id] = (status, attempt, table)
        acc.by_status[status] += 1
        if status in ("pending", "running"):
            acc.live += 1
        if job_id not in expected:
            acc.phantom += 1
    for job_id, plan in expected.items():
        if job_id not in seen:
            acc.lost += 1
            acc.examples.append(f"lost {job_id} ({plan})")
            continue
        status, attempt, table = seen[job_id]
        want = app.expected(plan)
        if check_plans and (status, attempt) != want:
            acc.wrong_outcome += 1
            if len(acc.examples) < 8:
                acc.examples.append(f"{job_id} {plan}: {status}/{attempt} in {table}, want {want}")
    executions = await sql(dsn, "SELECT job_id, lease, pid FROM chaos.executions")
    acc.executions = len(executions)
    if not transitions:
        return acc
    killed = set(killed_pids)
    claims: set[tuple[Any, int]] = set()
    exits: dict[tuple[Any, int], list[tuple[str, str, int, int, int, int]]] = defaultdict(list)
    for job_id, old_status, new_status, old_lease, new_lease, oa, na, orp, nrp, source in await sql(
        dsn,
        "SELECT job_id, old_status, new_status, old_lease, new_lease, old_attempt, new_attempt, "
        "old_reprocess, new_reprocess, source FROM chaos.transitions",
    ):
        if new_status == "running" and old_status != "running":
            claims.add((job_id, new_lease))
        if old_status == "running" and new_status != "running":
            exits[(job_id, old_lease)].append((source, new_status, oa, na, orp, nrp))
            acc.exits_by_source[source] += 1
        elif old_status == "running" and new_status == "running":
            acc.exits_by_source["running->running?"] += 1
    for key in claims:
        n = len(exits.get(key, []))
        if n == 0:
            acc.open_claims += 1
        elif n > 1:
            acc.double_exits += 1
            if len(acc.examples) < 8:
                acc.examples.append(f"claim {key} ended {n} times: {exits[key]}")
    runs = Counter((job_id, lease) for job_id, lease, _ in executions)
    acc.same_lease_twice = sum(1 for n in runs.values() if n > 1)
    for job_id, lease, pid in executions:
        key = (job_id, lease)
        if key not in claims:
            acc.unknown_executions += 1
            continue
        ends = exits.get(key, [])
        if not ends:
            continue
        source, new_status, old_attempt, new_attempt, old_rp, new_rp = ends[0]
        if source == "reap":
            acc.duplicate_executions += 1
            if pid not in killed:
                acc.reaped_live += 1
                acc.reaped_live_jobs.add(job_id)
        elif (
            source == "write"
            and new_status == "pending"
            and new_attempt == old_attempt - 1
            and new_rp == old_rp
        ):
            acc.interrupted += 1
            acc.duplicate_executions += 1
    return acc
