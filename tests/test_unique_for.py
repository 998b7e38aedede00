"""Uniqueness over time (`Job(unique_key=..., unique_for=...)`), on real PostgreSQL: a key
held for good or for a period after its job, claimed by the insert itself (concurrent
inserters, rolled-back transactions, batches, every driver), reported as any duplicate,
released by an operator, and forgotten by the reaper once expired."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest

import simplequeue as sq
from simplequeue.cli import main
from simplequeue.web import create_app
from tests.conftest import count, eventually, query, sqlalchemy_url

HOUR = timedelta(hours=1)


def keys(dsn: str) -> dict[str, tuple[Any, ...]]:
    """The unique_keys rows by key: (job_id, queue, expires_at IS NULL, seconds left)."""
    rows = query(
        dsn,
        "SELECT key, job_id, queue, expires_at IS NULL, "
        "extract(epoch FROM expires_at - now())::float8 FROM simplequeue.unique_keys",
    )
    return {row[0]: row[1:] for row in rows}


def expire(dsn: str, key: str) -> None:
    """The key's period ended a second ago (the database clock decides expiry)."""
    query(
        dsn,
        "UPDATE simplequeue.unique_keys SET expires_at = now() - interval '1 second' "
        "WHERE key = %s",
        [key],
    )


def finish(dsn: str, job_id: uuid.UUID | None, status: str = "completed") -> None:
    query(
        dsn,
        "UPDATE simplequeue.jobs SET status = %s, completed_at = now() WHERE id = %s",
        [status, job_id],
    )


class Send(sq.Handler):
    QUEUE = "mail"

    async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
        return None


# -- forever, a period, what a duplicate looks like --------------------------------------


