"""simplequeue behind a real PgBouncer in transaction pooling, a pool of 3 server
connections shared by every client: producers, workers, the maintenance and the command
line lose and duplicate nothing; wake-ups come through `listen_dsn`, else the fallback
poll, and no LISTEN is left on a pooled server connection.

The binary is Debian's `pgbouncer` (`apt-get install pgbouncer`); without it these tests
are skipped, unless SIMPLEQUEUE_REQUIRE_PGBOUNCER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import simplequeue as sq
from simplequeue.cli import main
from tests.conftest import WorkerProcess, count, eventually, query

POOL_SIZE = 3
"""Server connections PgBouncer keeps per database and user: fewer than the clients."""

THROUGH = {
    "heartbeat_interval": 0.2,
    "reaper_interval": 0.1,
    "leader_ttl": 1.0,
    "backoff": sq.Fixed(0),
    "result_flush_interval": 0.001,
}
"""Quick background loops, as in the other tests (the poll is set per test)."""


@dataclasses.dataclass(frozen=True)
class PgBouncer:
    dsn: str
    """The test's database through PgBouncer."""
    direct: str
    """The same database, straight to the server."""
    log: Path

    def listening_server_connections(self) -> int:
        """Server connections of the pool that LISTEN on some channel: one transaction per
        server connection, all held at once, so each of them is asked."""
        conns = [psycopg.connect(self.dsn) for _ in range(POOL_SIZE)]
        try:
            found = 0
            for conn in conns:  # each stays in its transaction: a server connection apiece
                found += len(conn.execute("SELECT pg_listening_channels()").fetchall())
            return found
        finally:
            for conn in conns:
                conn.close()


def _binary() -> str | None:
    found = shutil.which("pgbouncer")
    for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if found is None and os.access(path, os.X_OK):
            found = path
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as(host: str) -> list[str]:
    """PgBouncer refuses to run as root: then it runs as the owner of the server's socket
    directory (the embedded server's, 0700), or as nobody for a TCP server."""
    if os.geteuid() != 0:
        return []
    owner = pwd.getpwuid(os.stat(host).st_uid).pw_name if host.startswith("/") else "nobody"
    return ["-u", owner]


@pytest.fixture
def pgbouncer(dsn: str, tmp_path: Path) -> Iterator[PgBouncer]:
    """A PgBouncer of this test's own, on a free port, in front of its database."""
    binary = _binary()
    if binary is None:
        reason = "no pgbouncer binary (Debian: apt-get install pgbouncer)"
        if os.environ.get("SIMPLEQUEUE_REQUIRE_PGBOUNCER") == "1":
            pytest.fail(f"SIMPLEQUEUE_REQUIRE_PGBOUNCER=1, but {reason}", pytrace=False)
        pytest.skip(f"{reason}; SIMPLEQUEUE_REQUIRE_PGBOUNCER=1 makes this a failure")
    params = conninfo_to_dict(dsn)
    host, user = str(params.get("host", "127.0.0.1")), str(params.get("user", "postgres"))
    password = str(params.get("password") or "")
    users = tmp_path / "users.txt"
    users.write_text(f'"{user}" "{password}"\n')
    log = tmp_path / "pgbouncer.log"
    for _ in range(3):  # a port taken between the probe and the bind: another one
        port = _free_port()
        config = tmp_path / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={host} port={params.get('port', 5432)}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {users}\n"
            f"pool_mode = transaction\ndefault_pool_size = {POOL_SIZE}\n"
            "max_client_conn = 500\nlog_connections = 0\nlog_disconnections = 0\n"
        )
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [binary, *_run_as(host), str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        bounced = make_conninfo(dsn, host="127.0.0.1", port=port)
        if _up(proc, bounced):
            break
    else:
        pytest.fail(f"pgbouncer did not start:\n{log.read_text()}", pytrace=False)
    try:
        yield PgBouncer(bounced, dsn, log)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _up(proc: subprocess.Popen[bytes], dsn: str) -> bool:
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)
    return False


class Recorder(sq.Handler):
    """Counts each run of each job; `flaky` fails its first attempt, `slow` outlives a
    few heartbeats. `Recorder.of(queue)`: one for that queue."""

    QUEUE = "w"

    @classmethod
    def of(cls, queue: str) -> Recorder:
        recorder: Recorder = type(f"Recorder_{queue}", (cls,), {"QUEUE": queue})()
        return recorder

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.started: dict[str, float] = {}
        self.flaky: set[str] = set()

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        self.started.setdefault(str(job.id), time.monotonic())
        self.runs[str(job.id)] += 1
        if job.data.get("flaky"):
            self.flaky.add(str(job.id))
        if job.data.get("flaky") and job.attempt == 1:
            raise RuntimeError("first attempt fails")
        await asyncio.sleep(float(job.data.get("slow", 0)))


