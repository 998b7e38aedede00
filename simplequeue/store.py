"""The store: each statement of `statements.py` as a small named operation.

It renders the statements once per schema (`psycopg.sql.Identifier`), binds every value
as a parameter, and turns rows into jobs and ids. Everything the library asks of the
database goes through it. An operation is a plan (a generator): it yields the statements
to run and receives their results, and never touches a connection itself, so the same
operation runs on async and sync psycopg, SQLAlchemy and Django connections alike
(`drivers.py` runs plans).
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Callable, Collection, Generator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from psycopg import sql

from simplequeue import columns
from simplequeue import statements as q
from simplequeue.config import events_channel, notify_channel
from simplequeue.durability import Durability
from simplequeue.errors import JobNotFoundError
from simplequeue.fleet import QueueInfo, WorkerIdentity, WorkerInfo
from simplequeue.job import Job
from simplequeue.limits import QueueLimits
from simplequeue.schedules import Schedule, ScheduleInfo
from simplequeue.stats import QueueSummary
from simplequeue.validation import LATEST_TIME

__all__ = [
    "Copy",
    "Lease",
    "Outcome",
    "Plan",
    "QueueControls",
    "Result",
    "Run",
    "Store",
    "StoredSchedule",
    "sqlstate",
]

T = TypeVar("T")


@dataclass(slots=True)  # not frozen: built once per job, and frozen init costs
class Outcome:
    """The end of one claimed attempt, as the result writer stores it.

    `refund` gives the attempt back (reschedules, shutdown); `reprocess` counts a run that
    did not end in a verdict; `delay` and `not_before` set the next `run_at` when pending;
    `result` is a success's value as JSON text, checked and encoded (None: none).
    """

    job_id: uuid.UUID
    lease: int
    status: str
    refund: int = 0
    reprocess: int = 0
    delay: float = 0.0
    not_before: datetime | None = None
    error: str | None = None
    park_until: datetime | None = None
    """Park the job's concurrency key (its queue, without one) until then."""
    result: str | None = None
    queue: str | None = None
    """The job's queue, set by the executor: whether its queue is fast decides how the
    write commits (None: durably)."""

    @property
    def due_at_once(self) -> bool:
        """Pending again without a wait (a retry with no backoff): claimable as written."""
        return self.status == "pending" and self.delay <= 0 and self.not_before is None

    @property
    def is_plain_success(self) -> bool:
        return (
            self.status == "completed"
            and self.error is None
            and not self.refund
            and not self.reprocess
        )


@dataclass(frozen=True, slots=True)
class StoredSchedule:
    """Where a schedule stands, as an enqueuer reads it."""

    name: str
    last_slot: datetime
    now: datetime
    """The database's clock: it alone says which slots are due."""
    cron: str | None
    every: timedelta | None
    timezone: str


@dataclass(frozen=True, slots=True)
class QueueControls:
    """What a worker reads of its queues' rows once a second (`Store.queue_controls`)."""

    controlled: frozenset[str]
    """Claimed by claim_controlled only: limited, fair, or with parked keys."""
    fast: frozenset[str]
    """Their writes commit fast (`Durability.FAST`)."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A leadership lease after an attempt to take or renew it."""

    holder: uuid.UUID | None
    """The worker that holds it (None: released, or never taken)."""
    term: int
    """Grows with every new holder: two leaders that overlapped are told apart by it."""
    ours: bool
    """The attempt's worker holds it now, for the TTL it asked."""


_insert_row: Callable[[Job], tuple[Any, ...]] = operator.attrgetter(
    *(c.insert_from for c in columns.SOURCES if c.insert_from)
)
"""A job's values in the order of `columns.SOURCES`: the INSERTs' and the COPY's."""
_SOURCE_NAMES = [c.name for c in columns.SOURCES]
_copy_row: Callable[[Job], tuple[Any, ...]] = operator.attrgetter(
    *(columns.SOURCES[i].insert_from or "" for i in columns.COPY_SOURCES)
)
"""A job's values in the order of `statements.COPY`."""


def _insert_rows(jobs: Sequence[Job]) -> list[tuple[Any, ...]]:
    """The rows of a batch in one order, those with a unique key by it (the batch's first
    job of a key first: the one a key goes to), then the others by id: concurrent batches
    take index entries in the same order and cannot deadlock."""
    order = sorted(range(len(jobs)), key=lambda i: _insert_order(jobs[i], i))
    return [_insert_row(jobs[i]) for i in order]


def _id_order(j: Job) -> int:
    """The order of ids (as integers: comparing UUIDs runs Python code)."""
    return j.id.int


def _insert_order(j: Job, place: int = 0) -> tuple[bool, str, int, uuid.UUID]:
    return (j.unique_key is None, j.unique_key or "", place if j.unique_key else 0, j.id)


_SOURCE_TYPES = [c.param_type or c.sql_type for c in columns.SOURCES]


def _literal(values: Sequence[Any], sql_type: str) -> str:
    """A PostgreSQL array literal of a batch's values of one column (`_SOURCE_TYPES`):
    psycopg adapts a list element by element in Python, with a regular expression per
    text element, ten times the cost of building the literal."""
    items: Iterable[str]
    if sql_type in ("text", "jsonb"):
        items = (
            "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in values
        )
    elif sql_type == "timestamptz":
        items = ("NULL" if v is None else f'"{v.isoformat()}"' for v in values)
    elif sql_type == "int":
        # Never NULL. int's own text: a subclass (an enum, say) may print otherwise.
        items = map(int.__repr__, values)
    elif sql_type in ("uuid", "float8"):  # ids and floats the library made: no quoting
        items = ("NULL" if v is None else str(v) for v in values)
    else:
        raise ValueError(f"no array literal for {sql_type}")
    return "{" + ",".join(items) + "}"


def _array(values: Iterable[object]) -> str:
    """A PostgreSQL array literal of uuids or ints, several times cheaper than adapting a
    list element by element (nothing here needs quoting)."""
    return "{" + ",".join(map(str, values)) + "}"


