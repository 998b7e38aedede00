"""Races between API calls: concurrent statements that touch the same rows or keys never
deadlock and never raise; each ends as if they had run one after the other."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import simplequeue as sq
from tests.conftest import count, eventually, query


async def _queues(dsn: str, n: int, **config: Any) -> list[sq.SimpleQueue]:
    queues = [
        sq.SimpleQueue.from_url(dsn, pool_min_size=1, pool_max_size=1, **config) for _ in range(n)
    ]
    for q in queues:
        await q.__aenter__()
    return queues


async def _close(queues: list[sq.SimpleQueue]) -> None:
    for q in queues:
        await q.__aexit__(None, None, None)


def _deadlocks(dsn: str) -> int:
    return int(
        query(dsn, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")[0][
            0
        ]
    )


async def test_batches_sharing_unique_keys_in_any_order_do_not_deadlock(dsn: str) -> None:
    queues = await _queues(dsn, 4)
    try:
        for round_ in range(15):
            keys = [f"r{round_}:k{n}" for n in range(40)]
            orders = [keys, keys[::-1], random.sample(keys, len(keys)), sorted(keys, key=hash)]
            results = await asyncio.gather(
                *(
                    q.insert_jobs([sq.Job("q", {"k": k}, unique_key=k) for k in order])
                    for q, order in zip(queues, orders, strict=True)
                )
            )
            stored = [i for ids in results for i in ids if i is not None]
            assert len(stored) == 40  # one winner per key, the losers got None
            assert count(dsn, "unique_key LIKE %s", [f"r{round_}:%"]) == 40
    finally:
        await _close(queues)
    assert _deadlocks(dsn) == 0


async def test_cancel_by_fingerprint_against_the_result_writer(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    """Two running jobs share a fingerprint; their rows lie in the heap (and so in the
    fingerprint index) against id order. A cancel by fingerprint slowed on its first row
    (a trigger sleeps) meets the result writer's write of both: whatever order the plans
    visit the rows in, both statements lock them in id order, so neither deadlocks."""
    from simplequeue.drivers import run
    from simplequeue.store import Outcome, Store

    a, b = sorted(
        [sq.Job("q", "a", fingerprint="fp"), sq.Job("q", "b", fingerprint="fp")], key=lambda j: j.id
    )
    await queue.insert_jobs([b, a])
    await queue.insert_jobs([sq.Job("other", n) for n in range(3000)])
    query(dsn, "ANALYZE simplequeue.jobs")  # a table large enough for index scans
    for job, beat in ((b, "now()"), (a, "now() - interval '1 second'")):
        # b's running version first in the heap, a's heartbeat first in jobs_running
        query(
            dsn,
            f"UPDATE simplequeue.jobs SET status = 'running', lease = 1, heartbeat_at = {beat} "
            "WHERE id = %s",
            [job.id],
        )
    query(
        dsn,
        "CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.status = 'cancelled' AND NEW.id = '" + str(b.id) + "' THEN "
        "PERFORM pg_sleep(0.6); END IF; RETURN NEW; END $$",
    )
    query(
        dsn,
        "CREATE TRIGGER slow BEFORE UPDATE ON simplequeue.jobs "
        "FOR EACH ROW EXECUTE FUNCTION public.slow()",
    )

    async def write() -> set[Any]:
        await asyncio.sleep(0.2)  # the cancel holds its first row by now
        async with queue.pool.connection() as conn:
            outcomes = [Outcome(a.id, 1, "completed"), Outcome(b.id, 1, "completed")]
            return await run(conn, Store(queue.schema).write_outcomes(outcomes))

    cancelled, written = await asyncio.gather(queue.cancel_jobs_by_fingerprint("fp"), write())
    assert (cancelled, written) in ((2, set()), (0, {a.id, b.id}))
    assert _deadlocks(dsn) == 0


async def test_requeue_against_an_insert_of_the_same_unique_key(dsn: str) -> None:
    queues = await _queues(dsn, 2)
    requeuer, producer = queues
    try:
        for round_ in range(25):
            key = f"key{round_}"
            dead = await producer.insert_job(sq.Job("q", round_, unique_key=key))
            assert dead is not None and await producer.cancel_job(dead)
            requeued, inserted = await asyncio.gather(
                requeuer.requeue_dlq_job(dead), producer.insert_job(sq.Job("q", 0, unique_key=key))
            )
            assert requeued != (inserted is not None)  # exactly one of them holds the key
            assert count(dsn, "unique_key = %s AND status = 'pending'", [key]) == 1
    finally:
        await _close(queues)


def test_every_statement_that_waits_for_row_locks_takes_them_in_id_order() -> None:
    """The rule behind the two tests above, for every statement of the store: one that
    changes or locks job rows either skips locked rows, locks them in id order first, or
    touches a single row by its id."""
    import re

    from simplequeue.store import Store

    single_row = {
        "reschedule",
        "requeue_dead_live",
        "requeue_from_dlq",
        "delete_from_dlq",
        "run_now",
        "worker_gone",
        "listener_gone",
        "progress",  # a running job's progress, by its id (and lease)
        "progress_quiet",
    }
    # one queue, one unique key, or this worker's (or server's) own row: by primary key
    single_key = {
        "pause_queue",
        "resume_queue",
        "worker_beat",
        "listener_beat",
        "configure_queue",
        "unpark",
        "lead",
        "resign",
        "take_slots",  # one schedule each: by its name
        "slots_enqueued",
        "pause_schedule",
        "resume_schedule",
        "delete_schedule",
        "release_unique_key",
    }
    # the schema's function picks and locks them (FOR UPDATE SKIP LOCKED, under the
    # queue's advisory lock): sql/0007_fleet_limits.sql
    in_function = {"claim_controlled", "claim_controlled_quiet"}
    # rows the transaction's own insert just claimed (and so holds): it waits for no one
    own_claims = {"unclaim_keys"}
    statements = {
        name: text
        for name, text in Store("simplequeue").statements().items()
        if re.search(r"\b(UPDATE|DELETE FROM|FOR UPDATE)\b", text)
    }
    assert len(statements) >= 10
    for name, text in statements.items():
        flat = " ".join(text.split())
        ordered = re.search(r"ORDER BY (\w+\.)?id FOR UPDATE", flat) or re.search(
            r"ORDER BY (name|queue|queue, key|f\.unique_key) ON CONFLICT", flat
        )
        if name in in_function:
            assert "claim_controlled(" in flat, name
        elif name in own_claims:
            assert "job_id = ANY(" in flat, name
        elif name in single_key:
            by_key = r"(WHERE (name|key) = %(s|\(queue\)s|\(name\)s)|VALUES \(%\((id|name)\)s)"
            assert re.search(by_key, flat), name
        elif name in single_row:
            assert re.search(r"WHERE id = %(\(id\))?s", flat), name
        else:
            one_at_a_time = "pg_try_advisory_xact_lock" in flat
            assert "SKIP LOCKED" in flat or ordered or one_at_a_time, f"{name}: any order"


async def test_a_row_held_by_another_transaction_delays_only_its_own_result(dsn: str) -> None:
    """A session idles in a transaction holding one finished job's row: the result writer
    skips that row and writes every other result; the held one lands once it is free."""
    release = asyncio.Event()

    class Quick(sq.Handler):
        QUEUE = "quick"

        async def process(self, queue: sq.SimpleQueue, job: sq.Job) -> None:
            if job.data == "held":
                await release.wait()

    async with sq.SimpleQueue.from_url(dsn, global_permits=20, empty_poll_sleep=0.05) as queue:
        queue.register_handler(Quick())
        await queue.start()
        held = await queue.insert_job(sq.Job("quick", "held"))
        await eventually(lambda: count(dsn, "status = 'running'") == 1)
        import psycopg

        with psycopg.connect(dsn) as locker:
            locker.execute("SELECT 1 FROM simplequeue.jobs WHERE id = %s FOR UPDATE", [held])
            release.set()  # its result waits for the row
            await queue.insert_jobs([sq.Job("quick", n) for n in range(200)])
            await eventually(lambda: count(dsn, "status = 'completed'") == 200, timeout=20)
            assert count(dsn, "id = %s AND status = 'running'", [held]) == 1
        await eventually(lambda: count(dsn, "status = 'completed'") == 201, timeout=10)
