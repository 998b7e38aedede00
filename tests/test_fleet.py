"""Queues and workers as rows: pause and resume across the fleet, workers listed with what
they run, each attempt's error kept, undeclared queues warned about or refused."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import simplequeue as sq
from tests.conftest import FAST, count, eventually, query


class Record(sq.Handler):
    QUEUE = "work"

    def __init__(self) -> None:
        self.ran: list[uuid.UUID] = []

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        self.ran.append(job.id)


async def test_a_paused_queue_is_not_claimed_and_resume_wakes_idle_workers_at_once(
    dsn: str,
) -> None:
    # A fallback poll of 30 s: only the resume's NOTIFY can wake the worker in time.
    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "empty_poll_sleep": 30}) as queue:
        handler = Record()
        queue.register_handler(handler)
        info = await queue.pause_queue("work", by="ops", reason="endpoint down")
        assert info.paused and info.paused_by == "ops" and info.pause_reason == "endpoint down"
        await queue.start()
        await queue.ready()
        job_id = await queue.insert_job(sq.Job("work", {}))
        await asyncio.sleep(0.5)
        assert handler.ran == []
        job = await queue.get_job(job_id)  # type: ignore[arg-type]
        assert job is not None and job.status is sq.JobStatus.PENDING and job.attempt == 0
        began = time.monotonic()
        assert await queue.resume_queue("work") is True
        await eventually(lambda: handler.ran == [job_id], timeout=5)
        assert time.monotonic() - began < 2.0  # not the 30 s poll
        assert await queue.resume_queue("work") is False  # no longer paused


async def test_running_jobs_finish_when_their_queue_is_paused(queue: sq.SimpleQueue) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    class Slow(sq.Handler):
        QUEUE = "work"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            started.set()
            await release.wait()

    queue.register_handler(Slow())
    await queue.start()
    job_id = await queue.insert_job(sq.Job("work", {}))
    second = await queue.insert_job(
        sq.Job("work", {}, run_at=datetime.now(UTC) + timedelta(seconds=1))
    )
    await asyncio.wait_for(started.wait(), 5)
    await queue.pause_queue("work")
    release.set()
    done = await queue.wait_for_job(job_id, timeout=5)  # type: ignore[arg-type]
    assert done.status is sq.JobStatus.COMPLETED
    await asyncio.sleep(1.5)
    waiting = await queue.get_job(second)  # type: ignore[arg-type]
    assert waiting is not None and waiting.status is sq.JobStatus.PENDING and waiting.attempt == 0


async def test_a_pause_with_an_end_ends_by_itself(queue: sq.SimpleQueue) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.8)
    info = await queue.pause_queue("work", until=soon)
    assert info.paused and info.paused_until == soon
    again = await queue.pause_queue("work", reason="still down", until=soon)
    assert again.paused_at == info.paused_at  # paused since the first pause
    handler = Record()
    queue.register_handler(handler)
    job_id = await queue.insert_job(sq.Job("work", {}))
    await queue.start()
    await asyncio.sleep(0.4)
    assert handler.ran == []
    await eventually(lambda: handler.ran == [job_id], timeout=5)
    [listed] = await queue.list_queues()
    assert listed.name == "work" and not listed.paused


async def test_a_pause_that_would_end_at_once_is_refused(queue: sq.SimpleQueue, dsn: str) -> None:
    await queue.pause_queue("work", reason="down")
    with pytest.raises(sq.InvalidArgumentError, match="not in the future"):
        await queue.pause_queue("work", until=datetime.now(UTC) - timedelta(seconds=1))
    [info] = await queue.list_queues()
    assert info.paused and info.pause_reason == "down"  # the pause under way is untouched
    query(dsn, "UPDATE simplequeue.queues SET paused_until = now() - interval '1 second'")
    assert await queue.resume_queue("work") is False  # it had ended by itself


async def test_drain_leaves_a_paused_queue_alone(queue: sq.SimpleQueue) -> None:
    queue.register_handler(Record())
    await queue.pause_queue("work")
    await queue.insert_job(sq.Job("work", {}))
    assert await queue.drain(timeout=10) == {}


async def test_pause_and_resume_refuse_bad_input_and_change_nothing(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    for bad in ("", None, 3, "x" * 5000, "a\x00b"):
        with pytest.raises(sq.InvalidArgumentError):
            await queue.pause_queue(bad)  # type: ignore[arg-type]
    with pytest.raises(sq.InvalidArgumentError, match="naive"):
        await queue.pause_queue("q", until=datetime(2031, 1, 1))
    with pytest.raises(sq.InvalidArgumentError, match="reason"):
        await queue.pause_queue("q", reason="\x00")
    with pytest.raises(sq.InvalidArgumentError, match="by"):
        await queue.pause_queue("q", by="x" * 2000)
    with pytest.raises(sq.InvalidArgumentError):
        await queue.resume_queue("")
    assert count(dsn, table="queues") == 0
    assert await queue.resume_queue("never-seen") is False


async def test_hostile_queue_names_are_stored_as_they_are(queue: sq.SimpleQueue) -> None:
    name = "q'; DROP TABLE jobs; --\n<script>"
    await queue.pause_queue(name, reason="<b>x</b>")
    assert await queue.resume_queue(name) is True
    [info] = await queue.list_queues()
    assert info.name == name and not info.paused


async def test_workers_are_rows_with_what_they_run(dsn: str) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    class Slow(sq.Handler):
        QUEUE = "slow"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            started.set()
            await release.wait()

    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Slow())
        queue.register_handler(Record())
        await queue.start()
        [worker] = await eventually(queue.list_workers)
        assert worker.id == queue.worker_id
        assert (worker.host, worker.pid) == (socket.gethostname(), os.getpid())
        assert worker.queues == ("slow", "work") and worker.alive and worker.stopping_at is None
        assert worker.version == sq.fleet.library_version()
        job_id = await queue.insert_job(sq.Job("slow", {}))
        await asyncio.wait_for(started.wait(), 5)
        [running] = await queue.list_jobs(worker=queue.worker_id, status="running")
        assert running.id == job_id and running.worker_id == queue.worker_id
        assert (await queue.list_workers())[0].running == 1
        declared = {q.name: q for q in await queue.list_queues()}
        assert set(declared) == {"slow", "work"} and declared["slow"].workers == 1
        release.set()
        await queue.stop()
        assert await queue.list_workers() == []  # a stopped worker removes its row
        job = await queue.get_job(job_id)  # type: ignore[arg-type]
        assert job is not None and job.worker_id == queue.worker_id


async def test_a_dead_worker_shows_as_gone_and_is_forgotten(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    gone = uuid.uuid4()
    query(
        dsn,
        "INSERT INTO simplequeue.workers (id, host, pid, version, queues, heartbeat_at, expires_at)"
        " VALUES (%s, 'h', 1, 'v', '{q}', now() - interval '2 hours',"
        " now() - interval '2 hours'), (%s, 'h', 2, 'v', '{q}', now() - interval '1 minute',"
        " now() - interval '1 minute')",
        [gone, uuid.uuid4()],
    )
    workers = await queue.list_workers()
    assert [w.alive for w in workers] == [False, False]
    report = await queue.reap()
    assert report.forgotten_workers == 1
    assert gone not in {w.id for w in await queue.list_workers()}


async def test_each_failed_attempt_keeps_its_error(queue: sq.SimpleQueue) -> None:
    class Flaky(sq.Handler):
        QUEUE = "flaky"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            if job.attempt < 3:
                raise RuntimeError(f"boom {job.attempt} <script>")

    queue.register_handler(Flaky())
    job_id = await queue.insert_job(sq.Job("flaky", {}, max_attempts=3))
    assert (await queue.drain(timeout=10)) == {"pending": 2, "completed": 1}
    job = await queue.get_job(job_id)  # type: ignore[arg-type]
    assert job is not None and job.status is sq.JobStatus.COMPLETED
    assert [(e.attempt, e.status) for e in job.errors] == [(1, "pending"), (2, "pending")]
    assert "boom 1 <script>" in job.errors[0].error and "boom 2" in job.errors[1].error
    assert {e.worker_id for e in job.errors} == {queue.worker_id}
    assert job.errors[0].at <= job.errors[1].at
    assert job.to_dict()["errors"][1]["attempt"] == 2
    await queue.run_janitor()
    archived = await queue.get_job(job_id)  # type: ignore[arg-type]
    assert archived is not None and len(archived.errors) == 2  # kept in the archive


async def test_the_final_failure_and_a_reaped_run_are_in_the_history(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    class Fails(sq.Handler):
        QUEUE = "fails"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            raise ValueError("nope")

    queue.register_handler(Fails())
    job_id = await queue.insert_job(sq.Job("fails", {}, max_attempts=1))
    await queue.drain(timeout=10)
    job = await queue.get_job(job_id)  # type: ignore[arg-type]
    assert job is not None and [(e.attempt, e.status) for e in job.errors] == [(1, "failed")]

    stalled = await queue.insert_job(sq.Job("other", {}))
    query(
        dsn,
        "UPDATE simplequeue.jobs SET status = 'running', attempt = 1, lease = 1,"
        " heartbeat_at = now() - interval '1 hour', worker_id = %s WHERE id = %s",
        [uuid.UUID(int=7), stalled],
    )
    await queue.reap()
    job = await queue.get_job(stalled)  # type: ignore[arg-type]
    assert job is not None and job.status is sq.JobStatus.PENDING
    [error] = job.errors
    assert "stalled" in error.error and error.worker_id == uuid.UUID(int=7)


async def test_the_history_keeps_the_newest_errors_only(queue: sq.SimpleQueue, dsn: str) -> None:
    class Fails(sq.Handler):
        QUEUE = "fails"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            raise ValueError(f"attempt {job.attempt}")

    queue.register_handler(Fails())
    most = sq.job.MAX_ATTEMPT_ERRORS
    job_id = await queue.insert_job(sq.Job("fails", {}, max_attempts=most + 5))
    await queue.drain(timeout=30)
    job = await queue.get_job(job_id)  # type: ignore[arg-type]
    assert job is not None and len(job.errors) == most
    assert [e.attempt for e in job.errors] == list(range(6, most + 6))


async def test_an_insert_into_an_undeclared_queue_warns_once(
    queue: sq.SimpleQueue, caplog: pytest.LogCaptureFixture
) -> None:
    await queue.declare_queues(["emails"])
    with caplog.at_level(logging.WARNING, logger="simplequeue"):
        await queue.insert_job(sq.Job("emails", {}))
        await queue.insert_job(sq.Job("emial", {}))
        await queue.insert_jobs([sq.Job("emial", {}), sq.Job("emails", {})])
    warned = [r.getMessage() for r in caplog.records if "never declared" in r.getMessage()]
    assert len(warned) == 1 and "'emial'" in warned[0]


async def test_strict_queues_refuse_an_undeclared_queue_and_write_nothing(dsn: str) -> None:
    async with sq.SimpleQueue.from_url(dsn, strict_queues=True) as queue:
        with pytest.raises(sq.UnknownQueueError, match="emial"):
            await queue.insert_jobs([sq.Job("emails", {}), sq.Job("emial", {})])
        assert count(dsn) == 0
        # in the caller's transaction: refused, and the transaction goes on
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await conn.execute("CREATE TABLE mine (x int)")
            with pytest.raises(sq.UnknownQueueError):
                await queue.insert_job(sq.Job("emial", {}), conn=conn)
            await conn.execute("INSERT INTO mine VALUES (1)")
            await conn.commit()
        assert query(dsn, "SELECT x FROM mine") == [(1,)] and count(dsn) == 0
        await queue.pause_queue("emial")  # an operator's pause declares it
        assert await queue.insert_job(sq.Job("emial", {})) is not None


async def test_retry_runs_a_pending_job_now_and_a_dead_one_again(queue: sq.SimpleQueue) -> None:
    later = await queue.insert_job(sq.Job("q", {}, run_at=datetime.now(UTC) + timedelta(days=1)))
    assert await queue.retry_job(later) is True  # type: ignore[arg-type]
    job = await queue.get_job(later)  # type: ignore[arg-type]
    assert job is not None and job.run_at <= datetime.now(UTC)
    dead = await queue.insert_job(sq.Job("q", {}))
    await queue.cancel_job(dead)  # type: ignore[arg-type]
    await queue.run_janitor()
    assert await queue.retry_job(dead) is True  # type: ignore[arg-type]
    job = await queue.get_job(dead)  # type: ignore[arg-type]
    assert job is not None and job.status is sq.JobStatus.PENDING and job.attempt == 0
    assert await queue.retry_job(uuid.uuid4()) is False
    with pytest.raises(sq.InvalidArgumentError, match="not a job id"):
        await queue.retry_job("nope")


async def _dead_jobs(
    queue: sq.SimpleQueue, n: int, queue_name: str, **job: object
) -> list[uuid.UUID]:
    ids = [
        i
        for i in await queue.insert_jobs([sq.Job(queue_name, {"i": i}, **job) for i in range(n)])
        if i
    ]  # type: ignore[arg-type]
    for job_id in ids:
        await queue.cancel_job(job_id)
    return ids


async def test_dlq_in_bulk_by_queue_status_and_age(queue: sq.SimpleQueue, dsn: str) -> None:
    hooks = await _dead_jobs(queue, 3, "hooks")
    await _dead_jobs(queue, 2, "mail")
    await queue.run_janitor()  # into the DLQ
    await _dead_jobs(queue, 1, "hooks")  # still in jobs
    assert await queue.count_dlq() == 6
    assert await queue.count_dlq("hooks") == 4
    assert await queue.count_dlq("hooks", status="failed") == 0
    assert await queue.count_dlq(before=datetime.now(UTC) - timedelta(hours=1)) == 0
    assert [j.queue for j in await queue.list_dlq(status=["cancelled"], limit=10)].count(
        "hooks"
    ) == 4
    assert await queue.requeue_dlq("hooks", limit=2) == 2
    assert await queue.requeue_dlq("hooks") == 2
    assert await queue.count_dlq("hooks") == 0
    assert count(dsn, "status = 'pending' AND queue = 'hooks'") == 4
    assert (await queue.get_job(hooks[0])).status is sq.JobStatus.PENDING  # type: ignore[union-attr]
    assert await queue.purge_dlq("mail") == 2
    assert await queue.count_dlq() == 0 and count(dsn, table="dlq") == 0


async def test_a_bulk_requeue_leaves_a_job_whose_key_is_live(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    first = await _dead_jobs(queue, 1, "q", unique_key="k")
    second = await _dead_jobs(queue, 1, "q", unique_key="k")
    await queue.run_janitor()
    assert await queue.requeue_dlq() == 1  # one of the two may hold the key
    [kept] = await queue.list_dlq()
    assert kept.id == second[0] and count(dsn, f"id = '{first[0]}' AND status = 'pending'") == 1
    assert count(dsn, "status = 'pending'") == 1 and count(dsn, table="dlq") == 1
    live = await queue.insert_job(sq.Job("q", {}, unique_key="k"))
    assert live is None


async def test_dlq_bulk_refuses_bad_filters_and_changes_nothing(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    await _dead_jobs(queue, 2, "q")
    for call in (queue.requeue_dlq, queue.purge_dlq, queue.count_dlq):
        with pytest.raises(sq.InvalidArgumentError, match="status"):
            await call(status="pending")  # not a dead status
        with pytest.raises(sq.InvalidArgumentError, match="status"):
            await call(status="nonsense")
        with pytest.raises(sq.InvalidArgumentError, match="naive"):
            await call(before=datetime(2030, 1, 1))
    with pytest.raises(sq.InvalidArgumentError, match="limit"):
        await queue.purge_dlq(limit=0)
    assert count(dsn, "status = 'cancelled'") == 2
    assert await queue.purge_dlq_job(uuid.uuid4()) is False
    [dead] = await queue.list_dlq(limit=1)
    assert await queue.purge_dlq_job(dead.id) is True and count(dsn) == 1


async def test_list_jobs_filters(queue: sq.SimpleQueue) -> None:
    before = datetime.now(UTC)
    await asyncio.sleep(0.01)
    a, b, c = await queue.insert_jobs(
        [
            sq.Job("q", {}, unique_key="k1", fingerprint="f"),
            sq.Job("q", {}, fingerprint="f"),
            sq.Job("r", {}),
        ]
    )
    assert [j.id for j in await queue.list_jobs(unique_key="k1")] == [a]
    assert [j.id for j in await queue.list_jobs(fingerprint="f")] == [a, b]
    assert [j.id for j in await queue.list_jobs(since=before)] == [a, b, c]
    assert await queue.list_jobs(since=datetime.now(UTC) + timedelta(seconds=5)) == []
    assert await queue.list_jobs(worker=uuid.uuid4()) == []
    with pytest.raises(sq.InvalidArgumentError, match="worker id"):
        await queue.list_jobs(worker="w")
    with pytest.raises(sq.InvalidArgumentError, match="naive"):
        await queue.list_jobs(since=datetime(2020, 1, 1))


async def test_summaries_show_paused_retrying_and_declared_queues(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    await queue.declare_queues(["idle"])
    await queue.pause_queue("hooks")
    await queue.insert_job(sq.Job("hooks", {}))
    query(dsn, "UPDATE simplequeue.jobs SET attempt = 1")
    summaries = {s.queue: s for s in await queue.queue_summaries()}
    assert set(summaries) == {"idle", "hooks"}
    assert summaries["hooks"].paused and summaries["hooks"].retrying == 1
    assert not summaries["idle"].paused and summaries["idle"].due == 0


def test_the_sync_facade_steers_queues_too(dsn: str) -> None:
    with sq.SyncQueue.from_url(dsn) as queue:
        info = queue.pause_queue("q", by="me")
        assert info.paused and [q.name for q in queue.list_queues()] == ["q"]
        assert queue.resume_queue("q") is True
        queue.declare_queues(["r"])
        assert queue.list_workers() == []
        job_id = queue.insert_job(sq.Job("q", {}))
        assert queue.retry_job(job_id) is True  # type: ignore[arg-type]
        queue.cancel_job(job_id)  # type: ignore[arg-type]
        assert queue.count_dlq("q") == 1
        assert [j.id for j in queue.list_dlq(status="cancelled")] == [job_id]
        assert queue.requeue_dlq("q") == 1
        queue.cancel_job(job_id)  # type: ignore[arg-type]
        assert queue.purge_dlq(status=["cancelled"]) == 1
        assert queue.purge_dlq_job(job_id) is False
        assert [j.id for j in queue.list_jobs(fingerprint="none")] == []


async def test_unreadable_attempt_history_never_stops_a_claim(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    handler = Record()
    queue.register_handler(handler)
    ids = await queue.insert_jobs([sq.Job("work", {}) for _ in range(3)])
    for value in ("[1, 2]", '[{"at": "yesterday"}, {"x": 1}]', '["abc"]'):
        query(dsn, "UPDATE simplequeue.jobs SET errors = %s::jsonb WHERE id = %s", [value, ids[1]])
        job = await queue.get_job(ids[1])  # type: ignore[arg-type]
        assert job is not None and job.errors == ()
    with pytest.raises(psycopg.errors.CheckViolation):
        query(dsn, "UPDATE simplequeue.jobs SET errors = '{\"x\": 1}' WHERE id = %s", [ids[1]])
    assert (await queue.drain(timeout=10)) == {"completed": 3}
    assert sorted(handler.ran) == sorted(ids)  # type: ignore[type-var]
    [listed] = await queue.list_jobs(unique_key=None, limit=1, after=ids[0])
    assert listed.id == ids[1]


async def test_a_refused_worker_row_is_written_again_later(dsn: str) -> None:
    query(
        dsn,
        "CREATE TABLE refuse (on_ boolean); INSERT INTO refuse VALUES (false);"
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF (SELECT on_ FROM refuse) THEN RAISE EXCEPTION 'read-only for a while'; END IF;"
        " RETURN NEW; END $$;"
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON simplequeue.workers"
        " FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(Record())
        await queue.start()
        await eventually(queue.list_workers)
        query(dsn, "UPDATE refuse SET on_ = true")
        await eventually(
            lambda: (
                not query(
                    dsn,
                    "SELECT 1 FROM simplequeue.workers"
                    " WHERE heartbeat_at > now() - interval '0.5 s'",
                )
            )
        )
        query(dsn, "UPDATE refuse SET on_ = false")
        await eventually(
            lambda: query(
                dsn,
                "SELECT 1 FROM simplequeue.workers WHERE heartbeat_at > now() - interval '0.3 s'",
            )
        )
        [worker] = await queue.list_workers()
        assert worker.alive


async def test_a_handler_registered_after_start_is_declared(queue: sq.SimpleQueue) -> None:
    queue.register_handler(Record())
    await queue.start()

    class Late(sq.Handler):
        QUEUE = "late"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            return None

    queue.register_handler(Late())

    async def declared() -> bool:
        workers = await queue.list_workers()
        names = {q.name for q in await queue.list_queues()}
        return bool(workers) and workers[0].queues == ("late", "work") and "late" in names

    for _ in range(100):
        if await declared():
            break
        await asyncio.sleep(0.05)
    assert await declared()


async def test_a_failed_declare_leaves_the_queue_undeclared(dsn: str) -> None:
    query(
        dsn,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'no'; END $$;"
        "CREATE TRIGGER refuse BEFORE INSERT ON simplequeue.queues"
        " FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    async with sq.SimpleQueue.from_url(dsn, strict_queues=True) as queue:
        with pytest.raises(psycopg.Error):
            await queue.declare_queues(["typo"])
        with pytest.raises(sq.UnknownQueueError):
            await queue.insert_job(sq.Job("typo", {}))
    assert count(dsn) == 0


async def test_a_retried_dead_job_that_was_scheduled_runs_at_once(dsn: str) -> None:
    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "empty_poll_sleep": 30}) as queue:
        handler = Record()
        queue.register_handler(handler)
        job_id = await queue.insert_job(
            sq.Job("work", {}, run_at=datetime.now(UTC) + timedelta(days=1))
        )
        await queue.cancel_job(job_id)  # type: ignore[arg-type]
        await queue.start()
        await queue.ready()
        assert await queue.retry_job(job_id) is True  # type: ignore[arg-type]
        await eventually(lambda: handler.ran == [job_id], timeout=3)


async def test_resume_wakes_the_workers_of_a_queue_named_with_a_newline(dsn: str) -> None:
    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "empty_poll_sleep": 30}) as queue:
        ran: list[uuid.UUID] = []

        class Odd(sq.Handler):
            QUEUE = "odd\nname"

            async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
                ran.append(job.id)

        queue.register_handler(Odd())
        await queue.pause_queue("odd\nname")
        await queue.start()
        await queue.ready()
        job_id = await queue.insert_job(sq.Job("odd\nname", {}))
        await asyncio.sleep(0.3)
        assert ran == []
        await queue.resume_queue("odd\nname")
        await eventually(lambda: ran == [job_id], timeout=3)


async def test_pause_refuses_texts_that_are_not_unicode(queue: sq.SimpleQueue, dsn: str) -> None:
    with pytest.raises(sq.InvalidArgumentError, match="unicode"):
        await queue.pause_queue("q", reason="\ud800")
    with pytest.raises(sq.InvalidArgumentError, match="unicode"):
        await queue.pause_queue("q", by="\udfff")
    assert count(dsn, table="queues") == 0


async def test_a_stopping_worker_says_so_at_once(dsn: str) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    class Slow(sq.Handler):
        QUEUE = "slow"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            started.set()
            await release.wait()

    settings = {**FAST, "heartbeat_interval": 5.0}  # a beat would come only in 5 s
    async with sq.SimpleQueue.from_url(dsn, **settings) as queue:
        queue.register_handler(Slow())
        await queue.start()
        await queue.insert_job(sq.Job("slow", {}))
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.create_task(queue.stop(timeout=10))

        def said_so() -> bool:
            return bool(
                query(dsn, "SELECT 1 FROM simplequeue.workers WHERE stopping_at IS NOT NULL")
            )

        await eventually(said_so, timeout=2)
        release.set()
        await stopping
        assert await queue.list_workers() == []
