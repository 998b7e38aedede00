"""The store: each statement of `statements.py` as a small named method over a connection.

It renders the statements once per schema (`psycopg.sql.Identifier`), binds every value
as a parameter, and turns rows into jobs and ids. Everything the library asks of the
database goes through it.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import PipelineStatus, TransactionStatus
from psycopg.rows import TupleRow, tuple_row

from simplequeue import columns
from simplequeue import statements as q
from simplequeue.config import notify_channel
from simplequeue.errors import JobNotFoundError
from simplequeue.job import Job
from simplequeue.validation import LATEST_TIME

__all__ = ["Outcome", "Store"]


AnyConn = psycopg.AsyncConnection[Any]


@dataclass(slots=True)  # not frozen: built once per job, and frozen init costs
class Outcome:
    """The end of one claimed attempt, as the result writer stores it.

    `refund` gives the attempt back (reschedules, shutdown); `reprocess` counts a run that
    did not end in a verdict; `delay` and `not_before` set the next `run_at` when pending.
    """

    job_id: uuid.UUID
    lease: int
    status: str
    refund: int = 0
    reprocess: int = 0
    delay: float = 0.0
    not_before: datetime | None = None
    error: str | None = None

    @property
    def is_plain_success(self) -> bool:
        return (
            self.status == "completed"
            and self.error is None
            and not self.refund
            and not self.reprocess
        )


_insert_row: Callable[[Job], tuple[Any, ...]] = operator.attrgetter(
    *(c.insert_from for c in columns.SOURCES if c.insert_from)
)
"""A job's values in the order of `columns.SOURCES`: the INSERTs' and the COPY's."""
_SOURCE_NAMES = [c.name for c in columns.SOURCES]


def _insert_rows(jobs: Sequence[Job]) -> list[tuple[Any, ...]]:
    """The rows of a batch in one order, those with a unique key by it, then the others by
    id: concurrent batches take index entries in the same order and cannot deadlock."""
    return [_insert_row(j) for j in sorted(jobs, key=_insert_order)]


def _insert_order(j: Job) -> tuple[bool, str, uuid.UUID]:
    return (j.unique_key is None, j.unique_key or "", j.id)


def _array(values: Iterable[object]) -> str:
    """A PostgreSQL array literal of uuids or ints, several times cheaper than adapting a
    list element by element (nothing here needs quoting)."""
    return "{" + ",".join(map(str, values)) + "}"


COPY_THRESHOLD = 500
"""From this many jobs (none with a unique key), insert_jobs uses COPY."""

MAX_ERROR_CHARS = 8192
"""`last_error` keeps at most this much of a handler's error text."""


def storable_error(text: str | None) -> str | None:
    """Error text as a text column can hold it: no NUL, no lone surrogate, bounded.

    Handlers raise whatever they like; a message PostgreSQL refuses would make the
    result write fail and the job run again and again.
    """
    if text is None:
        return None
    text = text.replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 20] + f" ... [{len(text) - MAX_ERROR_CHARS + 20} more]"
    return text


async def _run(conn: AnyConn, query: str, params: Any = None) -> psycopg.AsyncCursor[TupleRow]:
    """Execute with tuple rows and server-side parameters, whatever row factory or cursor
    class the caller's connection or pool uses."""
    cur = psycopg.AsyncCursor(conn, row_factory=tuple_row)
    await cur.execute(query, params)
    return cur


def conn_commits_each_statement(conn: AnyConn) -> bool:
    """An autocommit connection outside a transaction: each statement commits on its own."""
    return conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE


def atomic(conn: AnyConn) -> AbstractAsyncContextManager[Any]:
    """Make several statements one unit without touching the caller's transaction.

    Outside a transaction, a transaction of our own. Anywhere else the statements already
    run in the caller's transaction, which alone decides: a `conn.transaction()` there
    would COMMIT a non-autocommit connection that has not run a statement yet (psycopg
    opens a real transaction when none is open).
    """
    return conn.transaction() if conn_commits_each_statement(conn) else nullcontext()


