"""Every way an attempt can end, and the row it leaves behind."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest

import simplequeue as sq
from tests.conftest import count, eventually, query


class Scripted(sq.Handler):
    """Returns whatever the job's data says, so one handler covers every path."""

    QUEUE = "scripted"

    def __init__(self) -> None:
        self.calls: list[sq.Job] = []
        self.threads: list[str] = []

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> Any:
        self.calls.append(job)
        action = job.data["do"]
        in_an_hour = datetime.now(UTC) + timedelta(hours=1)
        if action == "none":
            return None
        if action == "raise":
            raise ValueError("kaput")
        return {
            "success": sq.JobResult.success(),
            "failed": sq.JobResult.failed("nope"),
            "retry_at": sq.JobResult.retry_at(in_an_hour, "later"),
            "reschedule_at": sq.JobResult.reschedule_at(in_an_hour),
            "cancel": sq.JobResult.cancel(),
            "critical": sq.JobResult.critical("fatal"),
            "unprocessable": sq.JobResult.unprocessable("bad input"),
            "value": 42,
            "wrong_type": {1, 2},
        }[action]


async def run_one(queue: sq.SimpleQueue, handler: sq.Handler, data: Any, **job: Any) -> sq.Job:
    queue.register_handler(handler)
    await queue.start()
    job_id = await queue.insert_job(sq.Job(handler.QUEUE, data, **job))
    assert job_id is not None
    return await queue.wait_for_job(job_id, timeout=10)


def row(dsn: str, job_id: Any) -> dict[str, Any]:
    cols = ["status", "attempt", "reprocess_count", "last_error", "run_at", "completed_at"]
    (values,) = query(
        dsn, f"SELECT {', '.join(cols)}, now() FROM simplequeue.jobs WHERE id = %s", [job_id]
    )
    return {**dict(zip(cols, values, strict=False)), "now": values[-1]}


@pytest.mark.parametrize(
    ("action", "status", "error"),
    [
        ("none", "completed", None),
        ("success", "completed", None),
        ("cancel", "cancelled", None),
        ("critical", "critical_failure", "fatal"),
        ("unprocessable", "unprocessable", "bad input"),
    ],
)
async def test_terminal_results(
    queue: sq.SimpleQueue, dsn: str, action: str, status: str, error: str | None
) -> None:
    job = await run_one(queue, Scripted(), {"do": action})
    await eventually(lambda: row(dsn, job.id)["status"] == status)
    stored = row(dsn, job.id)
    assert stored["attempt"] == 1
    assert stored["last_error"] == error
    assert stored["completed_at"] is not None


async def test_failed_retries_after_backoff_then_fails(queue: sq.SimpleQueue, dsn: str) -> None:
    handler = Scripted()
    job = await run_one(queue, handler, {"do": "failed"}, max_attempts=3)
    await eventually(lambda: row(dsn, job.id)["status"] == "failed")
    stored = row(dsn, job.id)
    assert stored["attempt"] == 3
    assert stored["last_error"] == "nope"
    assert len(handler.calls) == 3
    assert [c.attempt for c in handler.calls] == [1, 2, 3]


async def test_failed_waits_for_the_queue_backoff(queue: sq.SimpleQueue, dsn: str) -> None:
    queue.set_queue_backoff("scripted", sq.Fixed(timedelta(minutes=10)))
    job = await run_one(queue, Scripted(), {"do": "failed"})
    stored = row(dsn, job.id)
    assert stored["status"] == "pending" and stored["attempt"] == 1
    assert timedelta(minutes=9) < stored["run_at"] - stored["now"] <= timedelta(minutes=10)


async def test_exception_is_a_failed_attempt_with_its_text(queue: sq.SimpleQueue, dsn: str) -> None:
    job = await run_one(queue, Scripted(), {"do": "raise"}, max_attempts=1)
    await eventually(lambda: row(dsn, job.id)["status"] == "failed")
    assert row(dsn, job.id)["last_error"].startswith("ValueError: kaput (at ")


async def test_retry_at_consumes_the_attempt(queue: sq.SimpleQueue, dsn: str) -> None:
    job = await run_one(queue, Scripted(), {"do": "retry_at"})
    stored = row(dsn, job.id)
    assert (stored["status"], stored["attempt"], stored["reprocess_count"]) == ("pending", 1, 0)
    assert timedelta(minutes=59) < stored["run_at"] - stored["now"] <= timedelta(hours=1)
    assert stored["last_error"] == "later"


