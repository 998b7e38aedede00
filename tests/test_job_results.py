"""What a handler returns (the job's result) and what it reports while it runs (its
progress): stored, fenced by the run's lease, read back by every surface, bounded."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import httpx
import pydantic
import pytest

import simplequeue as sq
from simplequeue.cli import main
from simplequeue.testing import perform_job
from simplequeue.web import create_app
from tests.conftest import FAST, count, eventually, query

NESTED = {
    "name": "Zoë 🚀 — 東京",
    "list": [1, 2.5, -3, None, True, False, "x", [], {}],
    "deep": {"a": {"b": {"c": [{"d": "é"}]}}},
    "big": 10**30,
    "float": 1e16,
    "quote": 'a "quoted" \\ backslash\n\ttab',
}


class Returns(sq.Handler):
    """Returns what the job's data says to: a value, a JobResult, or nothing."""

    QUEUE = "returns"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
        how = job.data["how"]
        if how == "value":
            return job.data["value"]
        if how == "success":
            return sq.JobResult.success(result=job.data["value"])
        if how == "set":
            return {1, 2, 3}
        if how == "big":
            return "x" * job.data["size"]
        if how == "nan":
            return {"n": float("nan")}
        return None


async def run_one(queue: sq.SimpleQueue, handler: sq.Handler, data: Any, **job: Any) -> sq.Job:
    if handler.QUEUE not in queue.handled_queues:
        queue.register_handler(handler)
    if not queue.running:
        await queue.start()
    job_id = await queue.insert_job(sq.Job(handler.QUEUE, data, **job))
    assert job_id is not None
    return await queue.wait_for_job(job_id, timeout=10)


async def finished(queue: sq.SimpleQueue, job_id: uuid.UUID) -> sq.Job:
    """The job once it reached a final state."""

    async def done() -> sq.Job | None:
        job = await queue.get_job(job_id)
        return job if job is not None and not job.status.is_live else None

    found: sq.Job = await eventually(done)
    return found


# -- results -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["value", "success"])
async def test_a_result_is_stored_and_read_back_equal(
    queue: sq.SimpleQueue, dsn: str, how: str
) -> None:
    job = await run_one(queue, Returns(), {"how": how, "value": NESTED})
    assert job.status is sq.JobStatus.COMPLETED
    assert job.result == NESTED  # wait_for_job returns it
    again = await queue.get_job(job.id)
    assert again is not None and again.result == NESTED
    assert again.to_dict()["result"] == NESTED
    (stored,) = query(dsn, "SELECT result FROM simplequeue.jobs WHERE id = %s", [job.id])
    assert stored[0] == NESTED
    (listed,) = await queue.list_jobs("returns")
    assert listed.result == NESTED
    with sq.SyncQueue.from_url(dsn) as sync:
        read = sync.get_job(job.id)
    assert read is not None and read.result == NESTED


@pytest.mark.parametrize("value", [0, "", [], False, "text", 3.5])
async def test_falsy_and_scalar_values_are_results_too(queue: sq.SimpleQueue, value: Any) -> None:
    job = await run_one(queue, Returns(), {"how": "value", "value": value})
    assert job.status is sq.JobStatus.COMPLETED
    assert job.result == value and type(job.result) is type(value)


async def test_no_result_leaves_none(queue: sq.SimpleQueue, dsn: str) -> None:
    nothing = await run_one(queue, Returns(), {"how": "none"})
    empty = await run_one(queue, Returns(), {"how": "success", "value": None})
    for job in (nothing, empty):
        assert job.status is sq.JobStatus.COMPLETED and job.result is None
    assert count(dsn, "result IS NULL AND status = 'completed'") == 2


async def test_a_pydantic_model_is_stored_as_its_json(queue: sq.SimpleQueue) -> None:
    class Receipt(pydantic.BaseModel):
        order: int
        total: float

    class Bills(sq.Handler):
        QUEUE = "bills"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Receipt:
            return Receipt(order=7, total=12.5)

    job = await run_one(queue, Bills(), {})
    assert job.result == {"order": 7, "total": 12.5}


async def test_results_of_one_batch_land_on_their_own_jobs(
    dsn: str,
) -> None:
    """Many results written together (with plain completions among them): each job gets
    its own."""
    async with sq.SimpleQueue.from_url(dsn, **{**FAST, "result_flush_interval": 0.05}) as q:
        q.register_handler(Returns())
        jobs = [
            sq.Job("returns", {"how": "value", "value": {"i": i}} if i % 3 else {"how": "none"})
            for i in range(60)
        ]
        await q.insert_jobs(jobs)
        await q.start()
        await eventually(lambda: count(dsn, "status = 'completed'") == 60)
        for i, job in enumerate(jobs):
            read = await q.get_job(job.id)
            assert read is not None
            assert read.result == ({"i": i} if i % 3 else None)


