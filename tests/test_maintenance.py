"""The reaper and the janitor, and a queue without the janitor extra."""

from __future__ import annotations

import os
import subprocess
import sys

import simplequeue as sq
from simplequeue.maintenance.janitor import Janitor
from tests.conftest import ROOT, count, query


def stall(dsn: str, where: str = "true") -> None:
    """Make running jobs look as if their worker died a minute ago."""
    query(
        dsn,
        "UPDATE simplequeue.jobs SET status = 'running', attempt = attempt + 1, "
        f"lease = lease + 1, heartbeat_at = now() - interval '1 minute' WHERE {where}",
    )


async def test_reaper_returns_stalled_jobs_and_catches_poison(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    ids = await queue.insert_jobs([sq.Job("q", 1), sq.Job("q", 2), sq.Job("q", 3)])
    query(dsn, "UPDATE simplequeue.jobs SET reprocess_count = 99 WHERE data = '2'")
    query(dsn, "UPDATE simplequeue.jobs SET attempt = 3 WHERE data = '3'")  # out of attempts
    stall(dsn, "data IN ('1', '2')")
    report = await queue.reap()
    assert (report.recovered, report.poisoned, report.exhausted) == (1, 1, 1)
    rows = {
        r[0]: r[1:]
        for r in query(
            dsn, "SELECT data::int, status, attempt, reprocess_count FROM simplequeue.jobs"
        )
    }
    assert rows[1] == ("pending", 0, 1)  # attempt given back, reprocess counted
    assert rows[2] == ("bad_job", 0, 100)
    assert rows[3] == ("failed", 3, 0)
    assert all(ids)


async def test_reaper_leaves_beating_jobs_alone(queue: sq.SimpleQueue, dsn: str) -> None:
    await queue.insert_job(sq.Job("q", {}))
    query(dsn, "UPDATE simplequeue.jobs SET status = 'running', attempt = 1, heartbeat_at = now()")
    report = await queue.reap()
    assert report.recovered == 0
    assert count(dsn, "status = 'running'") == 1


async def test_janitor_moves_in_bounded_batches_and_purges(queue: sq.SimpleQueue, dsn: str) -> None:
    await queue.insert_jobs([sq.Job("q", i) for i in range(25)])
    query(
        dsn,
        "UPDATE simplequeue.jobs SET status = CASE WHEN (data)::int < 10 THEN 'completed' "
        "WHEN (data)::int < 20 THEN 'failed' ELSE 'pending' END",
    )
    janitor = sq.SimpleQueue(queue.pool, janitor_batch_size=3, archive_retention=3600.0)
    report = await janitor.run_janitor()
    assert (report.archived, report.dead_lettered, report.purged) == (10, 10, 0)
    assert count(dsn) == 5 and count(dsn, table="archive") == 10 and count(dsn, table="dlq") == 10
    query(
        dsn,
        "UPDATE simplequeue.archive SET moved_at = now() - interval '2 hours' "
        "WHERE (data)::int < 4",
    )
    assert (await janitor.run_janitor()).purged == 4
    assert count(dsn, table="archive") == 6


def test_janitor_schedule_by_cron() -> None:
    from datetime import UTC, datetime

    config = sq.QueueConfig.build(janitor_schedule="*/15 * * * *")
    janitor = Janitor(None, None, config)  # type: ignore[arg-type]
    at = datetime(2030, 1, 1, 10, 7, tzinfo=UTC)
    assert janitor.seconds_until_next(at) == 8 * 60
    assert Janitor(None, None, sq.QueueConfig.build()).seconds_until_next(at) == 60  # type: ignore[arg-type]


WITHOUT_EXTRA = """
import asyncio, logging, sys
sys.modules["croniter"] = None  # as if `pip install simplequeue` without [janitor]
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
import simplequeue as sq
from simplequeue.maintenance import janitor_enabled
assert not janitor_enabled()

class Ok(sq.Handler):
    QUEUE = "ok"
    async def process(self, queue, job):
        return None

async def main():
    for _ in range(2):
        async with sq.SimpleQueue.from_url(sys.argv[1], empty_poll_sleep=0.1) as queue:
            queue.register_handler(Ok())
            await queue.start()
            job = await queue.wait_for_job(await queue.insert_job(sq.Job("ok", {})), timeout=10)
            print("status:", job.status.value)
asyncio.run(main())
"""


def test_without_the_extra_the_queue_works_and_says_so_once(dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, dsn],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("status: completed") == 2
    assert result.stderr.count("no janitor runs in this process") == 1
    assert 'pip install "simplequeue[janitor]"' in result.stderr
    assert count(dsn, "status = 'completed'") == 2  # nothing archived: no janitor ran


async def test_janitor_runs_in_the_worker_with_the_extra(dsn: str) -> None:
    class Ok(sq.Handler):
        QUEUE = "ok"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    async with sq.SimpleQueue.from_url(dsn, janitor_interval=0.2) as queue:
        queue.register_handler(Ok())
        await queue.start()
        job_id = await queue.insert_job(sq.Job("ok", {}))
        from tests.conftest import eventually

        await eventually(lambda: count(dsn, table="archive") == 1)
        archived = await queue.get_job(job_id)  # type: ignore[arg-type]
    assert archived is not None and archived.status is sq.JobStatus.COMPLETED
    assert count(dsn) == 0


async def test_one_conflicting_row_never_stops_the_janitor(queue: sq.SimpleQueue, dsn: str) -> None:
    """A row already in the archive (written there by hand) under the id of a live job:
    the janitor leaves that job where it is, reports it, and moves everything else."""
    ids = await queue.insert_jobs([sq.Job("q", n) for n in range(6)])
    for table, job_id in (("archive", ids[0]), ("dlq", ids[1])):
        query(
            dsn,
            f"INSERT INTO simplequeue.{table} (id, queue, data) "
            "SELECT id, queue, data FROM simplequeue.jobs WHERE id = %s",
            [job_id],
        )
    query(dsn, "UPDATE simplequeue.jobs SET status = 'completed' WHERE (data)::int IN (0, 2, 3)")
    query(dsn, "UPDATE simplequeue.jobs SET status = 'failed' WHERE (data)::int IN (1, 4)")
    for _ in range(2):  # every sweep, not only the first
        report = await queue.run_janitor()
        assert report.stuck == 2 and report.failed_steps == ()
    assert count(dsn) == 3  # the two conflicting rows and the pending one
    assert count(dsn, table="archive") == 3 and count(dsn, table="dlq") == 2


async def test_a_move_the_database_refuses_for_some_rows_moves_the_others(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    query(
        dsn,
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN IF (NEW.data)::int <> 5 THEN RAISE EXCEPTION 'no dead letters today'; "
        "END IF; RETURN NEW; END $$",
    )
    query(
        dsn,
        "CREATE TRIGGER refuse_dlq BEFORE INSERT ON simplequeue.dlq "
        "FOR EACH ROW EXECUTE FUNCTION public.refuse()",
    )
    await queue.insert_jobs([sq.Job("q", n) for n in range(6)])
    query(dsn, "UPDATE simplequeue.jobs SET status = 'completed' WHERE (data)::int < 2")
    query(dsn, "UPDATE simplequeue.jobs SET status = 'failed' WHERE (data)::int >= 2")
    report = await queue.run_janitor()
    assert report.archived == 2 and count(dsn, table="archive") == 2
    # the batch was refused; job by job, the one row the trigger accepts moved
    assert report.dead_lettered == 1 and count(dsn, table="dlq") == 1
    assert count(dsn, "status = 'failed'") == 3  # still there, nothing lost
    # a step refused for every row: the others still run
    query(dsn, "DROP TRIGGER refuse_dlq ON simplequeue.dlq")
    query(dsn, "ALTER TABLE simplequeue.archive ADD CONSTRAINT never CHECK (false) NOT VALID")
    query(dsn, "UPDATE simplequeue.jobs SET status = 'completed' WHERE (data)::int = 2")
    report = await queue.run_janitor()
    assert (report.archived, report.dead_lettered) == (0, 2)
    assert count(dsn, "status = 'completed'") == 1 and count(dsn, table="dlq") == 3


async def test_one_row_the_database_refuses_never_stops_the_reaper(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    ids = await queue.insert_jobs([sq.Job("q", n) for n in range(4)])
    query(dsn, "UPDATE simplequeue.jobs SET attempt = 3 WHERE (data)::int >= 2")  # exhausted
    stall(dsn, "(data)::int < 2")
    query(
        dsn,
        "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF (NEW.data)::int IN (0, 2) THEN RAISE EXCEPTION 'keep this one'; END IF; "
        "RETURN NEW; END $$",
    )
    query(
        dsn,
        "CREATE TRIGGER refuse BEFORE UPDATE ON simplequeue.jobs "
        "FOR EACH ROW EXECUTE FUNCTION public.refuse()",
    )
    report = await queue.reap()
    assert (report.recovered, report.exhausted) == (1, 1)
    statuses = dict(query(dsn, "SELECT (data)::int, status FROM simplequeue.jobs"))
    assert statuses == {0: "running", 1: "pending", 2: "pending", 3: "failed"}
    assert ids