def _q(template: str, schema: str, **constants: Any) -> str:
    """The statement for this schema, rendered once: psycopg would otherwise turn a
    Composed into text again at every execute, on the hot path. `constants` are the
    library's own values, rendered as literals."""
    literals = {name: sql.Literal(value) for name, value in constants.items()}
    return sql.SQL(template).format(s=sql.Identifier(schema), **literals).as_string(None)


class Store:
    """The statements of one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.channel = notify_channel(schema)
        self._insert = _q(q.INSERT, schema)
        self._insert_notify = _q(q.INSERT_NOTIFY, schema)
        self._insert_one = _q(q.INSERT_ONE, schema)
        self._insert_one_notify = _q(q.INSERT_ONE_NOTIFY, schema)
        self._stored_ids = _q(q.STORED_IDS, schema)
        self._stored_anywhere_ids = _q(q.STORED_ANYWHERE_IDS, schema)
        self._can_read_finished = _q(
            q.CAN_READ_FINISHED,
            schema,
            **{t: sql.Identifier(schema, t).as_string(None) for t in ("archive", "dlq")},
        )
        self._reads_finished: bool | None = None
        self._copy = _q(q.COPY, schema)
        self._copy_run_at = _q(q.COPY_RUN_AT, schema)
        self._notify = q.NOTIFY
        self._claim = _q(q.CLAIM, schema)
        self._write_outcomes = _q(q.WRITE_OUTCOMES, schema, latest=LATEST_TIME)
        self._complete = _q(q.COMPLETE, schema)
        self._heartbeat = _q(q.HEARTBEAT, schema)
        self._still_running = _q(q.STILL_RUNNING, schema)
        self._running_runs = _q(q.RUNNING_RUNS, schema)
        self._reap_stalled = _q(q.REAP_STALLED, schema)
        self._stalled_ids = _q(q.STALLED_IDS, schema)
        self._fail_exhausted = _q(q.FAIL_EXHAUSTED, schema)
        self._exhausted_ids = _q(q.EXHAUSTED_IDS, schema)
        self._get_live_job = _q(q.GET_LIVE_JOB, schema)
        self._get_live_job_by_key = _q(q.GET_LIVE_JOB_BY_KEY, schema)
        self._get_finished_job = _q(q.GET_FINISHED_JOB, schema)
        self._cancel_by = {
            column: _q(q.CANCEL.format(column=column, s="{s}"), schema)
            for column in ("id", "unique_key", "fingerprint")
        }
        self._reschedule = _q(q.RESCHEDULE, schema)
        self._list_dlq = _q(q.LIST_DLQ, schema)
        self._list_dlq_of_queue = _q(q.LIST_DLQ_OF_QUEUE, schema)
        self._promote = _q(q.PROMOTE, schema)
        self._count_due = _q(q.COUNT_DUE, schema)
        self._requeue_dead_live = _q(q.REQUEUE_DEAD_LIVE, schema)
        self._requeue_from_dlq = _q(q.REQUEUE_FROM_DLQ, schema)
        self._delete_from_dlq = _q(q.DELETE_FROM_DLQ, schema)
        self._in_dlq = _q(q.IN_DLQ, schema)
        self._archive_completed = _q(q.ARCHIVE_COMPLETED, schema)
        self._move_dead = _q(q.MOVE_DEAD, schema)
        self._completed_ids = _q(q.COMPLETED_IDS, schema)
        self._dead_ids = _q(q.DEAD_IDS, schema)
        self._purge_archive = _q(q.PURGE_ARCHIVE, schema, purge_lock=f"simplequeue.purge.{schema}")
        self._stuck_finished = _q(q.STUCK_FINISHED, schema)
        self._counts = _q(q.COUNTS, schema)
        self._listen = sql.SQL(q.LISTEN).format(sql.Identifier(self.channel)).as_string(None)

    def statements(self) -> dict[str, str]:
        """Every statement of this schema, by name, as it is sent: to EXPLAIN one, or to
        check a rule over all of them. `cancel_by_<column>` are the three cancels."""
        found = {
            name.removeprefix("_"): text
            for name, text in vars(self).items()
            if name.startswith("_") and isinstance(text, str)
        }
        found.update({f"cancel_by_{column}": text for column, text in self._cancel_by.items()})
        return found

    # -- producers -------------------------------------------------------------------

    async def insert_jobs(
        self, conn: AnyConn, jobs: Sequence[Job], *, notify: bool, retry: bool = False
    ) -> set[uuid.UUID]:
        """Insert in one statement; returns the ids stored (a live unique key skips a job).

        With `notify`, the same statement sends one NOTIFY naming the queues, delivered
        when the inserting transaction commits. With `retry` (an insert of some of these
        jobs was sent before and may have landed), the ids already stored, in the jobs
        table or, where this role may read them, the archive and the DLQ, count as
        stored and are not inserted again: a retry never stores a job twice.
        """
        stored: set[uuid.UUID] = set()
        if retry:
            stored = await self._stored_anywhere(conn, [j.id for j in jobs])
            jobs = [j for j in jobs if j.id not in stored]
            if not jobs:
                return stored
        elif (
            len(jobs) >= COPY_THRESHOLD
            and all(j.unique_key is None for j in jobs)
            and conn.pgconn.pipeline_status == PipelineStatus.OFF  # COPY is not pipelined
        ):
            own_transaction = conn_commits_each_statement(conn)
            try:
                return await self._copy_jobs(conn, jobs, notify=notify)
            except psycopg.errors.UniqueViolation:
                if not own_transaction:
                    raise  # the caller's transaction is aborted: theirs to roll back
                # Ours was rolled back: another insert of the same jobs got there first.
                return await self.insert_jobs(conn, jobs, notify=notify, retry=True)
        params: list[Any] | dict[str, Any]
        if len(jobs) == 1:  # scalars: adapting nine one-element arrays costs more than the insert
            params = dict(zip(_SOURCE_NAMES, _insert_row(jobs[0]), strict=True))
            insert, insert_notify = self._insert_one, self._insert_one_notify
            if notify:
                params["channel"] = self.channel
                params["queues"] = notify_payload({jobs[0].queue})
        else:
            params = [list(column) for column in zip(*_insert_rows(jobs), strict=True)]
            insert, insert_notify = self._insert, self._insert_notify
            if notify:
                params += [self.channel, notify_payload({j.queue for j in jobs})]
        cur = await _run(conn, insert_notify if notify else insert, params)
        stored.update(row[0] for row in await cur.fetchall())
        # A skipped job without a unique key has its id stored already (the same jobs
        # inserted at the same time elsewhere); on a retry, one with a key may too. A
        # skip by a live unique key, the common case, needs no look.
        missing = [j.id for j in jobs if j.id not in stored and (retry or j.unique_key is None)]
        if missing:
            cur = await _run(conn, self._stored_ids, [missing])
            stored.update(row[0] for row in await cur.fetchall())
        return stored

    async def _stored_anywhere(self, conn: AnyConn, ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these ids are stored in jobs, the archive or the DLQ (those this role
        may read: the producer role reads live jobs only)."""
        if self._reads_finished is None:
            cur = await _run(conn, self._can_read_finished)
            row = await cur.fetchone()
            self._reads_finished = bool(row and row[0])
        statement = self._stored_anywhere_ids if self._reads_finished else self._stored_ids
        cur = await _run(conn, statement, [ids] * (3 if self._reads_finished else 1))
        return {row[0] for row in await cur.fetchall()}

    async def _copy_jobs(
        self, conn: AnyConn, jobs: Sequence[Job], *, notify: bool
    ) -> set[uuid.UUID]:
        """Insert a large batch with COPY, several times faster than one INSERT of arrays.

        Only without unique keys: COPY has no ON CONFLICT, and there is nothing to
        deduplicate then. Jobs without `run_at` take the database's `now()` as the INSERT
        path gives them, so they go in a COPY that leaves the column to its default.
        """
        ordered = sorted(jobs, key=_insert_order)  # nearly free: ids grow as jobs are built
        timed = [j for j in ordered if j.run_at is not None]
        untimed = [j for j in ordered if j.run_at is None]
        async with atomic(conn):
            cur = psycopg.AsyncCursor(conn)  # not the caller's cursor class: ours has %s
            for group, statement in ((untimed, self._copy), (timed, self._copy_run_at)):
                if not group:
                    continue
                async with cur.copy(statement) as copy:
                    for j in group:
                        row = _copy_row(j)
                        await copy.write_row(row if j.run_at is None else (*row, j.run_at, True))
            if notify:
                await cur.execute(
                    self._notify, [self.channel, notify_payload({j.queue for j in jobs})]
                )
        return {j.id for j in jobs}

    # -- the worker's hot path -------------------------------------------------------

    async def claim(
        self, conn: AnyConn, queues: Sequence[str], limits: Sequence[int], total: int
    ) -> list[Job]:
        """Claim up to `total` due jobs, at most `limits[i]` of `queues[i]`, in one statement.

        The data comes back as JSON text, decoded per job by its executor: one payload that
        Python cannot decode must fail its own job, not the whole batch.
        """
        cur = await _run(
            conn, self._claim, {"queues": list(queues), "limits": list(limits), "total": total}
        )
        return [Job.from_row(row, encoded=True) for row in await cur.fetchall()]

    async def promote_due(self, conn: AnyConn, queues: Sequence[str], limit: int) -> int:
        """Make up to `limit` scheduled jobs of `queues` that have come due claimable."""
        cur = await _run(conn, self._promote, {"queues": list(queues), "limit": limit})
        return cur.rowcount

    async def count_due(self, conn: AnyConn, queues: Sequence[str]) -> int:
        """Pending jobs of `queues` that are due and may still be claimed."""
        cur = await _run(conn, self._count_due, [list(queues)])
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def write_outcomes(self, conn: AnyConn, outcomes: Sequence[Outcome]) -> set[uuid.UUID]:
        """Apply a batch of results, fenced by lease; returns the ids it changed.

        Plain successes, most of any batch, go in a statement of their own that needs
        only ids and leases: adapting eight arrays per batch costs more than the query.
        """
        done: list[Outcome] = []
        rest: list[Outcome] = []
        for outcome in outcomes:
            (done if outcome.is_plain_success else rest).append(outcome)
        changed: set[uuid.UUID] = set()
        if done:
            cur = await _run(
                conn,
                self._complete,
                [_array(o.job_id for o in done), _array(o.lease for o in done)],
            )
            changed.update(row[0] for row in await cur.fetchall())
        if rest:
            cur = await _run(
                conn,
                self._write_outcomes,
                [
                    [o.job_id for o in rest],
                    [o.lease for o in rest],
                    [o.status for o in rest],
                    [o.refund for o in rest],
                    [o.reprocess for o in rest],
                    [o.delay for o in rest],
                    [o.not_before for o in rest],
                    [storable_error(o.error) for o in rest],
                ],
            )
            changed.update(row[0] for row in await cur.fetchall())
        return changed

    def heartbeat(
        self, conn: psycopg.Connection[Any], beats: Sequence[tuple[uuid.UUID, int]]
    ) -> set[tuple[uuid.UUID, int]]:
        """Beat every job a worker runs in one statement (sync: it runs in its own thread).

        Returns the (id, lease) pairs still running; the others were cancelled or reaped.
        """
        cur = conn.cursor(row_factory=tuple_row)
        cur.execute(self._heartbeat, [[b[0] for b in beats], [b[1] for b in beats]])
        return {(row[0], row[1]) for row in cur.fetchall()}

    async def running_runs(
        self, conn: AnyConn, runs: Sequence[tuple[uuid.UUID, int]]
    ) -> set[tuple[uuid.UUID, int]]:
        """Which of these runs (id, lease) are still the running ones."""
        cur = await _run(conn, self._running_runs, [[r[0] for r in runs], [r[1] for r in runs]])
        return {(row[0], row[1]) for row in await cur.fetchall()}

    async def still_running(self, conn: AnyConn, job_id: uuid.UUID, lease: int) -> bool:
        """Is this run (id, lease) of the job still the running one?"""
        cur = await _run(conn, self._still_running, [job_id, lease])
        return await cur.fetchone() is not None

    # -- maintenance -----------------------------------------------------------------

    async def reap_stalled(
        self,
        conn: AnyConn,
        stall_after: float,
        max_reprocess: int,
        limit: int = 1000,
        only: uuid.UUID | None = None,
        own: Collection[tuple[uuid.UUID, int]] = (),
    ) -> list[tuple[uuid.UUID, str]]:
        """Stalled running jobs (or the one job `only`, if stalled) back to pending
        (attempt refunded), or bad_job when poison; never the runs in `own` (id, lease),
        which the calling process knows are still running."""
        params = {
            "stall": stall_after,
            "max_reprocess": max_reprocess,
            "limit": limit,
            "only": only,
            "own_ids": [run[0] for run in own],
            "own_leases": [run[1] for run in own],
        }
        cur = await _run(conn, self._reap_stalled, params)
        return [(row[0], row[1]) for row in await cur.fetchall()]

    async def stalled_ids(self, conn: AnyConn, stall_after: float, limit: int) -> list[uuid.UUID]:
        cur = await _run(conn, self._stalled_ids, [stall_after, limit])
        return [row[0] for row in await cur.fetchall()]

    async def fail_exhausted(
        self, conn: AnyConn, limit: int = 1000, only: uuid.UUID | None = None
    ) -> list[uuid.UUID]:
        """Pending jobs (or the one job `only`) with no attempt left can never run: end
        them as failed. Returns their ids."""
        cur = await _run(conn, self._fail_exhausted, {"limit": limit, "only": only})
        return [row[0] for row in await cur.fetchall()]

    async def exhausted_ids(self, conn: AnyConn, limit: int) -> list[uuid.UUID]:
        cur = await _run(conn, self._exhausted_ids, [limit])
        return [row[0] for row in await cur.fetchall()]

    async def archive_completed(
        self, conn: AnyConn, limit: int, only: uuid.UUID | None = None
    ) -> list[uuid.UUID]:
        """Completed jobs (or the one job `only`) to the archive; returns their ids."""
        cur = await _run(conn, self._archive_completed, {"limit": limit, "only": only})
        return [row[0] for row in await cur.fetchall()]

    async def move_dead(
        self, conn: AnyConn, limit: int, only: uuid.UUID | None = None
    ) -> list[uuid.UUID]:
        """Dead jobs (or the one job `only`) to the DLQ; returns their ids."""
        cur = await _run(conn, self._move_dead, {"limit": limit, "only": only})
        return [row[0] for row in await cur.fetchall()]

    async def completed_ids(self, conn: AnyConn, limit: int) -> list[uuid.UUID]:
        cur = await _run(conn, self._completed_ids, [limit])
        return [row[0] for row in await cur.fetchall()]

    async def dead_ids(self, conn: AnyConn, limit: int) -> list[uuid.UUID]:
        cur = await _run(conn, self._dead_ids, [limit])
        return [row[0] for row in await cur.fetchall()]

    async def purge_archive(self, conn: AnyConn, retention: float, limit: int) -> int:
        cur = await _run(conn, self._purge_archive, [retention, limit])
        return cur.rowcount

    async def stuck_finished(self, conn: AnyConn) -> int:
        """Finished jobs the janitor cannot move: the archive or DLQ holds their id already."""
        cur = await _run(conn, self._stuck_finished)
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- operators -------------------------------------------------------------------

    async def get_job(self, conn: AnyConn, job_id: uuid.UUID) -> Job | None:
        """The job from the live table; only when it is not there, from the archive or DLQ.

        So a role that may read live jobs only (the producer role) reads them; for a job
        that is not live, such a role gets JobNotFoundError saying why. Live is read again
        last, for a job requeued from the DLQ between the first two reads.
        """
        cur = await _run(conn, self._get_live_job, {"id": job_id})
        row = await cur.fetchone()
        if row is None:
            try:
                cur = await _run(conn, self._get_finished_job, {"id": job_id})
            except psycopg.errors.InsufficientPrivilege as exc:
                raise JobNotFoundError(
                    f"job {job_id} is not in {self.schema}.jobs, and this database role may "
                    f"not read {self.schema}.archive or {self.schema}.dlq "
                    f"({exc.diag.message_primary}): producers read live jobs only; finished "
                    "jobs need a role with the worker's privileges"
                ) from exc
            row = await cur.fetchone()
        if row is None:
            cur = await _run(conn, self._get_live_job, {"id": job_id})
            row = await cur.fetchone()
        return Job.from_row(row) if row else None

    async def get_live_job_by_key(self, conn: AnyConn, unique_key: str) -> Job | None:
        cur = await _run(conn, self._get_live_job_by_key, [unique_key])
        row = await cur.fetchone()
        return Job.from_row(row) if row else None

    async def cancel(self, conn: AnyConn, column: str, value: uuid.UUID | str) -> int:
        """Cancel the live jobs whose `column` (id, unique_key or fingerprint) is `value`."""
        cur = await _run(conn, self._cancel_by[column], [value])
        return cur.rowcount

    async def reschedule(self, conn: AnyConn, job_id: uuid.UUID, run_at: datetime) -> bool:
        cur = await _run(conn, self._reschedule, {"run_at": run_at, "id": job_id})
        return cur.rowcount == 1

    async def list_dlq(self, conn: AnyConn, queue: str | None, limit: int) -> list[Job]:
        statement = self._list_dlq if queue is None else self._list_dlq_of_queue
        cur = await _run(conn, statement, {"queue": queue, "limit": limit})
        return [Job.from_row(row) for row in await cur.fetchall()]

    async def requeue_dead(self, conn: AnyConn, job_id: uuid.UUID) -> bool:
        """A dead job (in the DLQ or not yet moved there) back to pending with fresh attempts.

        Runs in the caller's transaction. False when no such dead job exists, or when a live
        job holds its unique key (the dead one then stays where it is).
        """
        try:
            # A savepoint: an insert of the same unique key, committed between this
            # statement's check and its write, makes it fail; that is a False, not an error.
            async with conn.transaction():
                cur = await _run(conn, self._requeue_dead_live, [job_id])
        except psycopg.errors.UniqueViolation:
            return False
        if cur.rowcount:
            return True
        cur = await _run(conn, self._in_dlq, [job_id])
        if await cur.fetchone() is None:
            return False  # asked first: the worker role may read the DLQ but not requeue from it
        cur = await _run(conn, self._requeue_from_dlq, [job_id])
        if not cur.rowcount:
            return False
        await _run(conn, self._delete_from_dlq, [job_id])
        return True

    async def counts(self, conn: AnyConn) -> dict[str, int]:
        """Jobs per status in the live table, plus the archive and DLQ sizes."""
        cur = await _run(conn, self._counts)
        return {str(name): int(n) for name, n in await cur.fetchall()}

    async def listen(self, conn: AnyConn) -> None:
        await _run(conn, self._listen)

    async def probe(self, conn: AnyConn) -> None:
        """One round trip: fails on a connection whose peer is gone."""
        await _run(conn, q.PROBE)


def notify_payload(queues: set[str]) -> str:
    """The queue names, one per line; empty (meaning "any queue") when too long for NOTIFY."""
    payload = "\n".join(sorted(queues))
    return payload if len(payload.encode()) < 7000 and "\n" not in "".join(queues) else ""


def _copy_row(job: Job) -> tuple[Any, ...]:
    """A job's values in the order of `statements.COPY`."""
    row = _insert_row(job)
    return tuple(row[i] for i in columns.COPY_SOURCES)