async def test_the_result_survives_the_archive(queue: sq.SimpleQueue, dsn: str) -> None:
    job = await run_one(queue, Returns(), {"how": "value", "value": NESTED})
    report = await queue.run_janitor()
    assert report.archived == 1
    assert count(dsn, "true", table="archive") == 1 and count(dsn) == 0
    archived = await queue.get_job(job.id)
    assert archived is not None and archived.result == NESTED
    waited = await queue.wait_for_job(job.id, timeout=5)
    assert waited.result == NESTED


async def test_a_result_too_large_fails_the_attempt_and_the_worker_goes_on(dsn: str) -> None:
    async with sq.SimpleQueue.from_url(dsn, **FAST, max_result_bytes=1000) as q:
        big = await run_one(q, Returns(), {"how": "big", "size": 5000}, max_attempts=2)
        failed = await finished(q, big.id)
        assert failed.status is sq.JobStatus.FAILED and failed.attempt == 2  # retried
        assert failed.result is None
        assert failed.last_error is not None
        assert "5002 bytes" in failed.last_error and "max_result_bytes" in failed.last_error
        assert "1000" in failed.last_error
        assert [e.attempt for e in failed.errors] == [1, 2]
        # The limit counts the JSON text: 998 characters and their quotes fit.
        fits = await run_one(q, Returns(), {"how": "big", "size": 998})
        assert fits.status is sq.JobStatus.COMPLETED and fits.result == "x" * 998
        assert q.stats().service_restarts == 0


@pytest.mark.parametrize(("how", "said"), [("set", "set"), ("nan", "NaN")])
async def test_a_result_json_cannot_hold_fails_the_attempt(
    queue: sq.SimpleQueue, how: str, said: str
) -> None:
    job = await run_one(queue, Returns(), {"how": how}, max_attempts=1)
    failed = await finished(queue, job.id)
    assert failed.status is sq.JobStatus.FAILED
    assert failed.last_error is not None
    assert "result not stored" in failed.last_error and said in failed.last_error
    assert failed.result is None
    ok = await run_one(queue, Returns(), {"how": "value", "value": 1})
    assert ok.result == 1


async def test_a_late_result_of_a_lost_run_changes_nothing(queue: sq.SimpleQueue, dsn: str) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    class Slow(sq.Handler):
        QUEUE = "slow"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
            started.set()
            await release.wait()
            return {"late": True}

    queue.register_handler(Slow())
    await queue.start()
    job_id = await queue.insert_job(sq.Job("slow", {}))
    await asyncio.wait_for(started.wait(), 10)
    # Taken over elsewhere: a new lease, a live heartbeat (the reaper leaves it alone).
    query(
        dsn,
        "UPDATE simplequeue.jobs SET lease = lease + 1, heartbeat_at = now() + interval '1 hour'"
        " WHERE id = %s",
        [job_id],
    )
    release.set()
    await eventually(lambda: queue.stats().results_fenced_off >= 1)
    (row,) = query(dsn, "SELECT status, result FROM simplequeue.jobs WHERE id = %s", [job_id])
    assert row == ("running", None)


async def test_perform_job_gives_the_result_and_the_progress(queue: sq.SimpleQueue) -> None:
    class Reports(sq.Handler):
        QUEUE = "reports"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
            assert await job.set_progress({"done": 1}, "one of two")
            return ["ok", 2]

    queue.register_handler(Reports())
    queue.register_handler(Returns())
    performed = await perform_job(queue, sq.Job("reports", {}))
    assert performed.status is sq.JobStatus.COMPLETED and performed.result == ["ok", 2]
    assert performed.job.progress == {"done": 1}
    assert performed.job.progress_message == "one of two"
    performed = await perform_job(queue, sq.Job("returns", {"how": "set"}, max_attempts=1))
    assert performed.status is sq.JobStatus.FAILED and performed.result is None


# -- progress ----------------------------------------------------------------------------


class Stepped(sq.Handler):
    """Reports progress, then waits to be let go (a thread's or a task's event)."""

    QUEUE = "stepped"

    def __init__(self) -> None:
        self.reported: list[bool] = []
        self.reached = threading.Event()
        self.go_on = threading.Event()

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
        self.reported.append(await job.set_progress({"step": 1, "of": 2}, "halfway"))
        self.reached.set()
        await asyncio.to_thread(self.go_on.wait, 10)
        self.reported.append(await job.set_progress({"step": 2, "of": 2}, "done"))
        return "finished"