COPY_THRESHOLD = 50
"""From this many jobs (none with a unique key), insert_jobs uses COPY."""

MAX_ERROR_CHARS = 8192
"""`last_error` keeps at most this much of a handler's error text."""


def storable_error(text: str | None, most: int = MAX_ERROR_CHARS) -> str | None:
    """Error text (or a progress message) as a text column can hold it: no NUL, no lone
    surrogate, at most `most` characters.

    Handlers raise whatever they like; a message PostgreSQL refuses would make the
    result write fail and the job run again and again.
    """
    if text is None:
        return None
    text = text.replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > most:
        text = text[: most - 20] + f" ... [{len(text) - most + 20} more]"
    return text


# -- plans: what the store asks of a connection, whichever driver runs it ------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One statement. With `savepoint`, it runs in a savepoint of its own: its failure
    leaves the surrounding transaction usable."""

    query: str
    params: Any = None
    savepoint: bool = False


@dataclass(frozen=True, slots=True)
class Copy:
    """COPY each (statement, rows) in turn, then run `then`: one unit, in the caller's
    transaction when there is one, else in a transaction of the driver's own.

    With `then_may_follow`, a single COPY on a connection that commits each statement
    runs alone (all or nothing by itself), and `then` after it: two round trips fewer
    (BEGIN, COMMIT) for what may follow the COPY's commit, such as a wake-up. The COPY
    has committed by then: a failure of `then` is logged, not raised (the rows are
    stored, and the caller must hear so)."""

    parts: tuple[tuple[str, Sequence[tuple[Any, ...]]], ...]
    then: Run | None = None
    then_may_follow: bool = False

    def alone_commits(self, commits_each_statement: bool) -> bool:
        """Run without a transaction of the driver's own: one COPY, committing alone."""
        return self.then_may_follow and commits_each_statement and len(self.parts) == 1