@contextlib.asynccontextmanager
async def worker(dsn: str, handler: sq.Handler, **settings: Any) -> AsyncIterator[sq.SimpleQueue]:
    queue = sq.SimpleQueue.from_url(dsn, **{**THROUGH, **settings})
    queue.register_handler(handler)
    async with queue:
        await queue.start()
        try:
            yield queue
        finally:
            await queue.stop(5)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("simplequeue") and r.levelno >= logging.ERROR
    ]


# -- producers --------------------------------------------------------------------------


async def test_async_producers_insert_each_job_once(pgbouncer: PgBouncer) -> None:
    """One at a time (past psycopg's prepare threshold on every connection), in batches
    of either path (COPY from 500), deduplicated, and in the caller's own transaction,
    committed or rolled back."""
    async with sq.SimpleQueue.from_url(pgbouncer.dsn, pool_max_size=4) as queue:
        one = [await queue.insert_job(sq.Job("p", {"n": n})) for n in range(30)]
        small = await queue.insert_jobs([sq.Job("p", {"n": n}) for n in range(50)])
        copied = await queue.insert_jobs([sq.Job("p", {"n": n}) for n in range(600)])
        keyed = [await queue.insert_job(sq.Job("p", {}, unique_key="k")) for _ in range(8)]
        async with await psycopg.AsyncConnection.connect(pgbouncer.dsn) as conn:
            async with conn.transaction():
                theirs = await queue.insert_jobs(
                    [sq.Job("p", {"n": n}) for n in range(600)], conn=conn
                )
                theirs.append(await queue.insert_job(sq.Job("p", {}), conn=conn))
            async with conn.transaction(force_rollback=True):
                await queue.insert_jobs([sq.Job("p", {"n": n}) for n in range(600)], conn=conn)
                await queue.insert_job(sq.Job("p", {}), conn=conn)
    assert keyed[0] is not None and keyed[1:] == [None] * 7
    stored = [*one, *small, *copied, keyed[0], *theirs]
    assert None not in stored and len(set(stored)) == 30 + 50 + 600 + 1 + 601
    assert count(pgbouncer.direct, "queue = 'p'") == len(stored)


def test_sync_producers_insert_each_job_once(pgbouncer: PgBouncer) -> None:
    with sq.SyncQueue.from_url(pgbouncer.dsn, pool_max_size=4) as queue:
        one = [queue.insert_job(sq.Job("s", {"n": n})) for n in range(30)]
        copied = queue.insert_jobs([sq.Job("s", {"n": n}) for n in range(600)])
        with psycopg.connect(pgbouncer.dsn) as conn:
            with conn.transaction():
                theirs = queue.insert_jobs([sq.Job("s", {"n": n}) for n in range(600)], conn=conn)
            with conn.transaction(force_rollback=True):
                queue.insert_jobs([sq.Job("s", {"n": n}) for n in range(600)], conn=conn)
        assert queue.counts()["pending"] == 1230
    stored = [*one, *copied, *theirs]
    assert None not in stored and len(set(stored)) == 1230
    assert count(pgbouncer.direct, "queue = 's'") == 1230


@pytest.mark.parametrize(
    ("through", "setting", "prepares"),
    [(True, None, False), (False, None, True), (True, True, True), (False, False, False)],
)
async def test_owned_pools_prepare_statements_unless_behind_a_pooler(
    pgbouncer: PgBouncer, through: bool, setting: bool | None, prepares: bool
) -> None:
    """PgBouncer before 1.21 keeps no prepared statement for the client that made it:
    the pools `from_url` makes stop preparing behind a pooler, or as `prepared_statements`
    says; straight to the server, psycopg's default holds."""
    default = psycopg.connect(pgbouncer.direct).prepare_threshold
    assert default is not None
    url = pgbouncer.dsn if through else pgbouncer.direct
    settings = {} if setting is None else {"prepared_statements": setting}
    expected = default if prepares else None
    async with sq.SimpleQueue.from_url(url, **settings) as queue, queue.pool.connection() as conn:
        assert conn.prepare_threshold == expected
    with sq.SyncQueue.from_url(url, **settings) as sync, sync.pool.connection() as sconn:
        assert sconn.prepare_threshold == expected


# -- workers ----------------------------------------------------------------------------