class SyncStepped(Stepped):
    QUEUE = "sync-stepped"

    def process(self, queue: sq.BlockingQueue, job: sq.Job) -> Any:  # type: ignore[override]
        update = job.set_progress({"step": 1, "of": 2}, "halfway")  # a plain call
        self.reported.append(bool(update))
        self.reached.set()
        self.go_on.wait(10)
        self.reported.append(bool(job.set_progress({"step": 2, "of": 2}, "done")))
        return "finished"


async def wait_for(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)


@pytest.mark.parametrize("handler_class", [Stepped, SyncStepped])
async def test_progress_is_readable_while_the_job_runs_and_after(
    queue: sq.SimpleQueue, dsn: str, handler_class: type[Stepped]
) -> None:
    handler = handler_class()
    queue.register_handler(handler)
    await queue.start()
    job_id = await queue.insert_job(sq.Job(handler.QUEUE, {}))
    assert job_id is not None
    await wait_for(handler.reached)
    running = await queue.get_job(job_id)
    assert running is not None and running.status is sq.JobStatus.RUNNING
    assert running.progress == {"step": 1, "of": 2}
    assert running.progress_message == "halfway"
    assert running.progress_at is not None
    with sq.SyncQueue.from_url(dsn) as sync:
        read = sync.get_job(job_id)
        assert read is not None and read.progress == {"step": 1, "of": 2}
        (listed,) = sync.list_jobs(handler.QUEUE)
        assert listed.progress_message == "halfway"
    handler.go_on.set()
    done = await queue.wait_for_job(job_id, timeout=10)
    assert done.status is sq.JobStatus.COMPLETED and done.result == "finished"
    assert done.progress == {"step": 2, "of": 2} and done.progress_message == "done"
    assert handler.reported == [True, True]
    await queue.run_janitor()
    archived = await queue.get_job(job_id)
    assert archived is not None and archived.progress_message == "done"
    assert count(dsn, "progress_message = 'done'", table="archive") == 1


@pytest.mark.parametrize("handler_class", [Stepped, SyncStepped])
async def test_progress_of_a_lost_run_changes_nothing(
    queue: sq.SimpleQueue, dsn: str, handler_class: type[Stepped]
) -> None:
    handler = handler_class()
    queue.register_handler(handler)
    await queue.start()
    job_id = await queue.insert_job(sq.Job(handler.QUEUE, {}))
    await wait_for(handler.reached)
    query(
        dsn,
        "UPDATE simplequeue.jobs SET lease = lease + 1, heartbeat_at = now() + interval '1 hour'"
        " WHERE id = %s",
        [job_id],
    )
    handler.go_on.set()
    await eventually(lambda: len(handler.reported) == 2)
    assert handler.reported == [True, False]
    (row,) = query(
        dsn,
        "SELECT status, progress, progress_message, result FROM simplequeue.jobs WHERE id = %s",
        [job_id],
    )
    assert row == ("running", {"step": 1, "of": 2}, "halfway", None)


async def test_each_attempt_starts_without_progress(queue: sq.SimpleQueue) -> None:
    seen: list[Any] = []

    class Retried(sq.Handler):
        QUEUE = "retried"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            stored = await queue.get_job(job.id)
            assert stored is not None
            seen.append((stored.progress, stored.progress_message))
            await job.set_progress(job.attempt, f"attempt {job.attempt}")
            if job.attempt == 1:
                raise RuntimeError("once more")

    job = await run_one(queue, Retried(), {})
    done = await finished(queue, job.id)
    assert done.status is sq.JobStatus.COMPLETED
    assert seen == [(None, None), (None, None)]
    assert (done.progress, done.progress_message) == (2, "attempt 2")


async def test_progress_needs_a_running_job_and_a_storable_value(
    dsn: str,
) -> None:
    built = sq.Job("q", {})
    with pytest.raises(sq.QueueStateError, match="not being processed"):
        built.set_progress(1)
    problems: list[str] = []

    class Careless(sq.Handler):
        QUEUE = "careless"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            for value, message in (({1}, None), ("x" * 200, None), (1, 5), (float("inf"), None)):
                with pytest.raises(sq.InvalidArgumentError) as caught:
                    job.set_progress(value, message)  # type: ignore[arg-type]
                problems.append(str(caught.value))
            update = job.set_progress(1)
            with pytest.raises(TypeError, match="await"):
                bool(update)
            assert await update is True
            assert await update is True  # awaited again: the same answer, no second write
            # Odd text is kept as a text column can hold it, bounded.
            assert await job.set_progress(None, "nul\x00 and \ud800 and " + "y" * 5000)

    async with sq.SimpleQueue.from_url(dsn, **FAST, max_progress_bytes=100) as q:
        job = await run_one(q, Careless(), {})
        done = await finished(q, job.id)
        assert done.status is sq.JobStatus.COMPLETED, done.last_error
        read = await q.get_job(job.id)
        assert read is not None
    assert "must be JSON-serialisable" in problems[0] and "progress value" in problems[0]
    assert "202 bytes" in problems[1] and "max_progress_bytes" in problems[1]
    assert "message must be a string" in problems[2]
    assert "NaN and infinities" in problems[3]
    assert read.progress is None
    message = read.progress_message
    assert message is not None and message.startswith("nul\\x00 and \\ud800 and yyy")
    assert len(message) <= 1000 and "more]" in message


