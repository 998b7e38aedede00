"""simplequeue.testing: test job code and producers on a real PostgreSQL.

A pytest plugin (registered by entry point: installing simplequeue with the `testing`
extra is all it takes). Every test that asks for one gets a fresh, migrated database:

- `simplequeue_dsn`: its connection string;
- `simplequeue_queue`: an opened `SimpleQueue` on it, not started (async tests);
- `simplequeue_sync_queue`: an opened `SyncQueue` on it;
- `simplequeue_config`: the settings both are built with (override it to change them).

The databases live on the server named by `--simplequeue-dsn` or `$SIMPLEQUEUE_TEST_DSN`;
else on a throwaway server started with this machine's PostgreSQL binaries
(pytest-postgresql's `postgresql_proc`); else, where there are none (or as root, which
PostgreSQL refuses), on the embedded server of the `embedded` extra. Each test database
is cloned from a template migrated once per session (pytest-postgresql's `postgresql`).

Helpers: `await queue.drain()` runs every due job of the queue's handlers;
`assert_enqueued` / `refute_enqueued` (and their `_sync` twins for a `SyncQueue`) check
what a producer inserted; `perform_job` runs one job through the real executor, without a
database or a worker loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from simplequeue.codec import decode_data, encode_data
from simplequeue.columns import READ
from simplequeue.job import Job, JobStatus, ProgressUpdate
from simplequeue.queue import SimpleQueue
from simplequeue.syncqueue import SyncQueue

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "Performed",
    "assert_enqueued",
    "assert_enqueued_sync",
    "perform_job",
    "refute_enqueued",
    "refute_enqueued_sync",
]

ANY: Any = object()
"""`data=ANY` (the default): any data matches."""

DSN_VARIABLE = "SIMPLEQUEUE_TEST_DSN"

try:  # the `testing` extra; without it the plugin still loads, and its fixtures say why not
    import pytest_asyncio
    from pytest_postgresql import factories
except ImportError as missing:  # pragma: no cover - exercised without the extra
    _MISSING: ImportError | None = missing
else:
    _MISSING = None


# -- where the databases live --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Server:
    """A PostgreSQL server the test databases are made on (what pytest-postgresql's
    `postgresql_noproc` factory reads from the fixture it depends on)."""

    host: str
    port: int
    user: str
    password: str | None = None
    options: str = ""
    maintenance_dbname: str = "postgres"
    template_dbname: str | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--simplequeue-dsn",
        default=None,
        help=f"PostgreSQL server for simplequeue's test databases (else ${DSN_VARIABLE}, "
        "else a throwaway server: local binaries, or the embedded one)",
    )


def _pg_ctl() -> str | None:
    """This machine's pg_ctl, if PostgreSQL may be started with it (never as root)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return None
    found = shutil.which("pg_ctl") or max(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), default=None
    )
    return found


def _server_from_dsn(dsn: str) -> Server:
    params = conninfo_to_dict(dsn)
    return Server(
        host=str(params.get("host", "127.0.0.1")),
        port=int(str(params.get("port") or 5432)),
        user=str(params.get("user", "postgres")),
        password=str(params["password"]) if params.get("password") else None,
    )


def _migrate(host: str, port: int, user: str, dbname: str, password: str | None, **_: Any) -> None:
    """The template's load: the queue's schema, once per session."""
    from simplequeue.migrate import setup

    dsn = make_conninfo(host=host, port=port, user=user, dbname=dbname, password=password or None)
    asyncio.run(setup(dsn))


def _need_extra() -> None:
    if _MISSING is not None:
        pytest.fail(
            f"simplequeue.testing needs the testing extra ({_MISSING}): "
            'pip install "simplequeue[testing]"',
            pytrace=False,
        )


@pytest.fixture(scope="session")
def simplequeue_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """The server the test databases are made on; see the module's docstring."""
    _need_extra()
    dsn = request.config.getoption("--simplequeue-dsn") or os.environ.get(DSN_VARIABLE)
    if dsn:
        yield _server_from_dsn(dsn)
        return
    if _pg_ctl() is not None:
        proc = request.getfixturevalue("simplequeue_postgresql_proc")
        yield Server(proc.host, int(proc.port), proc.user, proc.password or None)
        return
    from simplequeue.embedded import start_embedded

    embedded = start_embedded()
    try:
        yield Server(embedded.host, embedded.port, embedded.user)
    finally:
        embedded.stop()


if _MISSING is None:
    # Unique per session: sessions at once on one server (CI containers whose pytest is
    # PID 1 in each), or the leftovers of a killed one, never meet.
    _TEMPLATE = f"simplequeue_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    simplequeue_postgresql_proc = factories.postgresql_proc(
        executable=_pg_ctl() or "pg_ctl", port=None, dbname=_TEMPLATE
    )
    simplequeue_postgresql_noproc = factories.postgresql_noproc(
        dbname=_TEMPLATE, load=[_migrate], depends_on="simplequeue_server"
    )
    simplequeue_postgresql = factories.postgresql("simplequeue_postgresql_noproc")


