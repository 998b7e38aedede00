"""Every SQL statement simplequeue runs, each a small named function over a connection.

Statements are composed once per schema with `psycopg.sql.Identifier`; every value is a
bound parameter. Batched statements take parallel arrays and `unnest` them, so one round
trip serves a whole batch. Anything that changes a running job is fenced by its `lease`
(bumped at every claim), so a late write from a worker that lost the job changes nothing.
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
from simplequeue.config import notify_channel
from simplequeue.errors import JobNotFoundError
from simplequeue.job import DEAD_STATUSES, Job
from simplequeue.validation import LATEST_TIME

__all__ = ["Outcome", "Store"]

_READ = columns.read_list()
"""What `Job.from_row` reads, in its order."""
_DEAD = "(" + ", ".join(f"'{s}'" for s in DEAD_STATUSES) + ")"

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
        self._insert = _q(_INSERT, schema)
        self._insert_notify = _q(_INSERT_NOTIFY, schema)
        self._insert_one = _q(_INSERT_ONE, schema)
        self._insert_one_notify = _q(_INSERT_ONE_NOTIFY, schema)
        self._stored_ids = _q(_STORED_IDS, schema)
        self._stored_anywhere_ids = _q(_STORED_ANYWHERE_IDS, schema)
        self._can_read_finished = _q(
            _CAN_READ_FINISHED,
            schema,
            **{t: sql.Identifier(schema, t).as_string(None) for t in ("archive", "dlq")},
        )
        self._reads_finished: bool | None = None
        self._copy = _q(_COPY, schema)
        self._copy_run_at = _q(_COPY_RUN_AT, schema)
        self._notify = sql.SQL("SELECT pg_notify(%s, %s)")
        self._claim = _q(_CLAIM, schema)
        self._write_outcomes = _q(_WRITE_OUTCOMES, schema, latest=LATEST_TIME)
        self._complete = _q(_COMPLETE, schema)
        self._heartbeat = _q(_HEARTBEAT, schema)
        self._still_running = _q(_STILL_RUNNING, schema)
        self._running_runs = _q(_RUNNING_RUNS, schema)
        self._reap_stalled = _q(_REAP_STALLED, schema)
        self._stalled_ids = _q(_STALLED_IDS, schema)
        self._fail_exhausted = _q(_FAIL_EXHAUSTED, schema)
        self._exhausted_ids = _q(_EXHAUSTED_IDS, schema)
        self._get_live_job = _q(_GET_LIVE_JOB, schema)
        self._get_finished_job = _q(_GET_FINISHED_JOB, schema)
        self._cancel_by = {
            column: _q(_CANCEL.format(column=column, s="{s}"), schema)
            for column in ("id", "unique_key", "fingerprint")
        }
        self._reschedule = _q(_RESCHEDULE, schema)
        self._list_dlq = _q(_LIST_DLQ, schema)
        self._list_dlq_of_queue = _q(_LIST_DLQ_OF_QUEUE, schema)
        self._promote = _q(_PROMOTE, schema)
        self._requeue_dead_live = _q(_REQUEUE_DEAD_LIVE, schema)
        self._requeue_from_dlq = _q(_REQUEUE_FROM_DLQ, schema)
        self._delete_from_dlq = _q(_DELETE_FROM_DLQ, schema)
        self._in_dlq = _q(_IN_DLQ, schema)
        self._archive_completed = _q(_ARCHIVE_COMPLETED, schema)
        self._move_dead = _q(_MOVE_DEAD, schema)
        self._completed_ids = _q(_COMPLETED_IDS, schema)
        self._dead_ids = _q(_DEAD_IDS, schema)
        self._purge_archive = _q(_PURGE_ARCHIVE, schema, purge_lock=f"simplequeue.purge.{schema}")
        self._stuck_finished = _q(_STUCK_FINISHED, schema)
        self._counts = _q(_COUNTS, schema)
        self._listen = sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)).as_string(None)

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
        await _run(conn, "SELECT 1")


def notify_payload(queues: set[str]) -> str:
    """The queue names, one per line; empty (meaning "any queue") when too long for NOTIFY."""
    payload = "\n".join(sorted(queues))
    return payload if len(payload.encode()) < 7000 and "\n" not in "".join(queues) else ""


# -- the statements ------------------------------------------------------------------

# Both inserts skip a job on any conflict: a live job holding its unique key
# (jobs_unique_key_live), or its own id already stored by an earlier try of the same insert.
# A job due later is `scheduled`: out of the claim's way until a poller promotes it.
# (Column lists, casts and the `scheduled` rule come from `columns.JOB_ROW`.)
_INSERT = "INSERT INTO {s}.jobs " + columns.insert_select() + " ON CONFLICT DO NOTHING RETURNING id"
_INSERT_ONE = (
    "INSERT INTO {s}.jobs " + columns.insert_values() + " ON CONFLICT DO NOTHING RETURNING id"
)


_STORED_IDS = "SELECT id FROM {s}.jobs WHERE id = ANY(%s::uuid[])"
_STORED_ANYWHERE_IDS = (
    "SELECT id FROM {s}.jobs WHERE id = ANY(%s::uuid[]) "
    "UNION ALL SELECT id FROM {s}.archive WHERE id = ANY(%s::uuid[]) "
    "UNION ALL SELECT id FROM {s}.dlq WHERE id = ANY(%s::uuid[])"
)
_CAN_READ_FINISHED = (
    "SELECT has_table_privilege({archive}, 'SELECT') AND has_table_privilege({dlq}, 'SELECT')"
)


def _notifying(insert: str, notify: str) -> str:
    """The insert, plus one NOTIFY naming the queues: the uncorrelated sub-select runs once
    (an InitPlan), and only if a row was inserted."""
    return f"WITH inserted AS ({insert}) SELECT id, (SELECT {notify}) FROM inserted"


_INSERT_NOTIFY = _notifying(_INSERT, "pg_notify(%s, %s)")
_INSERT_ONE_NOTIFY = _notifying(_INSERT_ONE, "pg_notify(%(channel)s, %(queues)s)")

# COPY writes values as they are: no COALESCE with now(), no comparison with it. A job
# without run_at leaves run_at and scheduled to their defaults (now, false); one with a
# run_at goes in as scheduled, and the first promotion makes it claimable once due.
_COPY_SOURCES = [i for i, c in enumerate(columns.SOURCES) if c.name != "run_at"]
_COPY_COLUMNS = ", ".join(columns.SOURCES[i].name for i in _COPY_SOURCES)
_COPY = "COPY {s}.jobs (" + _COPY_COLUMNS + ") FROM STDIN"
_COPY_RUN_AT = "COPY {s}.jobs (" + _COPY_COLUMNS + ", run_at, scheduled) FROM STDIN"


def _copy_row(job: Job) -> tuple[Any, ...]:
    row = _insert_row(job)
    return tuple(row[i] for i in _COPY_SOURCES)


# Promotes scheduled jobs that have come due, so that the claim finds them: a bounded
# batch of the queues the poller claims from, read in jobs_scheduled's order (per queue,
# the earliest first), so it stops after `limit` rows however many have come due.
_PROMOTE = """
UPDATE {s}.jobs AS j SET scheduled = false
FROM (
    SELECT id FROM {s}.jobs
    WHERE status = 'pending' AND scheduled AND queue = ANY(%(queues)s::text[])
      AND run_at <= now()
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS due
WHERE j.id = due.id
"""

# heartbeat_at takes clock_timestamp(), not now(): a claim (or a beat) that waited on a lock
# would otherwise stamp the time it started waiting, and the reaper would take the job at once.
_CLAIM = """
WITH candidates AS (
    SELECT j.id
    FROM unnest(%(queues)s::text[], %(limits)s::int[]) AS q(name, lim)
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at
        FROM {s}.jobs
        WHERE status = 'pending' AND NOT scheduled AND queue = q.name AND run_at <= now()
          AND attempt < max_attempts
        ORDER BY priority DESC, run_at, id
        LIMIT q.lim
        FOR UPDATE SKIP LOCKED
    ) AS j
    ORDER BY j.priority DESC, j.run_at, j.id
    LIMIT %(total)s
)
UPDATE {s}.jobs AS jobs
SET status = 'running', attempt = jobs.attempt + 1, lease = jobs.lease + 1,
    heartbeat_at = clock_timestamp(), updated_at = now()
