"""`Handler[Model]`: the payload model declared once types the handler's jobs (checked by
mypy --strict in `make lint`) and validates them at run time."""

from __future__ import annotations

from typing import Any, assert_type

from pydantic import BaseModel

import simplequeue as sq
from tests.conftest import FAST


class Email(BaseModel):
    to: str


class SendEmail(sq.Handler[Email]):
    QUEUE = "typed-emails"
    sent: list[str] = []

    async def process(self, queue: sq.SimpleQueue, job: sq.Job[Email]) -> None:
        assert_type(job.payload, Email)
        self.sent.append(job.payload.to.upper())


class Untyped(sq.Handler):
    QUEUE = "untyped"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        assert_type(job.payload, Any)


class Declared(sq.Handler[Email]):
    QUEUE = "declared"

    class Payload(BaseModel):  # declared explicitly: it wins over the type argument
        n: int

    def process(self, queue: sq.BlockingQueue, job: sq.Job[Email]) -> None:
        return None


def test_the_type_argument_is_the_payload_model() -> None:
    assert SendEmail.Payload is Email
    assert Untyped.Payload is None
    assert Declared.Payload is not None and Declared.Payload.__qualname__ == "Declared.Payload"
    job = SendEmail.job({"to": "a@example.com"})
    assert_type(job, sq.Job[Email])
    assert job.payload == Email(to="a@example.com") and job.queue == "typed-emails"


async def test_a_typed_handler_gets_its_model(dsn: str) -> None:
    SendEmail.sent.clear()
    async with sq.SimpleQueue.from_url(dsn, **FAST) as queue:
        queue.register_handler(SendEmail())
        await queue.insert_job(SendEmail.job(Email(to="b@example.com")))
        await queue.insert_job(sq.Job("typed-emails", {"to": 5}))  # not a str: refused
        assert await queue.drain(timeout=30) == {"completed": 1, "unprocessable": 1}
    assert SendEmail.sent == ["B@EXAMPLE.COM"]