async def test_retry_at_is_never_sooner_than_the_backoff(queue: sq.SimpleQueue, dsn: str) -> None:
    queue.set_queue_backoff("scripted", sq.Fixed(timedelta(hours=2)))
    job = await run_one(queue, Scripted(), {"do": "retry_at"})
    stored = row(dsn, job.id)
    assert stored["run_at"] - stored["now"] > timedelta(hours=1, minutes=59)


async def test_reschedule_at_keeps_the_attempt(queue: sq.SimpleQueue, dsn: str) -> None:
    job = await run_one(queue, Scripted(), {"do": "reschedule_at"})
    stored = row(dsn, job.id)
    assert (stored["status"], stored["attempt"], stored["reprocess_count"]) == ("pending", 0, 1)
    assert timedelta(minutes=59) < stored["run_at"] - stored["now"] <= timedelta(hours=1)


async def test_rescheduling_forever_makes_a_bad_job(dsn: str) -> None:
    class Again(sq.Handler):
        QUEUE = "again"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult:
            return sq.JobResult.reschedule_at(datetime.now(UTC))

    async with sq.SimpleQueue.from_url(
        dsn, max_reprocess_count=3, heartbeat_interval=0.2, backoff=sq.Fixed(0)
    ) as queue:
        queue.register_handler(Again())
        await queue.start()
        job_id = await queue.insert_job(sq.Job("again", {}))
        await eventually(lambda: count(dsn, "id = %s AND status = 'bad_job'", [job_id]))
    (stored,) = query(dsn, "SELECT reprocess_count, last_error FROM simplequeue.jobs")
    assert stored[0] == 3 and "poison" in stored[1]


async def test_a_returned_value_is_the_result(queue: sq.SimpleQueue, dsn: str) -> None:
    job = await run_one(queue, Scripted(), {"do": "value"})
    assert job.status is sq.JobStatus.COMPLETED and job.result == 42


async def test_a_value_json_cannot_hold_is_a_failure(queue: sq.SimpleQueue, dsn: str) -> None:
    job = await run_one(queue, Scripted(), {"do": "wrong_type"}, max_attempts=1)
    await eventually(lambda: row(dsn, job.id)["status"] == "failed")
    error = row(dsn, job.id)["last_error"]
    assert "result not stored" in error and "JSON-serialisable" in error and "set" in error


async def test_sync_handler_runs_in_a_thread(queue: sq.SimpleQueue, dsn: str) -> None:
    seen: list[str] = []

    class Blocking(sq.Handler):
        QUEUE = "blocking"

        def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult:
            seen.append(threading.current_thread().name)
            return (
                sq.JobResult.failed("sync says no") if job.data["fail"] else sq.JobResult.success()
            )

    job = await run_one(queue, Blocking(), {"fail": False})
    assert job.status is sq.JobStatus.COMPLETED
    assert seen and seen[0] != threading.main_thread().name
    bad = await queue.insert_job(sq.Job("blocking", {"fail": True}, max_attempts=1))
    await eventually(lambda: row(dsn, bad)["status"] == "failed")
    assert row(dsn, bad)["last_error"] == "sync says no"


class Order(pydantic.BaseModel):
    order_id: int
    email: str


class Typed(sq.Handler):
    QUEUE = "typed"
    Payload = Order

    def __init__(self) -> None:
        self.payloads: list[Any] = []

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        self.payloads.append(job.payload)


async def test_pydantic_payload_is_validated(queue: sq.SimpleQueue, dsn: str) -> None:
    handler = Typed()
    job = await run_one(queue, handler, {"order_id": 7, "email": "a@b.c"})
    assert job.status is sq.JobStatus.COMPLETED
    assert handler.payloads == [Order(order_id=7, email="a@b.c")]