FROM candidates
WHERE jobs.id = candidates.id
RETURNING """ + columns.read_list("jobs.", claimed=True)

# Result writes lock their rows in a sub-select that skips rows another transaction holds
# (a heartbeat, a cancel, a user's long transaction): the writer never waits, so one held
# row cannot stall every result of the process, and it cannot deadlock. It writes the
# skipped results again a moment later (`running_runs` tells them from fenced-off ones).
# The sub-select checks status and lease on the version it locks; locked, the row cannot
# change again before the UPDATE above it, which finds it by id.

_COMPLETE = """
UPDATE {s}.jobs AS j
SET status = 'completed', completed_at = now(), heartbeat_at = NULL, updated_at = now()
FROM (
    SELECT jobs.id FROM {s}.jobs JOIN unnest(%s::uuid[], %s::int[]) AS r(id, lease)
        ON jobs.id = r.id AND jobs.lease = r.lease
    WHERE jobs.status = 'running'
    FOR UPDATE OF jobs SKIP LOCKED
) AS locked
WHERE j.id = locked.id
RETURNING j.id
"""

_WRITE_OUTCOMES = """
UPDATE {s}.jobs AS j
SET status = r.status,
    attempt = j.attempt - r.refund,
    reprocess_count = j.reprocess_count + r.reprocess,
    run_at = CASE WHEN r.status = 'pending' THEN r.next_run_at ELSE j.run_at END,
    scheduled = r.status = 'pending' AND r.next_run_at > now(),
    last_error = COALESCE(r.error, j.last_error),
    completed_at = CASE WHEN r.status = 'pending' THEN NULL ELSE now() END,
    heartbeat_at = NULL,
    updated_at = now()
