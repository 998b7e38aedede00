"""What the sweeps share: their base class, and a step that one row cannot stop (the
batch statement first and, when the database refuses it for a trigger or constraint of
the user's on one row, or a row written by hand, the same change job by job, logging the
jobs it refuses). A lost database ends the step (OperationalError), to be retried."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.config import QueueConfig
from simplequeue.connections import borrow
from simplequeue.drivers import run
from simplequeue.runtime.outage import DatabaseHealth
from simplequeue.runtime.service import PeriodicService
from simplequeue.store import Plan, Store

__all__ = ["Sweeper", "batch_or_each"]


class Sweeper(PeriodicService):
    """A periodic service that sweeps the tables of one schema (the reaper, the janitor)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: Store,
        config: QueueConfig,
        *,
        health: DatabaseHealth | None = None,
    ) -> None:
        super().__init__(health)
        self._pool = pool
        self._store = store
        self._config = config


T = TypeVar("T")


async def batch_or_each(
    pool: AsyncConnectionPool[Any],
    log: logging.Logger,
    what: str,
    change: Callable[[uuid.UUID | None], Plan[list[T]]],
    candidates: Callable[[], Plan[list[uuid.UUID]]],
) -> list[T]:
    """`change(None)` changes a batch; `change(job_id)` that one job, taken from
    `candidates()`. Returns what the changes return."""
    try:
        async with borrow(pool) as conn:
            return await run(conn, change(None))
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        log.error("%s: refused (%s); going job by job", what, exc)
    async with borrow(pool) as conn:
        ids = await run(conn, candidates())
    changed: list[T] = []
    for job_id in ids:
        try:
            async with borrow(pool) as conn:
                changed += await run(conn, change(job_id))
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            log.error(
                "%s: refused for job %s: %s", what, job_id, exc, extra={"job_id": str(job_id)}
            )
    return changed
