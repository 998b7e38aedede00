"""simplequeue.testing as a user meets it: a test file of their own, run by pytest in a
fresh process with the plugin loaded by its entry point."""

from __future__ import annotations

import os

import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import SERVER
from tests.test_docs_examples import DOCS, examples

pytest_plugins = ["pytester"]

USER_TESTS = """
import pydantic
import pytest

import simplequeue as sq
from simplequeue.testing import (
    assert_enqueued, assert_enqueued_sync, perform_job, refute_enqueued, refute_enqueued_sync,
)


class Email(pydantic.BaseModel):
    to: str


class SendEmail(sq.Handler[Email]):
    QUEUE = "emails"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job[Email]) -> None:
        if job.payload.to == "bounce@example.com":
            raise ValueError("mailbox full")
        await queue.insert_job(sq.Job("audit", {"sent": job.payload.to}))


@pytest.fixture
def simplequeue_config():
    return {"backoff": sq.Fixed(7)}


@pytest.mark.asyncio
async def test_what_a_producer_enqueued(simplequeue_queue):
    await simplequeue_queue.insert_job(SendEmail.job({"to": "a@example.com"}, priority=3))
    await assert_enqueued(simplequeue_queue, "emails", {"to": "a@example.com"}, priority=3)
    await assert_enqueued(simplequeue_queue, "emails", lambda data: "@" in data["to"], count=1)
    await refute_enqueued(simplequeue_queue, "emails", {"to": "b@example.com"})
    await refute_enqueued(simplequeue_queue, "audit")
    with pytest.raises(AssertionError, match="found 0; pending in 'emails':\\n  {'to': 'a@"):
        await assert_enqueued(simplequeue_queue, "emails", {"to": "nobody"})


@pytest.mark.asyncio
async def test_drain_runs_the_jobs_and_their_follow_ups(simplequeue_queue):
    simplequeue_queue.register_handler(SendEmail())
    await simplequeue_queue.insert_job(SendEmail.job({"to": "a@example.com"}))
    assert await simplequeue_queue.drain(timeout=30) == {"completed": 1}
    await assert_enqueued(simplequeue_queue, "audit", {"sent": "a@example.com"})


@pytest.mark.asyncio
async def test_perform_job_runs_one_attempt(simplequeue_queue):
    simplequeue_queue.register_handler(SendEmail())
    done = await perform_job(simplequeue_queue, SendEmail.job({"to": "a@example.com"}))
    assert done.status is sq.JobStatus.COMPLETED and done.job.attempt == 1
    assert done.job.payload == Email(to="a@example.com")
    failed = await perform_job(simplequeue_queue, SendEmail.job({"to": "bounce@example.com"}))
    assert failed.status is sq.JobStatus.PENDING and failed.delay == 7
    assert "ValueError: mailbox full" in failed.error and failed.attempt_spent
    bad = await perform_job(simplequeue_queue, sq.Job("emails", {"to": 5}))
    assert bad.status is sq.JobStatus.UNPROCESSABLE and "does not validate" in bad.error
    await assert_enqueued(simplequeue_queue, "audit", count=1)  # the completed attempt's
    assert await simplequeue_queue.counts() == {**await simplequeue_queue.counts(), "pending": 1}


def test_a_sync_producer(simplequeue_sync_queue):
    simplequeue_sync_queue.insert_job(sq.Job("emails", {"to": "c@example.com"}, unique_key="c"))
    assert_enqueued_sync(simplequeue_sync_queue, "emails", unique_key="c")
    refute_enqueued_sync(simplequeue_sync_queue, "emails", {"to": "d@example.com"})


def test_each_test_has_its_own_database(simplequeue_sync_queue):
    assert simplequeue_sync_queue.counts()["pending"] == 0
"""


def server_dsn() -> str:
    return make_conninfo(
        host=SERVER["host"], port=SERVER["port"], user=SERVER["user"],
        password=SERVER["password"] or None,
    )  # fmt: skip


@pytest.mark.slow
def test_the_plugin_on_a_server_given_by_dsn(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(
        f"--simplequeue-dsn={server_dsn()}", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=5)


@pytest.mark.slow
def test_the_example_of_the_testing_docs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_docs=examples(DOCS / "testing.md")["tests"])
    result = pytester.runpytest_subprocess(
        f"--simplequeue-dsn={server_dsn()}", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=3)


@pytest.mark.slow
def test_the_plugin_falls_back_to_an_embedded_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No DSN, and no PostgreSQL it may start (as root, pg_ctl refuses): the embedded one."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        pytest.skip("as another user than root, local PostgreSQL binaries would be used")
    monkeypatch.delenv("SIMPLEQUEUE_TEST_DSN", raising=False)
    pytester.makepyfile(
        test_user=USER_TESTS,
        test_where="def test_on_the_embedded_server(simplequeue_server):\n"
        "    assert simplequeue_server.host.startswith('/'), simplequeue_server\n",
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