@pytest.fixture
def simplequeue_dsn(request: pytest.FixtureRequest) -> str:
    """A fresh database with the queue's schema, dropped after the test."""
    _need_extra()
    conn: psycopg.Connection[Any] = request.getfixturevalue("simplequeue_postgresql")
    info = conn.info
    return make_conninfo(
        host=info.host, port=info.port, user=info.user, dbname=info.dbname,
        password=info.password or None,
    )  # fmt: skip


@pytest.fixture
def simplequeue_config() -> dict[str, Any]:
    """Settings for `simplequeue_queue` and `simplequeue_sync_queue` (`QueueConfig`
    names): override this fixture to change them."""
    return {}


def _async_fixture(function: Callable[..., Any]) -> Any:
    return pytest_asyncio.fixture(function) if _MISSING is None else pytest.fixture(function)


@_async_fixture
async def simplequeue_queue(
    simplequeue_dsn: str, simplequeue_config: dict[str, Any]
) -> AsyncIterator[SimpleQueue]:
    """An opened SimpleQueue on the test's database (not started: `drain()` runs jobs)."""
    async with SimpleQueue.from_url(simplequeue_dsn, **simplequeue_config) as queue:
        yield queue


@pytest.fixture
def simplequeue_sync_queue(
    simplequeue_dsn: str, simplequeue_config: dict[str, Any]
) -> Iterator[SyncQueue]:
    """An opened SyncQueue on the test's database."""
    with SyncQueue.from_url(simplequeue_dsn, **simplequeue_config) as queue:
        yield queue


# -- what was enqueued -----------------------------------------------------------------

PAGE = 10_000
"""Pending jobs read per round trip; all of them are checked, page after page."""

MATCHABLE = frozenset(c.attribute.lstrip("_") for c in READ if c.attribute) - {"data"}
"""The attributes `assert_enqueued` can match, besides the data."""


def _matcher(data: Any, attributes: dict[str, Any]) -> Callable[[Job], bool]:
    """A test of one job; the expected values go through what a stored job goes through
    (data through JSON, so a pydantic model matches its dump; a timedelta as seconds)."""
    unknown = sorted(set(attributes) - MATCHABLE)
    if unknown:
        raise TypeError(
            f"no job attribute {', '.join(unknown)}; match data, or any of "
            f"{', '.join(sorted(MATCHABLE))}"
        )
    if data is not ANY and not callable(data):
        data = decode_data(encode_data(data))
    wanted = {
        name: value.total_seconds() if isinstance(value, timedelta) else value
        for name, value in attributes.items()
    }

    def matches(job: Job) -> bool:
        if data is not ANY and not (data(job.data) if callable(data) else job.data == data):
            return False
        return all(getattr(job, name) == value for name, value in wanted.items())

    return matches


class _Scan:
    """The pending jobs of one queue, read page by page, and those that match."""

    def __init__(self, queue: str, data: Any, count: int | None, attributes: dict[str, Any]):
        self.queue, self.data, self.count, self.attributes = queue, data, count, attributes
        self.matches = _matcher(data, attributes)
        self.jobs: list[Job] = []
        self.found: list[Job] = []

    @property
    def after(self) -> uuid.UUID | None:
        return self.jobs[-1].id if self.jobs else None

    def read(self, page: list[Job]) -> bool:
        """Take one page; True once it was the last."""
        self.jobs += page
        self.found += filter(self.matches, page)
        return len(page) < PAGE

    def verdict(self) -> list[Job]:
        found, count = self.found, self.count
        if (count is None and found) or (count is not None and len(found) == count):
            return found
        wanted = "" if self.data is ANY else f" with data {self.data!r}"
        wanted += "".join(f", {name}={value!r}" for name, value in self.attributes.items())
        seen = "\n".join(f"  {job.data!r} {_summary(job)}".rstrip() for job in self.jobs[:20])
        more = f"\n  ... and {len(self.jobs) - 20} more" if len(self.jobs) > 20 else ""
        expected = "at least one" if count is None else str(count)
        raise AssertionError(
            f"expected {expected} pending job(s) in {self.queue!r}{wanted}, found "
            f"{len(found)}; pending in {self.queue!r}:\n{seen or '  (none)'}{more}"
        )


def _summary(job: Job) -> str:
    keys = ("unique_key", "fingerprint", "priority")
    return " ".join(f"{k}={getattr(job, k)!r}" for k in keys if getattr(job, k) not in (None, 0))