async def test_forever_holds_the_key_after_the_job_completed_and_was_archived(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    queue.register_handler(Send())
    welcome = sq.Job("mail", {"to": 42}, unique_key="welcome:42", unique_for=sq.FOREVER)
    first = await queue.insert_job(welcome)
    assert first is not None
    assert (
        await queue.insert_job(sq.Job("mail", {}, unique_key="welcome:42", unique_for=sq.FOREVER))
        is None
    )
    assert await queue.drain(timeout=10) == {"completed": 1}
    report = await queue.run_janitor()
    assert report.archived == 1 and count(dsn) == 0
    # completed and archived: the key is still taken, by that job, for good
    assert keys(dsn) == {"welcome:42": (first, "mail", True, None)}
    for later in (
        sq.Job("mail", {}, unique_key="welcome:42", unique_for=sq.FOREVER),
        sq.Job("other", {}, unique_key="welcome:42", unique_for=HOUR),  # any queue, any period
    ):
        assert await queue.insert_job(later) is None
    assert count(dsn) == 0
    # read back from the archive with what it asked
    archived = await queue.get_job(first)
    assert archived is not None and archived.status is sq.JobStatus.COMPLETED
    assert archived.unique_for is sq.FOREVER and archived.unique_key == "welcome:42"
    assert archived.to_dict()["unique_for"] == "forever"
    # a job that asks for nothing over time is refused only by a live job, as before
    assert await queue.insert_job(sq.Job("mail", {}, unique_key="welcome:42")) is not None


async def test_a_period_holds_the_key_until_it_ends_then_frees_it(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    job = sq.Job("reports", {"customer": 7}, unique_key="report:7", unique_for=HOUR)
    first = await queue.insert_job(job)
    assert first is not None and job.unique_for == 3600.0
    ((_, _, forever, left),) = keys(dsn).values()
    assert not forever and 3590 < left <= 3600  # counted from the insert, database clock
    finish(dsn, first)
    assert (
        await queue.insert_job(sq.Job("reports", 2, unique_key="report:7", unique_for=HOUR)) is None
    )
    expire(dsn, "report:7")
    second = await queue.insert_job(sq.Job("reports", 3, unique_key="report:7", unique_for=HOUR))
    assert second is not None
    # the new job holds the key now, for a new period of its own
    held = keys(dsn)["report:7"]
    assert held[0] == second and 3590 < held[3] <= 3600
    assert (
        await queue.insert_job(sq.Job("reports", 4, unique_key="report:7", unique_for=HOUR)) is None
    )
    assert count(dsn, "unique_key = 'report:7'") == 2


async def test_a_one_second_period_on_the_database_clock(queue: sq.SimpleQueue, dsn: str) -> None:
    first = await queue.insert_job(sq.Job("q", 1, unique_key="tick", unique_for=1))
    assert first is not None and await queue.cancel_job(first)  # not live: only the period holds
    assert await queue.insert_job(sq.Job("q", 2, unique_key="tick", unique_for=1)) is None
    (claimed,) = query(dsn, "SELECT claimed_at FROM simplequeue.unique_keys")[0]

    async def inserted() -> uuid.UUID | None:
        return await queue.insert_job(sq.Job("q", 3, unique_key="tick", unique_for=1))

    second = await eventually(inserted, timeout=5, every=0.1)
    (again,) = query(dsn, "SELECT claimed_at FROM simplequeue.unique_keys")[0]
    assert again - claimed >= timedelta(seconds=1)
    assert keys(dsn)["tick"][0] == second


async def test_duplicates_are_reported_as_any_duplicate(queue: sq.SimpleQueue, dsn: str) -> None:
    held = await queue.insert_job(sq.Job("q", 0, unique_key="k", unique_for=HOUR))
    finish(dsn, held, "failed")  # dead, still in the jobs table
    jobs = [
        sq.Job("q", 1, unique_key="k", unique_for=HOUR),
        sq.Job("q", 2),
        sq.Job("q", 3, unique_key="free", unique_for=HOUR),
    ]
    assert await queue.insert_jobs(jobs) == [None, jobs[1].id, jobs[2].id]
    assert await queue.insert_job(sq.Job("q", 4, unique_key="k", unique_for=HOUR)) is None
    # the HTTP API says "deduplicated", as for a live key; its unique_for takes "forever"
    app = create_app(queue, admin_tokens=["admin-token-0123456789"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api",
        headers={"Authorization": "Bearer admin-token-0123456789"},
    ) as client:
        body = {"queue": "q", "data": 5, "unique_key": "k", "unique_for": 60}
        r = await client.post("/jobs", json=body)
        assert r.status_code == 200 and r.json() == {"id": None, "deduplicated": True}
        r = await client.post("/jobs", json={**body, "unique_key": "api", "unique_for": "forever"})
        assert r.status_code == 201, r.text
        stored = (await client.get(f"/jobs/{r.json()['id']}")).json()
        assert stored["unique_for"] == "forever" and stored["unique_key"] == "api"
        for bad in (-1, 0, "soon", True, "FOREVER", 1e300):
            r = await client.post("/jobs", json={**body, "unique_key": "bad", "unique_for": bad})
            assert r.status_code == 400 and "unique_for" in r.json()["error"], bad
        r = await client.post("/jobs", json={"queue": "q", "data": 1, "unique_for": 60})
        assert r.status_code == 400 and "needs a unique_key" in r.json()["error"]
    await app.state.events.aclose()
    assert "bad" not in keys(dsn) and count(dsn, "unique_key = 'bad'") == 0


async def test_the_key_stays_taken_whatever_becomes_of_the_job(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    ids = {}
    for fate in ("cancelled", "dead", "purged", "deleted"):
        ids[fate] = await queue.insert_job(sq.Job("q", fate, unique_key=fate, unique_for=HOUR))
    assert await queue.cancel_job(ids["cancelled"])  # type: ignore[arg-type]
    finish(dsn, ids["dead"], "critical_failure")
    finish(dsn, ids["purged"], "failed")
    await queue.run_janitor()
    assert await queue.purge_dlq_job(ids["purged"])  # type: ignore[arg-type]
    query(dsn, "DELETE FROM simplequeue.jobs WHERE id = %s", [ids["deleted"]])
    for fate in ids:
        assert await queue.insert_job(sq.Job("q", 1, unique_key=fate, unique_for=HOUR)) is None
    assert {k: v[0] for k, v in keys(dsn).items()} == ids
    # a dead job requeued is the same job run again: its key is not claimed anew
    assert await queue.requeue_dlq_job(ids["dead"])  # type: ignore[arg-type]
    assert keys(dsn)["dead"][0] == ids["dead"]


async def test_a_live_job_of_the_key_keeps_it_even_after_its_period(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """The period ended but its job still waits (or a plain job holds the key): no
    second live job, and no key claimed for a job that is not stored."""
    slow = await queue.insert_job(sq.Job("q", 1, unique_key="k", unique_for=1))
    expire(dsn, "k")
    assert await queue.insert_job(sq.Job("q", 2, unique_key="k", unique_for=HOUR)) is None
    assert keys(dsn)["k"][0] == slow
    plain = await queue.insert_job(sq.Job("q", 3, unique_key="p"))
    assert await queue.insert_job(sq.Job("q", 4, unique_key="p", unique_for=HOUR)) is None
    assert "p" not in keys(dsn)
    finish(dsn, plain)
    assert await queue.insert_job(sq.Job("q", 5, unique_key="p", unique_for=HOUR)) is not None


# -- the insert claims the key: concurrency, transactions, batches ------------------------


@pytest.mark.parametrize("expired", [False, True])
async def test_many_concurrent_inserters_store_one_job(dsn: str, expired: bool) -> None:
    if expired:  # a key whose period ended: all of them race to take it over
        async with sq.SimpleQueue.from_url(dsn) as q:
            old = await q.insert_job(sq.Job("q", "old", unique_key="same", unique_for=1))
        finish(dsn, old)
        expire(dsn, "same")
    queues = [sq.SimpleQueue.from_url(dsn, pool_min_size=1, pool_max_size=1) for _ in range(16)]
    for q in queues:
        await q.__aenter__()
    winners: list[list[uuid.UUID]] = []
    try:
        for _ in range(3):  # and again, once the first round's winner holds it
            results = await asyncio.gather(
                *(
                    (
                        q.insert_job(sq.Job("q", i, unique_key="same", unique_for=HOUR))
                        if i % 2
                        else q.insert_jobs(
                            [
                                sq.Job("q", i, unique_key="same", unique_for=HOUR),
                                sq.Job("q", -i, unique_key=f"own:{i}", unique_for=HOUR),
                            ]
                        )
                    )
                    for i, q in enumerate(queues)
                )
            )
            firsts = [r[0] if isinstance(r, list) else r for r in results]
            winners.append([r for r in firsts if r is not None])
    finally:
        for q in queues:
            await q.__aexit__(None, None, None)
    assert [len(won) for won in winners] == [1, 0, 0]
    assert count(dsn, "unique_key = 'same' AND status = 'pending'") == 1
    assert keys(dsn)["same"][0] == winners[0][0]
    assert count(dsn, "unique_key LIKE 'own:%%'") == 8


async def test_inserters_waiting_on_a_transaction_that_rolls_back(dsn: str) -> None:
    """One transaction holds the key, uncommitted; twelve inserters wait on it. It rolls
    back: the key was never taken, and exactly one of the twelve takes it."""
    async with (
        sq.SimpleQueue.from_url(dsn) as owner,
        await psycopg.AsyncConnection.connect(dsn) as holder,
    ):
        tx = await owner.insert_job(
            sq.Job("q", "tx", unique_key="same", unique_for=sq.FOREVER), conn=holder
        )
        assert tx is not None
        queues = [sq.SimpleQueue.from_url(dsn, pool_min_size=1, pool_max_size=1) for _ in range(12)]
        for q in queues:
            await q.__aenter__()
        try:
            waiting = [
                asyncio.ensure_future(
                    q.insert_job(sq.Job("q", i, unique_key="same", unique_for=sq.FOREVER))
                )
                for i, q in enumerate(queues)
            ]
            await eventually(
                lambda: (
                    query(
                        dsn,
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    )[0][0]
                    == 12
                )
            )
            assert not any(w.done() for w in waiting)
            await holder.rollback()
            results = await asyncio.gather(*waiting)
        finally:
            for q in queues:
                await q.__aexit__(None, None, None)
    won = [r for r in results if r is not None]
    assert len(won) == 1
    assert count(dsn) == 1 and count(dsn, "id = %s", [tx]) == 0
    assert keys(dsn)["same"][0] == won[0]


async def test_a_rolled_back_transaction_leaves_neither_job_nor_key(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction(force_rollback=True):
            one = await queue.insert_job(sq.Job("q", 1, unique_key="a", unique_for=HOUR), conn=conn)
            many = await queue.insert_jobs(
                [sq.Job("q", n, unique_key=f"b{n}", unique_for=sq.FOREVER) for n in range(3)],
                conn=conn,
            )
            assert one is not None and all(many)
        assert count(dsn) == 0 and keys(dsn) == {}
        # in the caller's transaction, the period counts from the insert, not its start
        async with conn.transaction():
            await conn.execute("SELECT pg_sleep(0.3)")
            assert await queue.insert_job(
                sq.Job("q", 1, unique_key="a", unique_for=HOUR), conn=conn
            )
            cur = await conn.execute(
                "SELECT claimed_at - now() FROM simplequeue.unique_keys WHERE key = 'a'"
            )
            assert (await cur.fetchone())[0] >= timedelta(seconds=0.3)  # type: ignore[index]
    assert count(dsn) == 1 and set(keys(dsn)) == {"a"}


async def test_a_batch_gives_each_key_to_its_first_job(queue: sq.SimpleQueue, dsn: str) -> None:
    later = sq.Job("q", "built first, listed second", unique_key="k", unique_for=HOUR)
    first = sq.Job("q", "listed first", unique_key="k", unique_for=HOUR)
    plain_first = sq.Job("q", "plain first", unique_key="m")
    over_time = sq.Job("q", "after a plain one", unique_key="m", unique_for=HOUR)
    jobs = [
        first,
        later,
        sq.Job("q", "other key", unique_key="n", unique_for=sq.FOREVER),
        sq.Job("q", "no key"),
        plain_first,
        over_time,
        sq.Job("q", "again", unique_key="n", unique_for=sq.FOREVER),
    ]
    ids = await queue.insert_jobs(jobs)
    assert ids == [first.id, None, jobs[2].id, jobs[3].id, plain_first.id, None, None]
    assert {k: v[0] for k, v in keys(dsn).items()} == {"k": first.id, "n": jobs[2].id}
    assert count(dsn) == 4
    # the same rule for a key of live jobs only: the first listed, not the first built
    built_first, listed_first = sq.Job("q", "b", unique_key="p"), sq.Job("q", "a", unique_key="p")
    assert await queue.insert_jobs([listed_first, built_first]) == [listed_first.id, None]


async def test_a_large_batch_with_keys_over_time_takes_the_insert(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    jobs = [sq.Job("q", n, unique_key=f"k{n % 400}", unique_for=HOUR) for n in range(800)]
    ids = await queue.insert_jobs(jobs)
    assert ids == [j.id for j in jobs[:400]] + [None] * 400
    assert count(dsn) == 400 and len(keys(dsn)) == 400
    again = await queue.insert_jobs([sq.Job("q", n) for n in range(600)])  # COPY, unchanged
    assert all(again) and count(dsn) == 1000


async def test_a_retry_finds_what_its_first_try_stored(queue: sq.SimpleQueue, dsn: str) -> None:
    """A commit lost on the way back: inserting the same objects again is a retry. A job
    gone from every table (purged) whose key it still holds counts as stored too."""
    kept = sq.Job("q", "kept", unique_key="kept", unique_for=HOUR)
    gone = sq.Job("q", "gone", unique_key="gone", unique_for=sq.FOREVER)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        assert await queue.insert_jobs([kept, gone], conn=conn) == [kept.id, gone.id]
        await conn.commit()
    query(dsn, "DELETE FROM simplequeue.jobs WHERE id = %s", [gone.id])
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        assert await queue.insert_jobs([kept, gone], conn=conn) == [kept.id, gone.id]
        await conn.commit()
    assert count(dsn) == 1 and {k: v[0] for k, v in keys(dsn).items()} == {
        "kept": kept.id,
        "gone": gone.id,
    }


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "more than zero"),
        (0, "more than zero"),
        (timedelta(0), "more than zero"),
        (timedelta(seconds=-5), "more than zero"),
        (1e-9, "1 microsecond or more"),
        (10**12, "at most a century"),
        (timedelta(days=365 * 200), "at most a century"),
        (float("inf"), "simplequeue.FOREVER"),
        (float("-inf"), "more than zero"),
        (float("nan"), "finite"),
        ("1h", "simplequeue.FOREVER"),
        ("forever", "simplequeue.FOREVER"),
        (True, "simplequeue.FOREVER"),
        ([1], "simplequeue.FOREVER"),
        (2**2000, "at most a century"),
    ],
)
def test_bad_periods_are_refused_when_built(value: Any, message: str) -> None:
    with pytest.raises(sq.InvalidJobError, match=message):
        sq.Job("q", {}, unique_key="k", unique_for=value)


def test_a_period_needs_a_key() -> None:
    with pytest.raises(sq.InvalidJobError, match="unique_for needs a unique_key"):
        sq.Job("q", {}, unique_for=HOUR)
    with pytest.raises(ValueError, match="unique_for needs a unique_key"):  # a ValueError too
        sq.Job("q", {}, unique_for=sq.FOREVER)


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("unique_for", -1, "more than zero"),
        ("unique_for", "1h", "simplequeue.FOREVER"),
        ("unique_key", None, "needs a unique_key"),
    ],
)
async def test_bad_input_changes_nothing(
    queue: sq.SimpleQueue, dsn: str, attribute: str, value: Any, message: str
) -> None:
    bad = sq.Job("q", "bad", unique_key="bad", unique_for=HOUR)
    setattr(bad, attribute, value)  # changed after building: checked again at the insert
    good = sq.Job("q", "good", unique_key="good", unique_for=HOUR)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        for insert in (queue.insert_job(bad, conn=conn), queue.insert_jobs([good, bad], conn=conn)):
            with pytest.raises(sq.InvalidJobError, match=message):
                await insert
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # untouched
    with sq.SyncQueue.from_url(dsn) as sync, pytest.raises(sq.InvalidJobError, match=message):
        sync.insert_jobs([good, bad])
    assert count(dsn) == 0 and keys(dsn) == {}
    for key in ("", None, 5, "k" * 2000, "\x00"):
        with pytest.raises(sq.InvalidArgumentError):
            await queue.release_unique_key(key)  # type: ignore[arg-type]


# -- an operator frees a key; the reaper forgets expired ones ------------------------------


async def test_release_unique_key(queue: sq.SimpleQueue, dsn: str) -> None:
    done = await queue.insert_job(sq.Job("q", 1, unique_key="once", unique_for=sq.FOREVER))
    finish(dsn, done)
    assert await queue.release_unique_key("once") is True
    assert keys(dsn) == {}
    again = await queue.insert_job(sq.Job("q", 2, unique_key="once", unique_for=sq.FOREVER))
    assert again is not None
    assert await queue.release_unique_key("never taken") is False
    # released while its job is live: the live job still holds the key
    assert await queue.release_unique_key("once") is True
    assert await queue.insert_job(sq.Job("q", 3, unique_key="once", unique_for=HOUR)) is None
    # a key whose period ended is no longer held: False (and its row goes)
    done = await queue.insert_job(sq.Job("q", 4, unique_key="spent", unique_for=HOUR))
    finish(dsn, done)
    expire(dsn, "spent")
    assert await queue.release_unique_key("spent") is False
    assert "spent" not in keys(dsn)


def test_release_from_the_command_line(
    dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIMPLEQUEUE_DSN", dsn)
    with sq.SyncQueue.from_url(dsn) as sync:
        sync.insert_job(sq.Job("q", 1, unique_key="cli", unique_for=sq.FOREVER))
    capsys.readouterr()
    assert main(["jobs", "release-key", "cli"]) == 0
    assert "released unique key cli" in capsys.readouterr().out
    assert main(["jobs", "release-key", "cli"]) == 1
    assert "is not held over time" in capsys.readouterr().err
    assert keys(dsn) == {}


async def test_release_over_http(queue: sq.SimpleQueue, dsn: str) -> None:
    await queue.insert_job(sq.Job("q", 1, unique_key="a/b?c", unique_for=HOUR))
    app = create_app(queue, admin_tokens=["admin-token-0123456789"], read_tokens=["r" * 16])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        admin = {"Authorization": "Bearer admin-token-0123456789"}
        path = "/unique-keys/release"
        r = await client.post(
            path, json={"key": "a/b?c"}, headers={"Authorization": "Bearer " + "r" * 16}
        )
        assert r.status_code == 403
        r = await client.post(path, json={"key": "a/b?c"}, headers=admin)
        assert r.status_code == 200 and r.json() == {"key": "a/b?c", "released": True}
        r = await client.post(path, json={"key": "a/b?c"}, headers=admin)
        assert r.status_code == 409
        for body in ({}, {"key": ""}, {"key": 5}, {"key": "k", "more": 1}):
            r = await client.post(path, json=body, headers=admin)
            assert r.status_code == 400, body
    await app.state.events.aclose()


async def test_the_reaper_forgets_expired_keys_in_batches(queue: sq.SimpleQueue, dsn: str) -> None:
    await queue.insert_job(sq.Job("q", 1, unique_key="forever", unique_for=sq.FOREVER))
    await queue.insert_job(sq.Job("q", 2, unique_key="hour", unique_for=HOUR))
    query(
        dsn,
        "INSERT INTO simplequeue.unique_keys (key, job_id, queue, expires_at) "
        "SELECT 'old' || n, gen_random_uuid(), 'q', now() - interval '1 minute' "
        "FROM generate_series(1, 2500) AS n",
    )
    report = await queue.reap()
    assert report.expired_keys == 2500
    assert set(keys(dsn)) == {"forever", "hour"}
    assert (await queue.reap()).expired_keys == 0
    # a started worker (the leader) does it on its own
    expire(dsn, "hour")
    await queue.start()
    await eventually(lambda: set(keys(dsn)) == {"forever"})
    await queue.stop()


# -- the sync facade and the other drivers --------------------------------------------------


@pytest.fixture
def sync(dsn: str) -> Iterator[sq.SyncQueue]:
    with sq.SyncQueue.from_url(dsn) as queue:
        yield queue


def test_the_sync_facade(sync: sq.SyncQueue, dsn: str) -> None:
    first = sync.insert_job(sq.Job("q", 1, unique_key="s", unique_for=HOUR))
    assert first is not None
    assert sync.insert_job(sq.Job("q", 2, unique_key="s", unique_for=HOUR)) is None
    batch = [sq.Job("q", n, unique_key="t", unique_for=sq.FOREVER) for n in range(2)]
    assert sync.insert_jobs(batch) == [batch[0].id, None]
    with psycopg.connect(dsn) as conn:
        assert sync.insert_job(sq.Job("q", 3, unique_key="u", unique_for=1.5), conn=conn)
        conn.rollback()
    assert "u" not in keys(dsn)
    stored = sync.get_job(first)
    assert stored is not None and stored.unique_for == 3600.0
    finish(dsn, first)
    assert sync.release_unique_key("s") is True
    assert sync.insert_job(sq.Job("q", 4, unique_key="s", unique_for=HOUR)) is not None
    assert sync.release_unique_key("s") is True and sync.release_unique_key("s") is False


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_sqlalchemy_sessions_claim_and_roll_back(sync: sq.SyncQueue, dsn: str, driver: str) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    engine = create_engine(sqlalchemy_url(dsn, driver))
    try:
        with Session(engine) as session:
            assert sync.insert_jobs(
                [sq.Job("q", 1, unique_key="a", unique_for=sq.FOREVER)], conn=session
            )[0]
            session.rollback()
        assert keys(dsn) == {}
        with Session(engine) as session:
            one = sync.insert_job(
                sq.Job("q", 1, unique_key="a", unique_for=sq.FOREVER), conn=session
            )
            two = sync.insert_job(sq.Job("q", 2, unique_key="b", unique_for=0.25), conn=session)
            session.commit()
        assert keys(dsn)["a"][0] == one and keys(dsn)["b"][0] == two
        with Session(engine) as session:
            assert (
                sync.insert_job(sq.Job("q", 3, unique_key="a", unique_for=HOUR), conn=session)
                is None
            )
            session.commit()
    finally:
        engine.dispose()


async def test_asyncpg_through_sqlalchemy(queue: sq.SimpleQueue, dsn: str) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    engine = create_async_engine(sqlalchemy_url(dsn, "asyncpg"))
    try:
        async with AsyncSession(engine) as session:
            one = await queue.insert_job(
                sq.Job("q", 1, unique_key="a", unique_for=sq.FOREVER), conn=session
            )
            ids = await queue.insert_jobs(
                [sq.Job("q", n, unique_key="b", unique_for=HOUR) for n in range(2)], conn=session
            )
            await session.commit()
        assert one is not None and ids[0] is not None and ids[1] is None
        async with AsyncSession(engine) as session:
            assert (
                await queue.insert_job(
                    sq.Job("q", 3, unique_key="a", unique_for=HOUR), conn=session
                )
                is None
            )
            await session.rollback()
    finally:
        await engine.dispose()
    stored = await queue.get_job(one)
    assert stored is not None and stored.unique_for is sq.FOREVER
    assert json.loads(json.dumps(stored.to_dict()))["unique_for"] == "forever"
    assert set(keys(dsn)) == {"a", "b"}