FROM (
    SELECT jobs.id, r.status, r.refund, r.reprocess, r.error,
           LEAST(GREATEST(now() + make_interval(secs => r.delay), r.not_before), {latest})
               AS next_run_at
    FROM {s}.jobs
    JOIN unnest(%s::uuid[], %s::int[], %s::text[], %s::int[], %s::int[], %s::float8[],
                %s::timestamptz[], %s::text[])
         AS r(id, lease, status, refund, reprocess, delay, not_before, error)
        ON jobs.id = r.id AND jobs.lease = r.lease
    WHERE jobs.status = 'running'
    FOR UPDATE OF jobs SKIP LOCKED
) AS r
WHERE j.id = r.id
RETURNING j.id
"""

# SKIP LOCKED: a row held by another transaction (a result write, a cancel, a user's long
# transaction) must not block the beats of all the others; it is beaten next interval.
# The ids returned are read from the snapshot, locked or not: still running under the lease.
# Never waiting on a lock, a beat cannot deadlock with a result write either.
_HEARTBEAT = """
WITH mine AS (
    SELECT j.id, j.lease FROM {s}.jobs AS j
    JOIN unnest(%s::uuid[], %s::int[]) AS b(id, lease) ON j.id = b.id AND j.lease = b.lease
    WHERE j.status = 'running'
), beatable AS (
    SELECT j.id FROM {s}.jobs AS j JOIN mine ON j.id = mine.id AND j.lease = mine.lease
    WHERE j.status = 'running'
    ORDER BY j.id
    FOR UPDATE OF j SKIP LOCKED
), beaten AS (
    UPDATE {s}.jobs AS j SET heartbeat_at = clock_timestamp() FROM beatable WHERE j.id = beatable.id
)
SELECT id, lease FROM mine
"""

_RUNNING_RUNS = """
SELECT j.id, j.lease FROM {s}.jobs AS j
JOIN unnest(%s::uuid[], %s::int[]) AS r(id, lease) ON j.id = r.id AND j.lease = r.lease
WHERE j.status = 'running'
"""

_STILL_RUNNING = "SELECT 1 FROM {s}.jobs WHERE id = %s AND lease = %s AND status = 'running'"

_REAP_STALLED = """
UPDATE {s}.jobs AS j
SET status = CASE WHEN j.reprocess_count + 1 >= %(max_reprocess)s THEN 'bad_job' ELSE 'pending' END,
    attempt = GREATEST(j.attempt - 1, 0),
    reprocess_count = j.reprocess_count + 1,
    last_error = CASE WHEN j.reprocess_count + 1 >= %(max_reprocess)s
                      THEN 'poison job: stalled or rescheduled ' || (j.reprocess_count + 1)
                           || ' times (max_reprocess_count)'
                      ELSE 'stalled: no heartbeat, its worker is presumed dead' END,
    completed_at = CASE WHEN j.reprocess_count + 1 >= %(max_reprocess)s THEN now() END,
    heartbeat_at = NULL,
    updated_at = now()