async def assert_enqueued(
    queue: SimpleQueue, name: str, data: Any = ANY, *, count: int | None = None, **attributes: Any
) -> list[Job]:
    """The pending jobs of queue `name` whose data equals `data` (or satisfies it, when it
    is a callable) and whose attributes (`unique_key=`, `priority=`, ...) equal those
    given; AssertionError, listing what is pending, unless there are `count` of them (at
    least one when `count` is None)."""
    scan = _Scan(name, data, count, attributes)
    while not scan.read(await queue.list_jobs(name, JobStatus.PENDING, PAGE, after=scan.after)):
        pass
    return scan.verdict()


async def refute_enqueued(
    queue: SimpleQueue, name: str, data: Any = ANY, **attributes: Any
) -> None:
    """AssertionError if any pending job of queue `name` matches (see assert_enqueued)."""
    await assert_enqueued(queue, name, data, count=0, **attributes)


def assert_enqueued_sync(
    queue: SyncQueue, name: str, data: Any = ANY, *, count: int | None = None, **attributes: Any
) -> list[Job]:
    """`assert_enqueued`, for a SyncQueue."""
    scan = _Scan(name, data, count, attributes)
    while not scan.read(queue.list_jobs(name, JobStatus.PENDING, PAGE, after=scan.after)):
        pass
    return scan.verdict()


def refute_enqueued_sync(queue: SyncQueue, name: str, data: Any = ANY, **attributes: Any) -> None:
    """`refute_enqueued`, for a SyncQueue."""
    assert_enqueued_sync(queue, name, data, count=0, **attributes)


# -- one job through the executor ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Performed:
    """What one attempt of a job came to, as a worker would store it."""

    status: JobStatus
    """The job's next state: completed, pending (to run again), failed, cancelled, ..."""
    error: str | None
    """The error text stored with it (`last_error`), if any."""
    delay: float
    """When pending: seconds until it is due again (the backoff, a snooze)."""
    run_at: datetime | None
    """The time a `retry_at` or `reschedule_at` asked for; the job is due at the later of
    it and now + `delay` (a retry's backoff may come later)."""
    attempt_spent: bool
    """False when the attempt is given back (a reschedule, a snooze, a strategy delay)."""
    job: Job
    """The job as the handler saw it (its `payload` validated, `attempt` counted), with
    the last progress it reported (`job.progress`, `job.progress_message`)."""
    result: Any = None
    """What a success stores as the job's `result` (as JSON reads it back), or None."""


async def perform_job(queue: SimpleQueue, job: Job) -> Performed:
    """Run one attempt of `job` through the real executor, as a worker would: its queue's
    strategy permit, payload validation, the registered handler under its timeout, and
    the verdict turned into the job's next state, with the queue's backoff. Nothing is
    read from or written to the database: `job` need not be inserted, and jobs the
    handler inserts through `queue` are inserted for real."""
    from simplequeue.runtime.executor import Executor
    from simplequeue.runtime.heartbeat import Heartbeater
    from simplequeue.runtime.progress import checked_progress
    from simplequeue.runtime.results import ResultWriter

    if job.queue not in queue._registry.handlers:
        raise LookupError(
            f"no handler for queue {job.queue!r} on this queue: register_handler() it first"
        )
    claimed = job._as_claimed()

    def record_progress(running: Job, value: Any, message: str | None) -> ProgressUpdate:
        """Progress kept on the job, checked as a worker checks it; nothing is written."""
        progress, text = checked_progress(value, message, queue.config.max_progress_bytes)
        running.progress = None if progress is None else json.loads(progress)
        running.progress_message = text
        running.progress_at = datetime.now(UTC)
        return ProgressUpdate(recorded=True)

    claimed._reporter = record_progress
    heartbeats = Heartbeater(_no_connection, queue._store, queue.config.heartbeat_interval)
    executor = Executor(
        queue,
        queue._registry,
        heartbeats,
        ResultWriter(queue.pool, queue._store, batch_size=1, flush_interval=0),
        _still_ours,
        max_reprocess=queue.config.max_reprocess_count,
        threads=1,
        max_result_bytes=queue.config.max_result_bytes,
    )
    try:
        outcome, _leftover = await executor.attempt(claimed)
    finally:
        executor.shutdown()
    assert outcome is not None  # no claim to lose: the job is always ours here
    return Performed(
        status=JobStatus(outcome.status),
        error=outcome.error,
        delay=outcome.delay,
        run_at=outcome.not_before,
        attempt_spent=not outcome.refund,
        job=claimed,
        result=None if outcome.result is None else json.loads(outcome.result),
    )


def _no_connection() -> Any:  # pragma: no cover - never started
    raise AssertionError("perform_job opens no connection")


async def _still_ours(job: Job) -> bool:
    return True