@dataclass(frozen=True, slots=True)
class Result:
    """What a statement returned: its rows (none for a statement without) and its count."""

    rows: list[tuple[Any, ...]]
    rowcount: int

    def first(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None


Plan = Generator[Run | Copy, Result, T]
"""The steps of one store operation, written once: each driver (`drivers.py`) executes
the statements it yields and sends back their results, or throws their errors into it."""

UNIQUE_VIOLATION = "23505"
INSUFFICIENT_PRIVILEGE = "42501"
UNDEFINED_TABLE = "42P01"
MISSING_SCHEMA_OBJECT = frozenset({UNDEFINED_TABLE, "42703", "3F000"})
"""A table, column or schema the statement names is not there: the schema is older than
this library, or not there at all."""


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error from any driver: psycopg's, psycopg2's, one that
    SQLAlchemy or Django wrapped."""
    for error in (exc, getattr(exc, "orig", None), exc.__cause__):
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def _ids(rows: Iterable[tuple[Any, ...]]) -> set[uuid.UUID]:
    """The first column as job ids, whichever driver read them (psycopg2 reads uuid as text)."""
    return {r[0] if isinstance(r[0], uuid.UUID) else uuid.UUID(str(r[0])) for r in rows}


_READ_WIDTH = len(columns.READ)
"""The columns `Job.from_row` reads: a claim returns one more (its events' NOTIFY)."""


def _q(template: str, schema: str, **constants: Any) -> str:
    """The statement for this schema, rendered once: psycopg would otherwise turn a
    Composed into text again at every execute, on the hot path. `constants` are the
    library's own values, rendered as literals."""
    if "{events}" in template:
        constants.setdefault("events", events_channel(schema))
    literals = {name: sql.Literal(value) for name, value in constants.items()}
    return sql.SQL(template).format(s=sql.Identifier(schema), **literals).as_string(None)


class Store:
    """The statements of one schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.channel = notify_channel(schema)
        self._insert = _q(q.INSERT, schema)
        self._insert_notify = _q(q.INSERT_NOTIFY, schema)
        self._insert_notify_quiet = _q(q.INSERT_NOTIFY_QUIET, schema)
        self._insert_one = _q(q.INSERT_ONE, schema)
        self._insert_one_notify = _q(q.INSERT_ONE_NOTIFY, schema)
        self._insert_one_notify_quiet = _q(q.INSERT_ONE_NOTIFY_QUIET, schema)
        self._insert_unique = _q(q.INSERT_UNIQUE, schema)
        self._insert_unique_notify = _q(q.INSERT_UNIQUE_NOTIFY, schema)
        self._insert_unique_notify_quiet = _q(q.INSERT_UNIQUE_NOTIFY_QUIET, schema)
        self._insert_one_unique = _q(q.INSERT_ONE_UNIQUE, schema)
        self._insert_one_unique_notify = _q(q.INSERT_ONE_UNIQUE_NOTIFY, schema)
        self._insert_one_unique_notify_quiet = _q(q.INSERT_ONE_UNIQUE_NOTIFY_QUIET, schema)
        self._holding_keys = _q(q.HOLDING_KEYS, schema)
        self._unclaim_keys = _q(q.UNCLAIM_KEYS, schema)
        self._release_unique_key = _q(q.RELEASE_UNIQUE_KEY, schema)
        self._forget_expired_keys = _q(q.FORGET_EXPIRED_KEYS, schema)
        self._stored_ids = _q(q.STORED_IDS, schema)
        self._stored_anywhere_ids = _q(q.STORED_ANYWHERE_IDS, schema)
        self._can_read_finished = _q(
            q.CAN_READ_FINISHED,
            schema,
            **{t: sql.Identifier(schema, t).as_string(None) for t in ("archive", "dlq")},
        )
        self._copy = _q(q.COPY, schema)
        self._copy_run_at = _q(q.COPY_RUN_AT, schema)
        self._notify = q.NOTIFY
        self._notify_copied = _q(q.NOTIFY_COPIED, schema)
        self._claim = _q(q.CLAIM, schema)
        self._claim_quiet = _q(q.CLAIM_QUIET, schema)
        self._claim_controlled = _q(q.CLAIM_CONTROLLED, schema)
        self._claim_controlled_quiet = _q(q.CLAIM_CONTROLLED_QUIET, schema)
        self._queue_controls = _q(q.QUEUE_CONTROLS, schema)
        self._configure_queue = _q(q.CONFIGURE_QUEUE, schema)
        self._park = _q(q.PARK, schema)
        self._park_runs = _q(q.PARK_RUNS, schema)
        self._unpark = _q(q.UNPARK, schema)
        self._write_outcomes = _q(q.WRITE_OUTCOMES, schema, latest=LATEST_TIME)
        self._write_outcomes_quiet = _q(q.WRITE_OUTCOMES_QUIET, schema, latest=LATEST_TIME)
        self._complete = _q(q.COMPLETE, schema)
        self._complete_quiet = _q(q.COMPLETE_QUIET, schema)
        self._progress = _q(q.PROGRESS, schema)
        self._progress_quiet = _q(q.PROGRESS_QUIET, schema)
        self._events_listened = _q(q.EVENTS_LISTENED, schema)
        self._listener_beat = _q(q.LISTENER_BEAT, schema)
        self._listener_gone = _q(q.LISTENER_GONE, schema)
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
            column: _q(q.CANCEL.format(column=column, s="{s}", events="{events}"), schema)
            for column in ("id", "unique_key", "fingerprint")
        }
        self._reschedule = _q(q.RESCHEDULE, schema)
        self._list_jobs = _q(q.LIST_JOBS, schema)
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
        self._prepare_archive = _q(q.PREPARE_ARCHIVE, schema)
        self._retire_archive = _q(q.RETIRE_ARCHIVE, schema)
        self._purge_archive = _q(q.PURGE_ARCHIVE, schema)
        self._stuck_finished = _q(q.STUCK_FINISHED, schema)
        self._counts = _q(q.COUNTS, schema)
        self._queue_summaries = _q(q.QUEUE_SUMMARIES, schema)
        self._declare_queues = _q(q.DECLARE_QUEUES, schema)
        self._declared_queues = _q(q.DECLARED_QUEUES, schema)
        self._pause_queue = _q(q.PAUSE_QUEUE, schema)
        self._resume_queue = _q(q.RESUME_QUEUE, schema)
        self._list_queues = _q(q.LIST_QUEUES, schema)
        self._worker_beat = _q(q.WORKER_BEAT, schema)
        self._worker_gone = _q(q.WORKER_GONE, schema)
        self._forget_workers = _q(q.FORGET_WORKERS, schema)
        self._list_workers = _q(q.LIST_WORKERS, schema)
        self._forget_controls = _q(q.FORGET_CONTROLS, schema)
        self._lead = _q(q.LEAD, schema)
        self._resign = _q(q.RESIGN, schema)
        self._run_now = _q(q.RUN_NOW, schema)
        self._register_schedules = _q(q.REGISTER_SCHEDULES, schema)
        self._schedules_due = _q(q.SCHEDULES_DUE, schema)
        self._take_slots = _q(q.TAKE_SLOTS, schema)
        self._slots_enqueued = _q(q.SLOTS_ENQUEUED, schema)
        self._list_schedules = _q(q.LIST_SCHEDULES, schema)
        self._pause_schedule = _q(q.PAUSE_SCHEDULE, schema)
        self._resume_schedule = _q(q.RESUME_SCHEDULE, schema)
        self._delete_schedule = _q(q.DELETE_SCHEDULE, schema)
        self._count_dead = _q(q.COUNT_DEAD, schema)
        self._dead_live_ids = _q(q.DEAD_LIVE_IDS, schema)
        self._requeue_dlq_bulk = _q(q.REQUEUE_DLQ_BULK, schema)
        self._purge_dead_live = _q(q.PURGE_DEAD_LIVE, schema)
        self._purge_dlq = _q(q.PURGE_DLQ, schema)
        self._listen = sql.SQL(q.LISTEN).format(sql.Identifier(self.channel)).as_string(None)
        self._listen_events = (
            sql.SQL(q.LISTEN).format(sql.Identifier(events_channel(schema))).as_string(None)
        )

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

    def insert_jobs(
        self,
        jobs: Sequence[Job],
        *,
        notify: bool,
        retry: bool = False,
        can_copy: bool = False,
        array_literals: bool = False,
        publish: bool = True,
    ) -> Plan[set[uuid.UUID] | None]:
        """Insert in one statement; returns the ids stored (a live unique key skips a job,
        and so does a key taken over time, `unique_for`: claimed by the same statement),
        or None when every job was (a COPY: no id needs looking up).

        With `notify`, the same statement sends one NOTIFY naming the queues, delivered
        when the inserting transaction commits. With `retry` (an insert of some of these
        jobs was sent before and may have landed), the ids already stored, in the jobs
        table or, where this role may read them, the archive and the DLQ, count as
        stored and are not inserted again: a retry never stores a job twice.
        `can_copy`: the driver can COPY (which runs as one unit: a failed COPY leaves a
        caller's transaction usable). `array_literals`: the driver takes a batch's arrays
        as array literals (text), cheaper to build than its own adaptation of lists.
        `publish`: with `notify`, the events of the HTTP API too (someone listens).
        """
        stored: set[uuid.UUID] = set()
        if retry:
            stored = yield from self._stored_anywhere([j.id for j in jobs])
            keyed = [j for j in jobs if j.id not in stored and j.unique_for is not None]
            if keyed:  # stored by the earlier try, though this role may not read it now
                result = yield Run(
                    self._holding_keys, [[j.unique_key for j in keyed], [j.id for j in keyed]]
                )
                stored.update(_ids(result.rows))
            jobs = [j for j in jobs if j.id not in stored]
            if not jobs:
                return stored
        elif can_copy and len(jobs) >= COPY_THRESHOLD and all(j.unique_key is None for j in jobs):
            try:
                yield self._copy_jobs(jobs, notify=notify, publish=publish)
            except Exception as exc:
                if sqlstate(exc) != UNIQUE_VIOLATION:
                    raise
                # Some of these ids are stored already (the same jobs inserted elsewhere,
                # or before): the COPY was undone as a whole; the INSERT skips those.
                again = self.insert_jobs(
                    jobs,
                    notify=notify,
                    retry=True,
                    array_literals=array_literals,
                    publish=publish,
                )
                return (yield from again)
            return None
        params: list[Any] | dict[str, Any]
        if len(jobs) == 1:  # scalars: adapting nine one-element arrays costs more than the insert
            params = dict(zip(_SOURCE_NAMES, _insert_row(jobs[0]), strict=True))
            if notify:
                params["channel"] = self.channel
                params["queues"] = notify_payload({jobs[0].queue})
        else:
            values = zip(*_insert_rows(jobs), strict=True)
            if array_literals:
                params = [_literal(v, kind) for v, kind in zip(values, _SOURCE_TYPES, strict=True)]
            else:
                params = [list(column) for column in values]
            if notify:
                params += [self.channel, notify_payload({j.queue for j in jobs})]
        result = yield Run(self._inserting(jobs, notify=notify, publish=publish), params)
        stored.update(_ids(result.rows))
        refused = [j for j in jobs if j.unique_for is not None and j.id not in stored]
        if refused:  # a claim its job did not follow into the table is undone
            keys = [[j.unique_key for j in refused], [j.id for j in refused]]
            yield Run(self._unclaim_keys, keys)
        # A skipped job without a unique key has its id stored already (the same jobs
        # inserted at the same time elsewhere); on a retry, one with a key may too. A
        # skip by a live unique key, the common case, needs no look.
        missing = [j.id for j in jobs if j.id not in stored and (retry or j.unique_key is None)]
        if missing:
            result = yield Run(self._stored_ids, [missing])
            stored.update(_ids(result.rows))
        return stored

    def _inserting(self, jobs: Sequence[Job], *, notify: bool, publish: bool) -> str:
        """The INSERT for these jobs: of one job (scalar parameters) or a batch (arrays);
        claiming keys held over time when a job asks (the others, nearly every insert, do
        not pay for a claim of no key); with the NOTIFY, and the events when published."""
        one = len(jobs) == 1
        if any(j.unique_for is not None for j in jobs):
            if one:
                plain, loud, quiet = (
                    self._insert_one_unique,
                    self._insert_one_unique_notify,
                    self._insert_one_unique_notify_quiet,
                )
            else:
                plain, loud, quiet = (
                    self._insert_unique,
                    self._insert_unique_notify,
                    self._insert_unique_notify_quiet,
                )
        elif one:
            plain, loud, quiet = (
                self._insert_one,
                self._insert_one_notify,
                self._insert_one_notify_quiet,
            )
        else:
            plain, loud, quiet = self._insert, self._insert_notify, self._insert_notify_quiet
        if not notify:
            return plain
        return loud if publish else quiet

    def _stored_anywhere(self, ids: list[uuid.UUID]) -> Plan[set[uuid.UUID]]:
        """Which of these ids are stored in jobs, the archive or the DLQ (those this role
        may read: the producer role reads live jobs only)."""
        # Asked each time, not cached: callers' connections may log in as other roles.
        result = yield Run(self._can_read_finished)
        row = result.first()
        reads_finished = bool(row and row[0])
        statement = self._stored_anywhere_ids if reads_finished else self._stored_ids
        result = yield Run(statement, [ids] * (3 if reads_finished else 1))
        return _ids(result.rows)

    def _copy_jobs(self, jobs: Sequence[Job], *, notify: bool, publish: bool) -> Copy:
        """A large batch as COPY, several times faster than one INSERT of arrays.

        Only without unique keys: COPY has no ON CONFLICT, and there is nothing to
        deduplicate then. Jobs without `run_at` take the database's `now()` as the INSERT
        path gives them, so they go in a COPY that leaves the column to its default.
        """
        ordered = sorted(jobs, key=_id_order)  # nearly free: ids grow as jobs are built
        untimed = [_copy_row(j) for j in ordered if j.run_at is None]
        timed = [(*_copy_row(j), j.run_at, True) for j in ordered if j.run_at is not None]
        parts = tuple(
            (st, rows) for st, rows in ((self._copy, untimed), (self._copy_run_at, timed)) if rows
        )
        wake = [self.channel, notify_payload({j.queue for j in jobs})]
        if publish:  # the jobs' events too: their ids and queues go back to the server
            copied = [[j.id for j in jobs], [j.queue for j in jobs]]
            then = Run(self._notify_copied, [*copied, *wake])
        else:
            then = Run(self._notify, wake)
        # The wake-up may follow the COPY's commit: a worker it wakes finds the jobs.
        return Copy(parts, then if notify else None, then_may_follow=True)

    # -- the worker's hot path -------------------------------------------------------

    def claim(
        self,
        queues: Sequence[str],
        limits: Sequence[int],
        total: int,
        worker: uuid.UUID | None = None,
        *,
        publish: bool = True,
        fast: bool = False,
    ) -> Plan[list[Job]]:
        """Claim up to `total` due jobs, at most `limits[i]` of `queues[i]`, in one statement,
        for `worker`; paused queues are skipped. `fast`: its transaction commits without
        waiting for the WAL flush (every one of `queues` is fast, and the statement runs
        as a transaction of its own).

        The data comes back as JSON text, decoded per job by its executor: one payload that
        Python cannot decode must fail its own job, not the whole batch.
        """
        params = {
            "queues": list(queues),
            "limits": list(limits),
            "total": total,
            "worker": worker,
            "fast": fast,
        }
        result = yield Run(self._claim if publish else self._claim_quiet, params)
        return [Job.from_row(row[:_READ_WIDTH], encoded=True) for row in result.rows]

    def claim_controlled(
        self,
        queues: Sequence[str],
        limits: Sequence[int],
        worker: uuid.UUID | None = None,
        *,
        publish: bool = True,
        fast: bool = False,
    ) -> Plan[list[Job]]:
        """Claim from controlled queues (fleet-wide limits, fairness, parked keys): at most
        `limits[i]` of `queues[i]`, within what their limits allow now. `fast`: as for
        `claim`."""
        params = {"queues": list(queues), "limits": list(limits), "worker": worker, "fast": fast}
        result = yield Run(
            self._claim_controlled if publish else self._claim_controlled_quiet, params
        )
        return [Job.from_row(row[:_READ_WIDTH], encoded=True) for row in result.rows]

    def queue_controls(self, queues: Sequence[str]) -> Plan[QueueControls]:
        """Which of these queues only `claim_controlled` claims from now, and which are fast."""
        result = yield Run(self._queue_controls, [list(queues)])
        return QueueControls(
            controlled=frozenset(str(row[0]) for row in result.rows if row[1]),
            fast=frozenset(str(row[0]) for row in result.rows if row[2]),
        )

    def promote_due(self, queues: Sequence[str], limit: int, *, fast: bool = False) -> Plan[int]:
        """Make up to `limit` scheduled jobs of `queues` that have come due claimable
        (`fast`: committed without waiting for the WAL flush, as a claim of them)."""
        params = {"queues": list(queues), "limit": limit, "fast": fast}
        result = yield Run(self._promote, params)
        row = result.first()
        return int(row[0]) if row else 0

    def count_due(self, queues: Sequence[str]) -> Plan[int]:
        """Pending jobs of `queues` that are due and may still be claimed."""
        result = yield Run(self._count_due, [list(queues)])
        row = result.first()
        return int(row[0]) if row else 0

    def write_outcomes(
        self, outcomes: Sequence[Outcome], *, publish: bool = True, fast: bool = False
    ) -> Plan[set[uuid.UUID]]:
        """Apply a batch of results, fenced by lease; returns the ids it changed.

        Plain successes, most of any batch, go in a statement of their own that needs
        only ids and leases: adapting eight arrays per batch costs more than the query.
        Their results travel as a third array only when one of them has a result (NULL
        otherwise, which unnest reads as no result for any). `fast`: each statement
        commits without waiting for the WAL flush (every outcome's queue is fast, and each
        statement runs as a transaction of its own).
        """
        done: list[Outcome] = []
        rest: list[Outcome] = []
        for outcome in outcomes:
            (done if outcome.is_plain_success else rest).append(outcome)
        changed: set[uuid.UUID] = set()
        parks = [o for o in rest if o.park_until is not None]
        if parks:  # before the outcomes: the key's next jobs must not start in between
            yield from self.park_runs(parks, fast=fast)
        if done:
            results = [o.result for o in done]
            result = yield Run(
                self._complete if publish else self._complete_quiet,
                [
                    _array(o.job_id for o in done),
                    _array(o.lease for o in done),
                    results if any(r is not None for r in results) else None,
                    fast,
                ],
            )
            changed.update(row[0] for row in result.rows)
        if rest:
            result = yield Run(
                self._write_outcomes if publish else self._write_outcomes_quiet,
                [
                    [o.job_id for o in rest],
                    [o.lease for o in rest],
                    [o.status for o in rest],
                    [o.refund for o in rest],
                    [o.reprocess for o in rest],
                    [o.delay for o in rest],
                    [o.not_before for o in rest],
                    [storable_error(o.error) for o in rest],
                    fast,
                ],
            )
            changed.update(row[0] for row in result.rows)
        return changed

    def park_runs(self, outcomes: Sequence[Outcome], *, fast: bool = False) -> Plan[None]:
        """Park the key (or queue) of each run that is still its job's, until its time."""
        runs = [[o.job_id for o in outcomes], [o.lease for o in outcomes]]
        yield Run(self._park_runs, [*runs, [o.park_until for o in outcomes], fast])

    def set_progress(
        self,
        job_id: uuid.UUID,
        lease: int,
        progress: str | None,
        message: str | None,
        *,
        publish: bool = True,
        fast: bool = False,
    ) -> Plan[bool]:
        """Record a running attempt's progress (JSON text, checked), fenced by its lease:
        False when this run no longer holds the job, and nothing changed. `fast`: commits
        without waiting for the WAL flush."""
        params = {
            "id": job_id,
            "lease": lease,
            "progress": progress,
            "message": message,
            "fast": fast,
        }
        result = yield Run(self._progress if publish else self._progress_quiet, params)
        return bool(result.rows)

    def heartbeat(
        self, beats: Sequence[tuple[uuid.UUID, int]], *, fast: bool = False
    ) -> Plan[set[tuple[uuid.UUID, int]]]:
        """Beat every job a worker runs in one statement (`fast`: committed without waiting
        for the WAL flush).

        Returns the (id, lease) pairs still running; the others were cancelled or reaped.
        """
        result = yield Run(self._heartbeat, [[b[0] for b in beats], [b[1] for b in beats], fast])
        return {(row[0], row[1]) for row in result.rows}

    def running_runs(
        self, runs: Sequence[tuple[uuid.UUID, int]]
    ) -> Plan[set[tuple[uuid.UUID, int]]]:
        """Which of these runs (id, lease) are still the running ones."""
        result = yield Run(self._running_runs, [[r[0] for r in runs], [r[1] for r in runs]])
        return {(row[0], row[1]) for row in result.rows}

    def still_running(self, job_id: uuid.UUID, lease: int) -> Plan[bool]:
        """Is this run (id, lease) of the job still the running one?"""
        result = yield Run(self._still_running, [job_id, lease])
        return bool(result.rows)

    # -- maintenance -----------------------------------------------------------------

    def reap_stalled(
        self,
        stall_after: float,
        max_reprocess: int,
        limit: int = 1000,
        only: uuid.UUID | None = None,
        own: Collection[tuple[uuid.UUID, int]] = (),
    ) -> Plan[list[tuple[uuid.UUID, str]]]:
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
        result = yield Run(self._reap_stalled, params)
        return [(row[0], row[1]) for row in result.rows]

    def stalled_ids(self, stall_after: float, limit: int) -> Plan[list[uuid.UUID]]:
        return (yield from self._first_column(self._stalled_ids, [stall_after, limit]))

    def fail_exhausted(
        self, limit: int = 1000, only: uuid.UUID | None = None
    ) -> Plan[list[uuid.UUID]]:
        """Pending jobs (or the one job `only`) with no attempt left can never run: end
        them as failed. Returns their ids."""
        return (yield from self._first_column(self._fail_exhausted, {"limit": limit, "only": only}))

    def exhausted_ids(self, limit: int) -> Plan[list[uuid.UUID]]:
        return (yield from self._first_column(self._exhausted_ids, [limit]))

    def archive_completed(self, limit: int, only: uuid.UUID | None = None) -> Plan[list[uuid.UUID]]:
        """Completed jobs (or the one job `only`) to the archive; returns their ids."""
        params = {"limit": limit, "only": only}
        return (yield from self._first_column(self._archive_completed, params))

    def move_dead(self, limit: int, only: uuid.UUID | None = None) -> Plan[list[uuid.UUID]]:
        """Dead jobs (or the one job `only`) to the DLQ; returns their ids."""
        return (yield from self._first_column(self._move_dead, {"limit": limit, "only": only}))

    def completed_ids(self, limit: int) -> Plan[list[uuid.UUID]]:
        return (yield from self._first_column(self._completed_ids, [limit]))

    def dead_ids(self, limit: int) -> Plan[list[uuid.UUID]]:
        return (yield from self._first_column(self._dead_ids, [limit]))

    def prepare_archive(self, width: float) -> Plan[int]:
        """Range partitions of the archive from now to a minute ahead, each ending on a
        multiple of `width` seconds; returns how many were made."""
        result = yield Run(self._prepare_archive, [width])
        return int(result.rows[0][0])

    def retire_archive(self, retention: float) -> Plan[tuple[int, int]]:
        """Drops the archive's partitions older than `retention` seconds; returns how many,
        and the rows they held."""
        result = yield Run(self._retire_archive, [retention])
        dropped, rows = result.rows[0]
        return int(dropped), int(rows)

    def purge_archive(self, retention: float, limit: int) -> Plan[int]:
        """Deletes up to `limit` rows older than `retention` seconds from the archive's
        DEFAULT partition; returns how many."""
        result = yield Run(self._purge_archive, [retention, limit])
        return int(result.rows[0][0])

    def stuck_finished(self) -> Plan[int]:
        """Finished jobs the janitor cannot move: the archive or DLQ holds their id already."""
        result = yield Run(self._stuck_finished)
        row = result.first()
        return int(row[0]) if row else 0

    def _first_column(self, query: str, params: Any) -> Plan[list[Any]]:
        result = yield Run(query, params)
        return [row[0] for row in result.rows]

    # -- operators -------------------------------------------------------------------

    def get_job(self, job_id: uuid.UUID) -> Plan[Job | None]:
        """The job from the live table; only when it is not there, from the archive or DLQ.

        So a role that may read live jobs only (the producer role) reads them; for a job
        that is not live, such a role gets JobNotFoundError saying why. Live is read again
        last, for a job requeued from the DLQ between the first two reads.
        """
        result = yield Run(self._get_live_job, {"id": job_id})
        row = result.first()
        if row is None:
            try:
                result = yield Run(self._get_finished_job, {"id": job_id})
            except Exception as exc:
                if sqlstate(exc) != INSUFFICIENT_PRIVILEGE:
                    raise
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise JobNotFoundError(
                    f"job {job_id} is not in {self.schema}.jobs, and this database role may "
                    f"not read {self.schema}.archive or {self.schema}.dlq "
                    f"({reason}): producers read live jobs only; finished "
                    "jobs need a role with the worker's privileges"
                ) from exc
            row = result.first()
        if row is None:
            result = yield Run(self._get_live_job, {"id": job_id})
            row = result.first()
        return Job.from_row(row) if row else None

    def release_unique_key(self, key: str) -> Plan[bool]:
        """Free a key held over time now; True when it was still held."""
        result = yield Run(self._release_unique_key, [key])
        return bool(result.rows and result.rows[0][0])

    def get_live_job_by_key(self, unique_key: str) -> Plan[Job | None]:
        result = yield Run(self._get_live_job_by_key, [unique_key])
        row = result.first()
        return Job.from_row(row) if row else None

    def cancel(self, column: str, value: uuid.UUID | str) -> Plan[int]:
        """Cancel the live jobs whose `column` (id, unique_key or fingerprint) is `value`."""
        result = yield Run(self._cancel_by[column], [value])
        return result.rowcount

    def reschedule(self, job_id: uuid.UUID, run_at: datetime) -> Plan[bool]:
        result = yield Run(self._reschedule, {"run_at": run_at, "id": job_id})
        return result.rowcount == 1

    def list_jobs(
        self, filters: dict[str, Any], after: uuid.UUID | None, limit: int
    ) -> Plan[list[Job]]:
        """Live jobs by id from `after`; `filters` holds every key of `JOB_FILTERS`."""
        result = yield Run(self._list_jobs, {**filters, "after": after, "limit": limit})
        return [Job.from_row(row) for row in result.rows]

    def list_dlq(
        self, queue: str | None, limit: int, statuses: list[str] | None = None
    ) -> Plan[list[Job]]:
        statement = self._list_dlq if queue is None else self._list_dlq_of_queue
        result = yield Run(statement, {"queue": queue, "limit": limit, "statuses": statuses})
        return [Job.from_row(row) for row in result.rows]

    def requeue_dead(self, job_id: uuid.UUID, *, wake: bool = True) -> Plan[bool]:
        """A dead job (in the DLQ or not yet moved there) back to pending with fresh attempts.

        Runs in one transaction (the driver's). False when no such dead job exists, or when
        a live job holds its unique key (the dead one then stays where it is).
        """
        try:
            # A savepoint: an insert of the same unique key, committed between this
            # statement's check and its write, makes it fail; that is a False, not an error.
            result = yield Run(self._requeue_dead_live, [job_id], savepoint=True)
        except Exception as exc:
            if sqlstate(exc) != UNIQUE_VIOLATION:
                raise
            return False
        if result.rowcount:
            if wake:
                yield from self.wake_workers()
            return True
        result = yield Run(self._in_dlq, [job_id])
        if not result.rows:
            return False  # asked first: the worker role may read the DLQ but not requeue from it
        result = yield Run(self._requeue_from_dlq, [job_id])
        if not result.rowcount:
            return False
        yield Run(self._delete_from_dlq, [job_id])
        if wake:
            yield from self.wake_workers()
        return True

    def counts(self) -> Plan[dict[str, int]]:
        """Jobs per status in the live table, plus the archive and DLQ sizes."""
        result = yield Run(self._counts)
        return {str(name): int(n) for name, n in result.rows}

    def queue_summaries(self, window: float) -> Plan[list[QueueSummary]]:
        """Per queue: waiting, running, ended badly, completed within `window` seconds."""
        result = yield Run(self._queue_summaries, {"window": window})
        return [
            QueueSummary(
                queue=str(r[0]),
                due=int(r[1]),
                scheduled=int(r[2]),
                running=int(r[3]),
                dead=int(r[4]),
                dlq=int(r[5]),
                completed=int(r[6]),
                oldest_due_seconds=r[7],
                window=window,
                retrying=int(r[8]),
                paused=bool(r[9]),
            )
            for r in result.rows
        ]

    def run_now(self, job_id: uuid.UUID) -> Plan[bool]:
        """A pending job due later (or waiting out a backoff) is due now."""
        result = yield Run(self._run_now, [job_id])
        if result.rowcount != 1:
            return False
        yield from self.wake_workers()
        return True

    def dead_filter(
        self, queue: str | None, statuses: list[str] | None, before: datetime | None
    ) -> dict[str, Any]:
        return {"queue": queue, "statuses": statuses, "before": before}

    def count_dead(self, filters: dict[str, Any]) -> Plan[int]:
        """Dead jobs that match (in the DLQ, or still in the jobs table)."""
        result = yield Run(self._count_dead, filters)
        row = result.first()
        return int(row[0]) if row else 0

    def requeue_dead_bulk(self, filters: dict[str, Any], limit: int) -> Plan[int]:
        """Up to `limit` dead jobs that match back to pending with fresh attempts: those in
        the DLQ in one statement, those not moved there yet one by one. A job whose unique
        key a live job holds stays where it is. Returns how many were requeued."""
        result = yield Run(self._requeue_dlq_bulk, {**filters, "limit": limit})
        done = result.rowcount
        result = yield Run(self._dead_live_ids, {**filters, "limit": max(limit - done, 0)})
        for (job_id,) in result.rows:
            done += bool((yield from self.requeue_dead(job_id, wake=False)))
        if done:
            yield from self.wake_workers()
        return done

    def wake_workers(self) -> Plan[None]:
        """Wake every idle worker of the schema (delivered at commit): jobs became due."""
        yield Run(self._notify, [self.channel, ""])

    def purge_dead(self, filters: dict[str, Any], limit: int) -> Plan[int]:
        """Delete up to `limit` dead jobs that match, from the DLQ and the jobs table."""
        result = yield Run(self._purge_dlq, {**filters, "limit": limit, "only": None})
        done = result.rowcount
        result = yield Run(
            self._purge_dead_live, {**filters, "limit": max(limit - done, 0), "only": None}
        )
        return done + result.rowcount

    def purge_dead_job(self, job_id: uuid.UUID) -> Plan[bool]:
        """Delete one dead job, from the DLQ or the jobs table."""
        filters = {**self.dead_filter(None, None, None), "limit": 1, "only": job_id}
        result = yield Run(self._purge_dlq, filters)
        if result.rowcount:
            return True
        result = yield Run(self._purge_dead_live, filters)
        return result.rowcount == 1

    # -- queues and workers ----------------------------------------------------------

    def declare_queues(self, names: Sequence[str]) -> Plan[None]:
        yield Run(self._declare_queues, [list(names)])

    def declared_queues(self, names: Sequence[str]) -> Plan[set[str]]:
        """Which of these queues a worker or an operator has declared."""
        result = yield Run(self._declared_queues, [list(names)], savepoint=True)
        return {str(row[0]) for row in result.rows}

    def pause_queue(
        self, name: str, until: datetime | None, by: str | None, reason: str | None
    ) -> Plan[QueueInfo]:
        params = {"name": name, "until": until, "by": by, "reason": reason}
        result = yield Run(self._pause_queue, params)
        return QueueInfo.from_row(result.rows[0])

    def configure_queue(
        self, name: str, limits: QueueLimits, durability: Durability
    ) -> Plan[QueueInfo]:
        params = {
            "name": name,
            **limits.params(),
            "durability": durability.value,
            "channel": self.channel,
            "queues": notify_payload({name}),
        }
        result = yield Run(self._configure_queue, params)
        return QueueInfo.from_row(result.rows[0][:-1])

    def park(self, queue: str, until: datetime, key: str | None) -> Plan[None]:
        yield Run(self._park, {"queue": queue, "key": key, "until": until})

    def unpark(self, queue: str, key: str | None) -> Plan[bool]:
        """Lift a park under way (and wake idle workers); False when there was none."""
        params = {
            "queue": queue,
            "key": key,
            "channel": self.channel,
            "queues": notify_payload({queue}),
        }
        result = yield Run(self._unpark, params)
        return bool(result.rows and result.rows[0][0])

    def resume_queue(self, name: str) -> Plan[bool]:
        """Lift the queue's pause and wake its idle workers; False when it was not paused."""
        result = yield Run(self._resume_queue, [name, self.channel, notify_payload({name})])
        return bool(result.rows and result.rows[0][0])

    def list_queues(self) -> Plan[list[QueueInfo]]:
        result = yield Run(self._list_queues)
        return [QueueInfo.from_row(row) for row in result.rows]

    def worker_beat(
        self, worker: WorkerIdentity, queues: Sequence[str], ttl: float, stopping: bool
    ) -> Plan[bool]:
        """Register or beat this process's worker: alive for `ttl` seconds more. Answers
        whether anyone listens to the job events."""
        params = {
            "id": worker.id,
            "host": worker.host,
            "pid": worker.pid,
            "version": worker.version,
            "queues": list(queues),
            "ttl": ttl,
            "stopping": stopping,
        }
        result = yield Run(self._worker_beat, params)
        row = result.first()
        return bool(row and row[0])

    def events_listened(self) -> Plan[bool]:
        """Whether a server of the HTTP API listens to the job events now. Asked in a
        savepoint: a role that may not read the table (or a schema without it) hears no."""
        try:
            result = yield Run(self._events_listened, savepoint=True)
        except Exception as exc:
            if sqlstate(exc) not in (INSUFFICIENT_PRIVILEGE, *MISSING_SCHEMA_OBJECT):
                raise
            return False
        row = result.first()
        return bool(row and row[0])

    def listener_beat(self, listener: uuid.UUID, ttl: float) -> Plan[None]:
        """A server listening to the events says so, for `ttl` seconds more."""
        yield Run(self._listener_beat, {"id": listener, "ttl": ttl})

    def listener_gone(self, listener: uuid.UUID) -> Plan[None]:
        yield Run(self._listener_gone, [listener])

    def worker_gone(self, worker_id: uuid.UUID) -> Plan[None]:
        yield Run(self._worker_gone, [worker_id])

    def forget_workers(self, after: float) -> Plan[int]:
        """Delete the rows of workers expired `after` seconds ago or more."""
        result = yield Run(self._forget_workers, [after])
        return result.rowcount

    def forget_controls(self, limit: int = 1000) -> Plan[int]:
        """Delete parks that ended and fair turns of keys long idle; how many rows."""
        result = yield Run(self._forget_controls, {"limit": limit})
        row = result.first()
        return int(row[0]) if row else 0

    def forget_expired_keys(self, limit: int = 1000) -> Plan[int]:
        """Delete up to `limit` unique keys whose period has ended; how many."""
        result = yield Run(self._forget_expired_keys, [limit])
        return result.rowcount

    def list_workers(self) -> Plan[list[WorkerInfo]]:
        result = yield Run(self._list_workers)
        return [WorkerInfo.from_row(row) for row in result.rows]

    def lead(self, name: str, worker_id: uuid.UUID, ttl: float) -> Plan[Lease]:
        """Take or renew the lease `name` for `ttl` seconds (database clock): when nobody
        holds it, its holder let it expire, or it is this worker's already."""
        result = yield Run(self._lead, {"name": name, "worker": worker_id, "ttl": ttl})
        row = result.first()
        if row is None:  # a row released and deleted meanwhile by hand: nobody holds it
            return Lease(None, 0, False)
        return Lease(row[0], int(row[1]), bool(row[2]))

    def resign(self, name: str, worker_id: uuid.UUID) -> Plan[bool]:
        """Give the lease `name` up now, when this worker holds it; True when it did."""
        result = yield Run(self._resign, {"name": name, "worker": worker_id})
        return result.rowcount == 1

    # -- schedules ---------------------------------------------------------------------

    def register_schedules(self, definitions: Sequence[tuple[Any, ...]]) -> Plan[None]:
        """Write the schedules registered here (`Schedule.definition()` rows)."""
        names, queues, crons, everys, zones, missed, next_slots = (
            list(column) for column in zip(*definitions, strict=True)
        )
        params = {
            "names": names,
            "queues": queues,
            "crons": crons,
            "everys": everys,
            "zones": zones,
            "missed": missed,
            "next": next_slots,
        }
        yield Run(self._register_schedules, params)

    def schedules_due(self, names: Sequence[str]) -> Plan[list[StoredSchedule]]:
        """Where each of `names` that is not paused stands, on the database's clock."""
        result = yield Run(self._schedules_due, [list(names)])
        return [StoredSchedule(*row) for row in result.rows]

    def take_slots(
        self,
        schedule: Schedule,
        seen: datetime,
        last_slot: datetime,
        next_slot: datetime | None,
        queue: str | None,
    ) -> Plan[bool]:
        """Move the schedule past `last_slot`, when it still stands at `seen` and is not
        paused, and write its rule as `schedule` has it; True when this transaction took
        the slots (and so enqueues them)."""
        params = {
            "name": schedule.name,
            "seen": seen,
            "last_slot": last_slot,
            "next_slot": next_slot,
            "queue": queue,
            "cron": schedule.cron,
            "every": schedule.every,
            "timezone": schedule.timezone,
            "missed": schedule.missed,
        }
        result = yield Run(self._take_slots, params)
        return bool(result.rows)

    def slots_enqueued(self, name: str, n: int, last_job: Sequence[uuid.UUID]) -> Plan[None]:
        """Count the jobs a round enqueued, and remember the last one (if any)."""
        params = {"name": name, "n": n, "job": last_job[0] if last_job else None}
        yield Run(self._slots_enqueued, params)

    def list_schedules(self) -> Plan[list[ScheduleInfo]]:
        result = yield Run(self._list_schedules)
        return [ScheduleInfo.from_row(row) for row in result.rows]

    def pause_schedule(self, name: str, paused: bool) -> Plan[ScheduleInfo | None]:
        """Pause or resume it; None when no such schedule is stored."""
        result = yield Run(self._pause_schedule if paused else self._resume_schedule, [name])
        return ScheduleInfo.from_row(result.rows[0]) if result.rows else None

    def delete_schedule(self, name: str) -> Plan[bool]:
        result = yield Run(self._delete_schedule, [name])
        return result.rowcount == 1

    def listen(self) -> Plan[None]:
        """LISTEN for inserts (what wakes workers)."""
        yield Run(self._listen)

    def listen_events(self) -> Plan[None]:
        """LISTEN for job transitions (what the HTTP API streams)."""
        yield Run(self._listen_events)


def notify_payload(queues: set[str]) -> str:
    """The queue names, one per line; empty (meaning "any queue") when too long for NOTIFY."""
    payload = "\n".join(sorted(queues))
    return payload if len(payload.encode()) < 7000 and "\n" not in "".join(queues) else ""