FROM (
    SELECT id FROM {s}.jobs
    WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => %(stall)s)
      AND (%(only)s::uuid IS NULL OR id = %(only)s)
      AND NOT EXISTS (
          SELECT 1 FROM unnest(%(own_ids)s::uuid[], %(own_leases)s::int[]) AS own(id, lease)
          WHERE own.id = jobs.id AND own.lease = jobs.lease)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS stalled
WHERE j.id = stalled.id
RETURNING j.id, j.status
"""

_STALLED_IDS = """
SELECT id FROM {s}.jobs
WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => %s)
ORDER BY id LIMIT %s
"""

_FAIL_EXHAUSTED = """
UPDATE {s}.jobs AS j
SET status = 'failed', completed_at = now(), updated_at = now(),
    last_error = COALESCE(j.last_error, 'no attempts left')
FROM (
    SELECT id FROM {s}.jobs
    WHERE status = 'pending' AND attempt >= max_attempts
      AND (%(only)s::uuid IS NULL OR id = %(only)s)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS exhausted
WHERE j.id = exhausted.id
RETURNING j.id
"""

_EXHAUSTED_IDS = """
SELECT id FROM {s}.jobs WHERE status = 'pending' AND attempt >= max_attempts ORDER BY id LIMIT %s
"""

_GET_LIVE_JOB = "SELECT " + _READ + " FROM {s}.jobs WHERE id = %(id)s"

_GET_FINISHED_JOB = (
    "SELECT " + _READ + " FROM {s}.archive WHERE id = %(id)s "
    "UNION ALL SELECT " + _READ + " FROM {s}.dlq WHERE id = %(id)s "
    "LIMIT 1"
)

_CANCEL = """
UPDATE {s}.jobs AS j
SET status = 'cancelled', completed_at = now(), updated_at = now(), heartbeat_at = NULL
FROM (
    SELECT id FROM {s}.jobs WHERE {column} = %s AND status IN ('pending', 'running')
    ORDER BY id FOR UPDATE
) AS locked
WHERE j.id = locked.id AND j.status IN ('pending', 'running')
"""

_RESCHEDULE = """
UPDATE {s}.jobs SET run_at = %(run_at)s, scheduled = %(run_at)s > now(), updated_at = now()
WHERE id = %(id)s AND status = 'pending'
"""

# The newest of each table from its index (dlq_newest, jobs_dead_newest, or their per-queue
# twins), then the newest of both: reads about 2 × limit rows, whatever the DLQ's size.
_LIST_DLQ_NEWEST = (
    "SELECT * FROM ("
    "  (SELECT " + _READ + " FROM {s}.dlq {where}"
    "   ORDER BY updated_at DESC, id DESC LIMIT %(limit)s)"
    "  UNION ALL"
    "  (SELECT " + _READ + " FROM {s}.jobs WHERE status IN " + _DEAD + " {also}"
    "   ORDER BY updated_at DESC, id DESC LIMIT %(limit)s)"
    ") AS dead ORDER BY updated_at DESC, id DESC LIMIT %(limit)s"
)
_LIST_DLQ = _LIST_DLQ_NEWEST.format(s="{s}", where="", also="")
_LIST_DLQ_OF_QUEUE = _LIST_DLQ_NEWEST.format(
    s="{s}", where="WHERE queue = %(queue)s", also="AND queue = %(queue)s"
)

_REQUEUE_DEAD_LIVE = (
    "UPDATE {s}.jobs SET status = 'pending', attempt = 0, reprocess_count = 0, run_at = now(), "
    "completed_at = NULL, updated_at = now() "
    "WHERE id = %s AND status IN " + _DEAD + " "
    "AND (unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM {s}.jobs AS live "
    "     WHERE live.unique_key = jobs.unique_key AND live.status IN ('pending', 'running')))"
)

# A requeued job starts afresh: these columns are set anew (None: left to the default);
# every other column comes back from the DLQ as it was.
_REQUEUED = {
    "status": "'pending'",
    "attempt": "0",
    "reprocess_count": "0",
    "run_at": "now()",
    "updated_at": "now()",
    "completed_at": None,
    "heartbeat_at": None,
}
_REQUEUE_COLUMNS = [
    c.name for c in columns.JOB_ROW if not c.live_only and _REQUEUED.get(c.name, "") is not None
]
_REQUEUE_FROM_DLQ = (
    f"INSERT INTO {{s}}.jobs ({', '.join(_REQUEUE_COLUMNS)}) "
    f"SELECT {', '.join(_REQUEUED.get(name) or name for name in _REQUEUE_COLUMNS)} "
    "FROM {s}.dlq WHERE id = %s ON CONFLICT DO NOTHING"
)

_COUNTS = """
SELECT status, count(*) FROM {s}.jobs GROUP BY status
UNION ALL SELECT 'archive', count(*) FROM {s}.archive
UNION ALL SELECT 'dlq', count(*) FROM {s}.dlq
"""

_DELETE_FROM_DLQ = "DELETE FROM {s}.dlq WHERE id = %s"
_IN_DLQ = "SELECT 1 FROM {s}.dlq WHERE id = %s"

# A finished row whose id the archive or the DLQ already holds (a row written there by
# hand) is left where it is: moving it would fail the whole batch, every sweep.
_MOVE_FINISHED = (
    "WITH moved AS (DELETE FROM {s}.jobs WHERE id IN ("
    "    SELECT id FROM {s}.jobs AS j WHERE {finished}"
    "      AND NOT EXISTS (SELECT 1 FROM {s}.{table} AS t WHERE t.id = j.id)"
    "      AND (%(only)s::uuid IS NULL OR j.id = %(only)s)"
    "    LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    "  RETURNING " + columns.MOVED_COLUMNS + ") "
    "INSERT INTO {s}.{table} (" + columns.MOVED_COLUMNS + ") "
    "SELECT " + columns.MOVED_COLUMNS + " FROM moved "
    "RETURNING id"
)
_FINISHED_IDS = (
    "SELECT id FROM {s}.jobs AS j WHERE {finished}"
    "  AND NOT EXISTS (SELECT 1 FROM {s}.{table} AS t WHERE t.id = j.id) ORDER BY id LIMIT %s"
)
_COMPLETED = {"finished": "status = 'completed'", "table": "archive"}
_DEAD_ROWS = {"finished": "status IN " + _DEAD, "table": "dlq"}
_ARCHIVE_COMPLETED = _MOVE_FINISHED.format(s="{s}", **_COMPLETED)
_MOVE_DEAD = _MOVE_FINISHED.format(s="{s}", **_DEAD_ROWS)
_COMPLETED_IDS = _FINISHED_IDS.format(s="{s}", **_COMPLETED)
_DEAD_IDS = _FINISHED_IDS.format(s="{s}", **_DEAD_ROWS)

_STUCK_FINISHED = (
    "SELECT count(*) FROM {s}.jobs AS j WHERE"
    " (status = 'completed' AND EXISTS (SELECT 1 FROM {s}.archive AS a WHERE a.id = j.id))"
    " OR (status IN " + _DEAD + " AND EXISTS (SELECT 1 FROM {s}.dlq AS d WHERE d.id = j.id))"
)

# One purge at a time per schema (other janitors skip their turn): locking the rows
# instead (FOR UPDATE) would need UPDATE on the archive, which the worker role lacks.
_PURGE_ARCHIVE = """
DELETE FROM {s}.archive WHERE (SELECT pg_try_advisory_xact_lock(hashtext({purge_lock}))) AND id IN (
    SELECT id FROM {s}.archive WHERE moved_at < now() - make_interval(secs => %s) LIMIT %s)
"""
