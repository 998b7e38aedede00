"""A maintenance step that one row cannot stop: the batch statement first, and when the
database refuses it (a trigger or constraint of the user's on one row, a row written by
hand), the same change job by job, logging the jobs it refuses. A lost database ends the
step (OperationalError): the next sweep is the retry."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.connections import borrow
from simplequeue.store import AnyConn

__all__ = ["batch_or_each"]

T = TypeVar("T")


async def batch_or_each(
    pool: AsyncConnectionPool[Any],
    log: logging.Logger,
    what: str,
    change: Callable[[AnyConn, uuid.UUID | None], Awaitable[list[T]]],
    candidates: Callable[[AnyConn], Awaitable[list[uuid.UUID]]],
) -> list[T]:
    """`change(conn, None)` changes a batch; `change(conn, job_id)` that one job, taken
    from `candidates`. Returns what the changes return."""
    try:
        async with borrow(pool) as conn:
            return await change(conn, None)
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        log.error("%s: refused (%s); going job by job", what, exc)
    async with borrow(pool) as conn:
        ids = await candidates(conn)
    changed: list[T] = []
    for job_id in ids:
        try:
            async with borrow(pool) as conn:
                changed += await change(conn, job_id)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            log.error(
                "%s: refused for job %s: %s", what, job_id, exc, extra={"job_id": str(job_id)}
            )
    return changed
