"""Races between API calls: concurrent statements that touch the same rows or keys never
deadlock and never raise; each ends as if they had run one after the other."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import simplequeue as sq
from tests.conftest import count, query


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