async def test_workers_lose_and_duplicate_nothing(
    pgbouncer: PgBouncer, caplog: pytest.LogCaptureFixture
) -> None:
    """Claims, retries, heartbeats of long runs, the leader's maintenance and a schedule,
    all through 3 shared server connections; the LISTEN on its own connection."""
    caplog.set_level(logging.WARNING, logger="simplequeue")
    handler, ticks = Recorder(), Recorder.of("ticks")
    async with worker(
        pgbouncer.dsn, handler, listen_dsn=pgbouncer.direct, empty_poll_sleep=0.3
    ) as queue:
        queue.register_handler(ticks)
        queue.schedule("tick", sq.Job("ticks", {}), every=1)
        await queue.ready(5)
        ids = await queue.insert_jobs(
            [sq.Job("w", {"n": n, "flaky": n % 5 == 0}) for n in range(200)]
        )
        ids += [await queue.insert_job(sq.Job("w", {"slow": 0.7})) for _ in range(3)]
        ids += [await queue.insert_job(sq.Job("w", {"n": n})) for n in range(40)]
        done = "queue = 'w' AND status = 'completed'"
        await eventually(lambda: count(pgbouncer.direct, done) == len(ids), timeout=30)
        await eventually(lambda: sum(ticks.runs.values()) >= 2, timeout=10)
        await eventually(lambda: queue.stats().leader, timeout=5)
        stats = queue.stats()
        assert stats.listener_connected and {"reaper", "janitor"} <= set(stats.services)
        reaped = await queue.reap()
        swept = await queue.run_janitor()
    assert len(handler.flaky) == 40 and set(handler.runs) == {str(i) for i in ids}
    assert {job: 2 if job in handler.flaky else 1 for job in handler.runs} == handler.runs
    assert reaped.recovered == 0 and swept.archived >= len(ids)
    assert count(pgbouncer.direct, "queue = 'w'", table="archive") == len(ids)
    assert (stats.heartbeat_failures, stats.database_failures, stats.service_restarts) == (0, 0, 0)
    assert _errors(caplog) == []


async def test_the_listen_dsn_wakes_a_worker_long_before_its_poll(pgbouncer: PgBouncer) -> None:
    """With a 30 s fallback poll, each job is picked up within seconds: woken by the
    NOTIFY of an insert made through PgBouncer, heard on the direct connection (named
    like the worker's other connections)."""
    handler = Recorder.of("wake")
    async with (
        worker(pgbouncer.dsn, handler, listen_dsn=pgbouncer.direct, empty_poll_sleep=30) as queue,
        sq.SimpleQueue.from_url(pgbouncer.dsn) as producer,
    ):
        await queue.ready(5)
        named = f"simplequeue worker {queue.worker_id} listen"
        activity = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        assert query(pgbouncer.direct, activity, [named]) == [(1,)]
        await asyncio.sleep(0.5)  # past the start's first claim: idle on its long poll
        for _ in range(3):
            inserted = time.monotonic()
            job_id = str(await producer.insert_job(sq.Job("wake", {})))
            await eventually(lambda: job_id in handler.started, timeout=5)  # noqa: B023
            assert handler.started[job_id] - inserted < 5
            await asyncio.sleep(0.3)


async def test_without_listen_dsn_the_worker_polls_and_leaves_no_listen(
    pgbouncer: PgBouncer, caplog: pytest.LogCaptureFixture
) -> None:
    """Behind a pooler, a LISTEN on a pooled connection would hear nothing and stay on a
    server connection that every client borrows in turn: the listener stands down, says
    why, and the fallback poll picks each job up."""
    caplog.set_level(logging.WARNING, logger="simplequeue")
    handler = Recorder.of("poll")
    async with worker(pgbouncer.dsn, handler, empty_poll_sleep=0.3) as queue:
        await queue.ready(5)  # ready at once: polling is all there is
        for n in range(5):
            job_id = str(await queue.insert_job(sq.Job("poll", {"n": n})))
            await eventually(lambda: job_id in handler.started, timeout=5)  # noqa: B023
        stats = queue.stats()
        assert not stats.listener_connected and "listener" in stats.services
        assert pgbouncer.listening_server_connections() == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "simplequeue.listener"]
    assert len(warned) == 1 and "listen_dsn" in warned[0] and "empty_poll_sleep=0.3s" in warned[0]
    assert _errors(caplog) == []
    # The check above sees a LISTEN left on a pooled server connection:
    with psycopg.connect(pgbouncer.dsn, autocommit=True) as conn:
        conn.execute("LISTEN anything")
        assert pgbouncer.listening_server_connections() == 1


