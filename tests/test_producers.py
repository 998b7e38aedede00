"""Typed producers: a handler builds its own jobs, checked in the producer; the live job
behind a deduplicated insert; a job as JSON-ready values."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pydantic
import pytest

import simplequeue as sq
from tests.conftest import count


class Email(pydantic.BaseModel):
    to: str
    subject: str


class SendEmail(sq.Handler):
    QUEUE = "email"
    Payload = Email

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        return None


async def test_a_handler_builds_its_jobs_and_checks_the_payload_in_the_producer(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    job = SendEmail.job({"to": "a@example.com", "subject": "hi"}, priority=5)
    assert (job.queue, job.priority) == ("email", 5)
    assert await queue.insert_job(job) is not None
    model = SendEmail.job(Email(to="b@example.com", subject="yo"), unique_key="b")
    assert await queue.insert_job(model) is not None
    stored = await queue.get_job(model.id)
    assert stored is not None and stored.data == {"to": "b@example.com", "subject": "yo"}
    with pytest.raises(sq.InvalidJobError, match="payload for SendEmail does not validate"):
        SendEmail.job({"to": "c@example.com"})  # no subject
    assert count(dsn) == 2


async def test_the_live_job_behind_a_deduplicated_insert_is_found(
    queue: sq.SimpleQueue,
) -> None:
    first = await queue.insert_job(sq.Job("q", 1, unique_key="order:7"))
    assert await queue.insert_job(sq.Job("q", 2, unique_key="order:7")) is None
    holder = await queue.get_job_by_unique_key("order:7")
    assert holder is not None and holder.id == first and holder.data == 1
    assert await queue.get_job_by_unique_key("order:8") is None
    assert first is not None and await queue.cancel_job(first)
    assert await queue.get_job_by_unique_key("order:7") is None  # no longer live
    with pytest.raises(sq.InvalidArgumentError, match="unique_key"):
        await queue.get_job_by_unique_key("")


async def test_a_job_converts_to_json_ready_values(queue: sq.SimpleQueue) -> None:
    due = datetime.now(UTC) + timedelta(hours=1)
    built = sq.Job("q", {"n": [1, 2.5]}, run_at=due, unique_key="k", timeout=3)
    job_id = await queue.insert_job(built)
    stored = await queue.get_job(job_id)  # type: ignore[arg-type]
    assert stored is not None
    values = json.loads(json.dumps(stored.to_dict()))  # every value is JSON already
    assert values["id"] == str(job_id) and values["status"] == "pending"
    assert values["data"] == {"n": [1, 2.5]} and values["timeout"] == 3
    assert datetime.fromisoformat(values["run_at"]) == due
    assert json.dumps(SendEmail.job({"to": "x", "subject": "y"}).to_dict())


async def test_drain_runs_every_due_job_and_counts_how_each_attempt_ended(
    dsn: str,
) -> None:
    class Work(sq.Handler):
        QUEUE = "work"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> sq.JobResult | None:
            if job.data == "child":
                return None
            if job.data == "parent":
                await queue.insert_job(sq.Job("work", "child"))
                return None
            if job.data == "flaky" and job.attempt == 1:
                return sq.JobResult.failed("once")  # backoff 0: due again at once
            if job.data == "later":
                return sq.JobResult.retry_at(datetime.now(UTC) + timedelta(hours=1))
            if job.data == "bad":
                return sq.JobResult.critical("no")
            return None

    async with sq.SimpleQueue.from_url(dsn, backoff=sq.Fixed(0)) as queue:
        queue.register_handler(Work())
        await queue.insert_jobs(
            [sq.Job("work", d) for d in ("parent", "flaky", "later", "bad", "plain")]
            + [sq.Job("elsewhere", "not handled here")]
        )
        ended = await queue.drain(timeout=30)
        assert not queue.running  # it stopped what it started
        assert ended == {"completed": 4, "pending": 2, "critical_failure": 1}
        assert await queue.drain(timeout=30) == {}  # nothing due: nothing ran
    assert count(dsn, "status = 'completed'") == 4  # parent, child, flaky, plain
    assert count(dsn, "queue = 'elsewhere' AND status = 'pending' AND attempt = 0") == 1
