"""The helpers of simplequeue.testing on their own: every pending job is checked, and the
expected values are compared as a stored job holds them."""

from __future__ import annotations

from datetime import timedelta

import pydantic
import pytest

import simplequeue as sq
from simplequeue.testing import PAGE, assert_enqueued, assert_enqueued_sync, refute_enqueued


class Email(pydantic.BaseModel):
    to: str


async def test_every_pending_job_is_checked_past_a_page(queue: sq.SimpleQueue) -> None:
    await queue.insert_jobs([sq.Job("mail", {"n": n}) for n in range(PAGE)])
    await queue.insert_job(sq.Job("mail", {"to": "last@example.com"}))
    with pytest.raises(AssertionError, match=r"(?s)expected 0 .* found 1;.*and 9981 more"):
        await refute_enqueued(queue, "mail", {"to": "last@example.com"})
    assert len(await assert_enqueued(queue, "mail", count=PAGE + 1)) == PAGE + 1


async def test_expected_values_are_compared_as_stored(queue: sq.SimpleQueue) -> None:
    job = sq.Job("mail", Email(to="a@example.com"), timeout=timedelta(seconds=5), priority=2)
    await queue.insert_job(job)
    found = await assert_enqueued(
        queue, "mail", Email(to="a@example.com"), timeout=timedelta(seconds=5), priority=2
    )
    assert [j.id for j in found] == [job.id]
    await refute_enqueued(queue, "mail", {"to": "a@example.com"}, priority=3)
    with pytest.raises(TypeError, match="no job attribute unique; match data, or any of"):
        await assert_enqueued(queue, "mail", unique="k")


def test_the_sync_twin(dsn: str) -> None:
    with sq.SyncQueue.from_url(dsn) as queue:
        queue.insert_job(sq.Job("mail", [1, 2], unique_key="k"))
        assert_enqueued_sync(queue, "mail", (1, 2), unique_key="k", count=1)
        with pytest.raises(AssertionError, match="pending in 'mail':\n  \\[1, 2\\] unique_key='k'"):
            assert_enqueued_sync(queue, "mail", [3])