async def test_a_listen_dsn_that_cannot_connect_leaves_the_poll(
    pgbouncer: PgBouncer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="simplequeue")
    handler = Recorder.of("lost")
    nowhere = f"host=127.0.0.1 port={_free_port()} user=postgres connect_timeout=2"
    async with worker(pgbouncer.dsn, handler, listen_dsn=nowhere, empty_poll_sleep=0.3) as queue:
        with pytest.raises(TimeoutError):
            await queue.ready(0.5)  # never heard: ready() says so
        job_id = await queue.insert_job(sq.Job("lost", {}))
        await eventually(lambda: str(job_id) in handler.started, timeout=5)
        assert not queue.stats().listener_connected and queue.stats().database_failures >= 1
    assert any(r.name == "simplequeue.listener" for r in caplog.records)


def test_a_killed_worker_process_is_reaped_through_pgbouncer(pgbouncer: PgBouncer) -> None:
    """`simplequeue worker --listen-dsn` through PgBouncer claims a job and dies in it;
    the leader's reaper, also through PgBouncer, gives the job back."""
    other = Recorder.of("other")

    async def lead_and_wait() -> None:
        async with worker(pgbouncer.dsn, other, empty_poll_sleep=0.3, use_notify=False):
            listen = ("--listen-dsn", pgbouncer.direct)
            proc = WorkerProcess(pgbouncer.dsn, "tests.worker_app:configure", *listen)
            try:
                await eventually(lambda: count(pgbouncer.direct, table="workers") == 2, 15)
                job = sq.Job("work", {"crash": True}, max_attempts=5)
                async with sq.SimpleQueue.from_url(pgbouncer.dsn) as producer:
                    await producer.insert_job(job)
                await eventually(lambda: proc.proc.poll() == 17, timeout=15)
                await eventually(
                    lambda: count(pgbouncer.direct, "status = 'pending' AND reprocess_count = 1"),
                    timeout=10,
                )
            finally:
                output = proc.output()
            assert "Traceback" not in output, output

    asyncio.run(lead_and_wait())


# -- the command line and the HTTP API's events ----------------------------------------


def test_the_operators_commands_through_pgbouncer(
    pgbouncer: PgBouncer, capsys: pytest.CaptureFixture[str]
) -> None:
    with sq.SyncQueue.from_url(pgbouncer.dsn) as queue:
        queue.insert_jobs([sq.Job("cli", {}) for _ in range(7)])
    for _ in range(3):  # the same statements again and again on a small pool
        assert main(["stats", "--dsn", pgbouncer.dsn, "--json"]) == 0
        assert '"cli"' in capsys.readouterr().out
    assert main(["jobs", "list", "--queue", "cli", "--dsn", pgbouncer.dsn]) == 0
    pytest.importorskip("uvicorn")
    refused = ["serve", "--listen-dsn", "host=x =y", "--dsn", pgbouncer.dsn]
    assert main(refused) == 2 and "listen_dsn" in capsys.readouterr().err


async def test_live_events_listen_on_the_listen_dsn_only(
    pgbouncer: PgBouncer, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("starlette")
    from simplequeue.web import create_app
    from simplequeue.web.events import Subscription

    caplog.set_level(logging.WARNING, logger="simplequeue")
    async with sq.SimpleQueue.from_url(pgbouncer.dsn) as queue:
        hub = create_app(queue, admin_tokens=["a" * 16]).state.events
        began = time.monotonic()
        assert not await hub.wait_connected(5)
        assert time.monotonic() - began < 4  # told at once, not at the timeout
        assert count(pgbouncer.direct, table="event_listeners") == 0  # nobody to publish to
        assert pgbouncer.listening_server_connections() == 0
        await hub.aclose()
    assert any("--listen-dsn" in r.getMessage() for r in caplog.records)

    async with sq.SimpleQueue.from_url(pgbouncer.dsn, listen_dsn=pgbouncer.direct) as queue:
        hub = create_app(queue, admin_tokens=["a" * 16]).state.events
        subscription = Subscription(queue="live")
        async with hub.subscribe(subscription):
            assert await hub.wait_connected(5)
            job_id = await queue.insert_job(sq.Job("live", {}))
            event = await asyncio.wait_for(subscription.events.get(), 10)
        assert (event.kind, event.job_id) == ("inserted", str(job_id))
        await hub.aclose()


# -- the settings ------------------------------------------------------------------------


def test_listen_dsn_is_checked_and_kept_out_of_the_config_repr() -> None:
    with pytest.raises(sq.ConfigError, match=r"listen_dsn: .*not a valid connection string"):
        sq.QueueConfig.build(listen_dsn="host=x =y")
    with pytest.raises(sq.ConfigError, match="listen_dsn"):
        sq.QueueConfig.build(listen_dsn=5)
    assert sq.QueueConfig.build(listen_dsn=" ").listen_dsn is None  # an empty variable
    config = sq.QueueConfig.build(listen_dsn="host=db password=secret")
    assert config.listen_dsn == "host=db password=secret" and "secret" not in repr(config)
