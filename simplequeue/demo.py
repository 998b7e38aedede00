"""`simplequeue demo`: a guided tour of the main behaviours on a throwaway schema.

Without a DSN it starts an embedded PostgreSQL (the `embedded` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel

import simplequeue as sq

__all__ = ["run_demo"]

DEMO_SCHEMA = "simplequeue_demo"


class Email(BaseModel):
    to: str
    subject: str


class SendEmail(sq.Handler):
    """Succeeds, except that a `flaky` email fails its first attempt."""

    QUEUE = "emails"
    Payload = Email

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        if job.payload.subject == "flaky" and job.attempt == 1:
            raise ConnectionError("SMTP server hung up")
        await asyncio.sleep(0.05)


class Report(sq.Handler):
    QUEUE = "reports"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        await asyncio.sleep(0.05)


class Poison(sq.Handler):
    """Never finishes: asks to be rescheduled every time until it is declared poison."""

    QUEUE = "poison"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult:
        return sq.JobResult.reschedule_at(datetime.now(UTC))


@contextlib.contextmanager
def _database(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from simplequeue.embedded import start_embedded

    print("No DSN given ($SIMPLEQUEUE_DSN unset): starting an embedded PostgreSQL…")
    with start_embedded() as server:
        yield server.dsn


@contextlib.asynccontextmanager
async def _fresh_schema(dsn: str, schema: str) -> AsyncIterator[None]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
    await sq.setup(dsn, schema=schema)
    yield


async def run_demo(dsn: str | None, schema: str = DEMO_SCHEMA) -> int:
    if schema == "simplequeue":
        schema = DEMO_SCHEMA  # the demo drops its schema: never the default one
    with _database(dsn) as url:
        async with _fresh_schema(url, schema):
            await _tour(url, schema)
    return 0


async def _tour(dsn: str, schema: str) -> None:
    started = time.monotonic()
    queue = sq.SimpleQueue.from_url(
        dsn,
        schema=schema,
        heartbeat_interval=0.5,
        empty_poll_sleep=0.5,
        max_reprocess_count=3,
        janitor_interval=3600,
        backoff=sq.Linear(0.5),
    )
    queue.register_handler(SendEmail())
    queue.register_handler(Report())
    queue.register_handler(Poison())
    in_an_hour = datetime.now(UTC) + timedelta(hours=1)
    rows: list[tuple[str, str, Any]] = []
    async with queue:
        await queue.start()
        print(f"Worker started on schema {schema!r}; producing jobs…\n")
        emails = [
            sq.Job(
                "emails",
                {"to": f"user{i}@example.com", "subject": "welcome"},
                unique_key=f"welcome:{i}",
            )
            for i in range(3)
        ]
        ids = await queue.insert_jobs(emails)
        rows += [(f"email {i}", "completed", job_id) for i, job_id in enumerate(ids)]
        duplicate = await queue.insert_job(
            sq.Job(
                "emails", {"to": "user0@example.com", "subject": "welcome"}, unique_key="welcome:0"
            )
        )
        print(f"  insert of a duplicate unique key 'welcome:0' returned {duplicate} (deduplicated)")
        flaky = await queue.insert_job(
            sq.Job("emails", {"to": "f@example.com", "subject": "flaky"})
        )
        rows.append(("flaky email (fails once, retried after backoff)", "completed", flaky))
        invalid = await queue.insert_job(sq.Job("emails", {"to": 42}))
        rows.append(("email with an invalid payload", "unprocessable", invalid))
        cancelled = await queue.insert_job(sq.Job("reports", {"name": "weekly"}, run_at=in_an_hour))
        assert cancelled is not None
        await queue.cancel_job(cancelled)
        rows.append(("report due in an hour, then cancelled", "cancelled", cancelled))
        moved = await queue.insert_job(sq.Job("reports", {"name": "daily"}, run_at=in_an_hour))
        assert moved is not None
        await queue.reschedule_job(moved, datetime.now(UTC))
        rows.append(("report due in an hour, rescheduled to now", "completed", moved))
        poison = await queue.insert_job(sq.Job("poison", {"loop": True}))
        rows.append(("poison job (reschedules itself forever)", "bad_job", poison))

        for _, _, job_id in rows:
            assert job_id is not None
            await _wait_terminal(queue, job_id)
        final = {job_id: await queue.get_job(job_id) for _, _, job_id in rows}

        report = await queue.run_janitor()
        janitor_line = (
            f"janitor: {report.archived} completed job(s) archived, "
            f"{report.dead_lettered} dead job(s) moved to the DLQ"
        )
        counts = await queue.counts()
        dlq = await queue.list_dlq()

    width = max(len(r[0]) for r in rows)
    print(f"\n{'job':<{width}}  {'expected':<14}{'status':<14}{'attempt':>8}{'reprocess':>10}")
    print("-" * (width + 48))
    ok = True
    for label, expected, job_id in rows:
        job = final[job_id]
        assert job is not None
        ok &= job.status.value == expected
        print(
            f"{label:<{width}}  {expected:<14}{job.status.value:<14}"
            f"{job.attempt:>5}/{job.max_attempts:<2}{job.reprocess_count:>10}"
        )
    print(f"\n{janitor_line}")
    print(
        f"tables now: live={sum(v for k, v in counts.items() if k not in ('archive', 'dlq'))}"
        f" archive={counts['archive']} dlq={counts['dlq']}"
    )
    for job in dlq:
        error = " ".join((job.last_error or "").split())
        print(f"  DLQ: {job.queue:<8} {job.status.value:<14} {error[:70]}")
    verdict = "every job ended as expected" if ok else "SOME JOBS DID NOT END AS EXPECTED"
    print(f"\n{verdict} in {time.monotonic() - started:.1f}s")
    if not ok:
        raise SystemExit(1)


async def _wait_terminal(queue: sq.SimpleQueue, job_id: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await queue.get_job(job_id)
        if job is not None and not job.status.is_live:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish within {timeout}s")