async def test_invalid_payload_ends_unprocessable_without_running(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    handler = Typed()
    job = await run_one(queue, handler, {"order_id": "seven"})
    assert job.status is sq.JobStatus.UNPROCESSABLE
    assert "payload does not validate" in (job.last_error or "")
    assert "order_id" in (job.last_error or "") and "email" in (job.last_error or "")
    assert handler.payloads == []


async def test_handler_timeout_fails_the_attempt(queue: sq.SimpleQueue, dsn: str) -> None:
    class Slow(sq.Handler):
        QUEUE = "slow"
        timeout = 0.2

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            await asyncio.sleep(30)

    job = await run_one(queue, Slow(), {}, max_attempts=1)
    assert job.status is sq.JobStatus.FAILED
    assert job.last_error == "timed out after 0.2s"


async def test_a_job_timeout_overrides_the_handlers(queue: sq.SimpleQueue, dsn: str) -> None:
    class Slowish(sq.Handler):
        QUEUE = "slowish"
        timeout = 30.0

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            await asyncio.sleep(job.data["sleep"])

    queue.register_handler(Slowish())
    await queue.start()
    short = await queue.insert_job(sq.Job("slowish", {"sleep": 30}, timeout=0.2, max_attempts=1))
    roomy = await queue.insert_job(
        sq.Job("slowish", {"sleep": 0.3}, timeout=timedelta(seconds=20), max_attempts=1)
    )
    assert short is not None and roomy is not None
    timed_out = await queue.wait_for_job(short, timeout=10)
    assert timed_out.status is sq.JobStatus.FAILED
    assert timed_out.last_error == "timed out after 0.2s"
    assert timed_out.timeout == 0.2
    finished = await queue.wait_for_job(roomy, timeout=10)
    assert finished.status is sq.JobStatus.COMPLETED
    assert finished.timeout == 20.0


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "10", True, 10**9])
async def test_a_bad_job_timeout_is_refused_before_anything_is_written(
    queue: sq.SimpleQueue, dsn: str, bad: Any
) -> None:
    with pytest.raises(sq.InvalidJobError, match="timeout"):
        sq.Job("q", {}, timeout=bad)
    assert count(dsn) == 0


async def test_a_backoff_that_raises_still_ends_the_attempt(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    def broken(attempt: int) -> float:
        raise RuntimeError("no delay today")

    queue.set_queue_backoff("scripted", sq.Custom(broken))
    job = await run_one(queue, Scripted(), {"do": "raise"}, max_attempts=2)
    assert job.status is sq.JobStatus.PENDING
    assert job.attempt == 1
    assert "kaput" in (job.last_error or "")
    await queue.stop()
    state = row(dsn, job.id)
    assert state["run_at"] > state["now"], "retried after a fallback delay, not at once"


async def test_a_late_result_after_cancel_changes_nothing(queue: sq.SimpleQueue, dsn: str) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    class Waits(sq.Handler):
        QUEUE = "waits"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult:
            started.set()
            await release.wait()
            return sq.JobResult.success()

    queue.register_handler(Waits())
    await queue.start()
    job_id = await queue.insert_job(sq.Job("waits", {}))
    await asyncio.wait_for(started.wait(), 10)
    assert await queue.cancel_job(job_id) is True
    release.set()
    await eventually(lambda: queue.stats().started and queue.stats().running == 0)
    await queue.stop()
    stored = row(dsn, job_id)
    assert stored["status"] == "cancelled"


async def test_a_stored_payload_that_cannot_be_decoded_ends_unprocessable(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    ran: list[Any] = []

    class Any_(sq.Handler):
        QUEUE = "any"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            ran.append(job.data)

    # written by some other client: valid jsonb, but Python refuses ints over 4300 digits
    query(
        dsn,
        "INSERT INTO simplequeue.jobs (id, queue, data) VALUES "
        "(gen_random_uuid(), 'any', ('[' || repeat('9', 5000) || ']')::jsonb), "
        "(gen_random_uuid(), 'any', '\"fine\"')",
    )
    queue.register_handler(Any_())
    await queue.start()
    await eventually(lambda: count(dsn, "status IN ('completed', 'unprocessable')") == 2)
    ((error,),) = query(
        dsn, "SELECT last_error FROM simplequeue.jobs WHERE status = 'unprocessable'"
    )
    assert "stored payload cannot be decoded" in error
    assert ran == ["fine"]


async def test_a_permit_that_fails_to_release_does_not_change_the_outcome(
    queue: sq.SimpleQueue, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The handler's work is done: recording it as failed would run it again (side effects
    # repeated). The broken permit is logged; the job keeps the handler's verdict.
    class BrokenPermit:
        def release(self) -> None:
            raise RuntimeError("permit bookkeeping broke")

    class Hands:
        async def acquire(self, job: sq.Job) -> BrokenPermit:
            return BrokenPermit()

    queue.set_queue_strategy("scripted", Hands())
    handler = Scripted()
    job = await run_one(queue, handler, {"do": "none"}, max_attempts=2)
    await eventually(lambda: row(dsn, job.id)["status"] == "completed")
    assert len(handler.calls) == 1
    assert "failed to release" in caplog.text