# -- the surfaces ------------------------------------------------------------------------


async def test_the_command_line_shows_result_and_progress_safely(
    queue: sq.SimpleQueue,
    dsn: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hostile = {"text": "\x1b[31mred\x1b[0m\nfake: row", "long": "z" * 5000}
    job = await run_one(queue, Returns(), {"how": "value", "value": hostile})
    query(
        dsn,
        "UPDATE simplequeue.jobs SET progress = '{\"p\": 1}', "
        "progress_message = E'half\\x1b[2Jway\\nnext', progress_at = now() WHERE id = %s",
        [job.id],
    )
    monkeypatch.setenv("SIMPLEQUEUE_DSN", dsn)
    monkeypatch.setenv("COLUMNS", "250")
    capsys.readouterr()

    def cli(*args: str) -> str:
        assert main(list(args)) == 0
        return capsys.readouterr().out

    shown = cli("jobs", "show", str(job.id))
    assert "\x1b" not in shown and "\\u001b[31mred" in shown
    assert "--json shows all" in shown and "z" * 5000 not in shown
    assert '{"p": 1}' in shown and "half\\x1b[2Jway\\nnext" in shown
    as_json = json.loads(cli("jobs", "show", str(job.id), "--json"))
    assert as_json["result"] == hostile
    assert as_json["progress"] == {"p": 1} and as_json["progress_message"] == "half\x1b[2Jway\nnext"
    assert as_json["progress_at"] is not None


async def test_the_http_api_serves_result_and_progress(queue: sq.SimpleQueue) -> None:
    handler = Stepped()
    queue.register_handler(handler)
    queue.register_handler(Returns())
    await queue.start()
    app = create_app(queue, admin_tokens=["admin-token-0123456789"])
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": "Bearer admin-token-0123456789"}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers
        ) as client:
            job_id = await queue.insert_job(sq.Job(Stepped.QUEUE, {}))
            await wait_for(handler.reached)
            running = (await client.get(f"/jobs/{job_id}")).json()
            assert running["status"] == "running"
            assert running["progress"] == {"step": 1, "of": 2}
            assert running["progress_message"] == "halfway" and running["progress_at"]
            assert running["result"] is None
            listed = (await client.get("/jobs", params={"queue": Stepped.QUEUE})).json()
            assert listed["jobs"][0]["progress_message"] == "halfway"
            handler.go_on.set()
            await queue.wait_for_job(job_id, timeout=10)
            done = (await client.get(f"/jobs/{job_id}")).json()
            assert done["result"] == "finished" and done["progress_message"] == "done"
            other = await run_one(queue, Returns(), {"how": "value", "value": NESTED})
            assert (await client.get(f"/jobs/{other.id}")).json()["result"] == NESTED
            schema = (await client.get("/openapi.json")).json()
            job_schema = schema["components"]["schemas"]["Job"]["properties"]
            assert {"result", "progress", "progress_message", "progress_at"} <= set(job_schema)
    finally:
        await app.state.events.aclose()


def test_progress_update_reads_as_a_bool_once_written() -> None:
    assert bool(sq.ProgressUpdate(recorded=True)) is True
    assert bool(sq.ProgressUpdate(recorded=False)) is False
    assert "recorded=True" in repr(sq.ProgressUpdate(recorded=True))


async def test_progress_is_an_event_of_the_live_stream(queue: sq.SimpleQueue) -> None:
    from tests.test_web_api import READER, read_events, serving

    handler = Stepped()
    queue.register_handler(handler)
    app = create_app(queue, admin_tokens=["admin-token-0123456789"], read_tokens=[READER])
    async with (
        serving(app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
        c.stream("GET", "/events", params={"queue": Stepped.QUEUE, "token": READER}) as response,
    ):
        job_id = await queue.insert_job(sq.Job(Stepped.QUEUE, {}))
        await queue.start()
        handler.go_on.set()
        events = await asyncio.wait_for(read_events(response, 5), 10)
    await app.state.events.aclose()
    assert [kind for kind, _ in events] == [
        "inserted",
        "started",
        "progress",
        "progress",
        "completed",
    ]
    assert {e["id"] for _, e in events} == {str(job_id)}
