"""The producer and operator calls, written once for `SimpleQueue` and `SyncQueue`.

Each call checks its arguments at once, so bad input raises before a connection is taken
or a statement runs, and returns the store's plan for it; the facade runs that plan on
a connection of its pool, or on the caller's (`conn=`), with its driver.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from simplequeue import tracing
from simplequeue.audience import Audience
from simplequeue.config import MAX_SETTING_SECONDS, QueueConfig
from simplequeue.durability import Durability, check_durability
from simplequeue.errors import InvalidArgumentError, InvalidJobError, UnknownQueueError
from simplequeue.fleet import QueueInfo, WorkerInfo
from simplequeue.job import Job, JobStatus
from simplequeue.limits import QueueLimits, check_park_until
from simplequeue.schedules import ScheduleInfo
from simplequeue.stats import QueueSummary
from simplequeue.store import INSUFFICIENT_PRIVILEGE, UNDEFINED_TABLE, Plan, Store, sqlstate
from simplequeue.validation import as_seconds, check_key, check_time

__all__ = ["MAX_LIST", "WAIT_POLL", "Operations"]

log = logging.getLogger("simplequeue.producer")

T = TypeVar("T")
U = TypeVar("U")

MAX_LIST = 10_000
"""The most jobs one list call returns: page through more."""

MAX_BULK = 1_000_000
"""The most dead jobs one bulk DLQ call changes."""

WAIT_POLL = (0.005, 1.5, 0.25)
"""wait_for_job reads the job again after 5 ms, then 1.5 times later each time, up to
every 250 ms."""


class Connection(Protocol):
    """What an insert plan needs to know of the connection it will run on."""

    @property
    def can_copy(self) -> bool: ...

    @property
    def array_literals(self) -> bool: ...

    def commits_each_statement(self) -> bool: ...


class Operations:
    """The calls of one queue: argument checks, then the store's plan."""

    def __init__(self, store: Store, config: QueueConfig) -> None:
        self.store = store
        self.config = config
        self._declared: set[str] = set()
        self.audience = Audience()
        """Whether a server of the HTTP API listens to the job events (asked now and then)."""
        """Queues known to be declared (or warned about): checked once per process."""

    # -- producing -------------------------------------------------------------------

    def one_job(self, job: object) -> list[Job]:
        if not isinstance(job, Job):
            raise InvalidArgumentError(
                f"insert_job takes a simplequeue.Job, got {type(job).__name__}"
                + ("; use insert_jobs for several" if isinstance(job, list | tuple) else "")
            )
        return self.jobs([job])

    def jobs(self, jobs: object) -> list[Job]:
        """The jobs of an insert_jobs call, each checked; InvalidJobError names the first
        bad one."""
        if isinstance(jobs, Job | str | bytes | Mapping) or not isinstance(jobs, Iterable):
            raise InvalidArgumentError(
                f"insert_jobs takes a sequence of jobs, got {type(jobs).__name__}"
                + ("; use insert_job for one" if isinstance(jobs, Job) else "")
            )
        checked = list(jobs)
        seen: set[int] = set()  # the ids as integers: hashing a UUID runs Python code
        limit = self.config.max_payload_bytes
        for index, job in enumerate(checked):
            if not isinstance(job, Job):
                raise InvalidJobError(
                    f"item {index} is {type(job).__name__}, not a simplequeue.Job"
                )
            number = job.id.int
            if number in seen:
                raise InvalidJobError(
                    f"item {index} is the same job as an earlier item (the same Job object, "
                    "or a copy of it)"
                )
            seen.add(number)
            job._check()  # its attributes may have changed since it was built
            text = job.encoded_data
            if len(text) * 4 > limit:  # else within it: a character is at most 4 bytes
                size = len(text.encode("utf-8"))
                if size > limit:
                    raise InvalidJobError(
                        f"item {index}: job data is {size} bytes; the limit is {limit} "
                        "(max_payload_bytes). Store large blobs elsewhere and pass a reference."
                    )
        return checked

    def insert(self, jobs: Sequence[Job], conn: Connection) -> Plan[list[uuid.UUID | None]]:
        """Insert checked jobs on `conn`; ids aligned with `jobs` (None: deduplicated).

        Only an insert that commits on its own is known to have stored the jobs: in a
        caller's transaction, inserting the same objects again is a retry of it.
        """
        # Readied before the first statement: a second insert of the same objects, begun
        # while this one waits on the database, must see them sent, not stored already.
        retry = any([job._begin_insert() for job in jobs])  # a list: every job is readied
        yield from self._check_queues({job.queue for job in jobs})
        notify = self.config.use_notify
        if notify and self.audience.stale():
            self.audience.heard((yield from self.store.events_listened()))
        committed = conn.commits_each_statement()
        with tracing.inserting(jobs):
            inserted = yield from self.store.insert_jobs(
                jobs,
                notify=notify,
                retry=retry,
                can_copy=conn.can_copy,
                array_literals=conn.array_literals,
                publish=self.audience.listened,
            )
        if inserted is None or len(inserted) == len(jobs):  # every one (of these jobs)
            for job in jobs:
                job._stored = committed
            return [job.id for job in jobs]
        ids: list[uuid.UUID | None] = []
        for job in jobs:
            stored = job.id in inserted
            job._stored = stored and committed
            ids.append(job.id if stored else None)
        return ids

    def handled_here(self, queue: str) -> None:
        """This process handles the queue: its worker declares it when it starts."""
        self._declared.add(queue)

    def _check_queues(self, queues: set[str]) -> Plan[None]:
        """Warn once per queue and process about an insert into a queue no worker and no
        operator ever declared (a typo would otherwise wait forever); refuse it with
        `strict_queues`. One read per queue and process, in a savepoint of the caller's
        transaction; a role that may not read the queues table skips the check."""
        unknown = queues - self._declared
        if not unknown:
            return
        try:
            declared = yield from self.store.declared_queues(sorted(unknown))
        except Exception as exc:
            if sqlstate(exc) not in (INSUFFICIENT_PRIVILEGE, UNDEFINED_TABLE):
                raise
            self._declared |= unknown
            return
        self._declared |= declared
        undeclared = sorted(unknown - declared)
        if not undeclared:
            return
        if self.config.strict_queues:
            raise UnknownQueueError(
                f"no worker handles queue(s) {', '.join(map(repr, undeclared))} and no operator "
                "declared them (strict_queues): a typo? Start a worker for them, or declare "
                "them with declare_queues() or `simplequeue queues declare`"
            )
        self._declared.update(undeclared)
        for name in undeclared:
            log.warning(
                "queue %r has no worker and was never declared: its jobs wait until a worker "
                "handles it (a typo?). Declare it with declare_queues() or `simplequeue queues "
                "declare` to silence this; strict_queues=True refuses such inserts",
                name,
            )

    # -- operating -------------------------------------------------------------------

    def get_job(self, job_id: uuid.UUID | str) -> Plan[Job | None]:
        return self.store.get_job(as_uuid(job_id))

    def get_job_by_unique_key(self, unique_key: str) -> Plan[Job | None]:
        check_key("unique_key", unique_key, required=True, error=InvalidArgumentError)
        return self.store.get_live_job_by_key(unique_key)

    def release_unique_key(self, unique_key: str) -> Plan[bool]:
        check_key("unique_key", unique_key, required=True, error=InvalidArgumentError)
        return self.store.release_unique_key(unique_key)

    def cancel_job(self, job_id: uuid.UUID | str) -> Plan[bool]:
        return _then(self.store.cancel("id", as_uuid(job_id)), _one)

    def cancel_job_by_unique_key(self, unique_key: str) -> Plan[bool]:
        check_key("unique_key", unique_key, required=True, error=InvalidArgumentError)
        return _then(self.store.cancel("unique_key", unique_key), _one)

    def cancel_jobs_by_fingerprint(self, fingerprint: str) -> Plan[int]:
        check_key("fingerprint", fingerprint, required=True, error=InvalidArgumentError)
        return self.store.cancel("fingerprint", fingerprint)

    def reschedule_job(self, job_id: uuid.UUID | str, run_at: datetime) -> Plan[bool]:
        check_time("run_at", run_at, error=InvalidArgumentError)
        return self.store.reschedule(as_uuid(job_id), run_at)

    def list_jobs(
        self,
        queue: str | None,
        status: JobStatus | str | Iterable[JobStatus | str] | None,
        after: uuid.UUID | str | None,
        limit: int,
        *,
        unique_key: str | None = None,
        fingerprint: str | None = None,
        since: datetime | None = None,
        worker: uuid.UUID | str | None = None,
    ) -> Plan[list[Job]]:
        check_key("queue", queue, required=False, error=InvalidArgumentError)
        check_key("unique_key", unique_key, required=False, error=InvalidArgumentError)
        check_key("fingerprint", fingerprint, required=False, error=InvalidArgumentError)
        if since is not None:
            check_time("since", since, error=InvalidArgumentError)
        filters = {
            "queue": queue,
            "statuses": _statuses(status),
            "unique_key": unique_key,
            "fingerprint": fingerprint,
            "since": since,
            "worker": None if worker is None else as_uuid(worker, "worker id"),
        }
        start = None if after is None else as_uuid(after)
        return self.store.list_jobs(filters, start, _limit(limit))

    def list_dlq(
        self,
        queue: str | None,
        limit: int,
        status: JobStatus | str | Iterable[JobStatus | str] | None = None,
    ) -> Plan[list[Job]]:
        check_key("queue", queue, required=False, error=InvalidArgumentError)
        return self.store.list_dlq(queue, _limit(limit), _statuses(status, dead=True))

    def requeue_dlq_job(self, job_id: uuid.UUID | str) -> Plan[bool]:
        """Run it atomically: its statements are one change."""
        return self.store.requeue_dead(as_uuid(job_id))

    def retry_job(self, job_id: uuid.UUID | str) -> Plan[bool]:
        """A pending job due now, or a dead one back to pending with fresh attempts. Run it
        atomically: its statements are one change."""
        job = as_uuid(job_id)

        def plan() -> Plan[bool]:
            return (yield from self.store.run_now(job)) or (yield from self.store.requeue_dead(job))

        return plan()

    def dead_filters(
        self,
        queue: str | None,
        status: JobStatus | str | Iterable[JobStatus | str] | None,
        before: datetime | None,
    ) -> dict[str, Any]:
        """The dead jobs a bulk DLQ call picks: of `queue`, of `status`, ended before."""
        check_key("queue", queue, required=False, error=InvalidArgumentError)
        if before is not None:
            check_time("before", before, error=InvalidArgumentError)
        return self.store.dead_filter(queue, _statuses(status, dead=True), before)

    def count_dlq(self, filters: dict[str, Any]) -> Plan[int]:
        return self.store.count_dead(filters)

    def requeue_dlq(self, filters: dict[str, Any], limit: int) -> Plan[int]:
        return self.store.requeue_dead_bulk(filters, _limit(limit, bulk=True))

    def purge_dlq(self, filters: dict[str, Any], limit: int) -> Plan[int]:
        return self.store.purge_dead(filters, _limit(limit, bulk=True))

    def purge_dlq_job(self, job_id: uuid.UUID | str) -> Plan[bool]:
        return self.store.purge_dead_job(as_uuid(job_id))

    # -- queues and workers ----------------------------------------------------------

    def pause_queue(
        self, name: str, until: datetime | None, by: str | None, reason: str | None
    ) -> Plan[QueueInfo]:
        check_key("queue", name, required=True, error=InvalidArgumentError)
        if until is not None:
            check_time("until", until, error=InvalidArgumentError)
            if until <= datetime.now(UTC):
                raise InvalidArgumentError(
                    f"until is not in the future ({until.isoformat()}): the pause would end "
                    "at once (and end a pause under way)"
                )
        check_text("by", by)
        check_text("reason", reason)
        return self.store.pause_queue(name, until, by, reason)

    def resume_queue(self, name: str) -> Plan[bool]:
        check_key("queue", name, required=True, error=InvalidArgumentError)
        return self.store.resume_queue(name)

    def configure_queue(
        self, name: str, limits: QueueLimits, durability: object = Durability.DURABLE
    ) -> Plan[QueueInfo]:
        check_key("queue", name, required=True, error=InvalidArgumentError)
        return self.store.configure_queue(name, limits, check_durability(durability))

    def park(self, name: str, until: datetime, key: str | None) -> Plan[None]:
        check_key("queue", name, required=True, error=InvalidArgumentError)
        check_key("key", key, required=False, error=InvalidArgumentError)
        return self.store.park(name, check_park_until(until), key)

    def unpark(self, name: str, key: str | None) -> Plan[bool]:
        check_key("queue", name, required=True, error=InvalidArgumentError)
        check_key("key", key, required=False, error=InvalidArgumentError)
        return self.store.unpark(name, key)

    def declare_queues(self, names: Iterable[str]) -> Plan[None]:
        names = list(names) if not isinstance(names, str) else [names]
        for name in names:
            check_key("queue", name, required=True, error=InvalidArgumentError)

        def plan() -> Plan[None]:
            yield from self.store.declare_queues(names)
            self._declared.update(names)  # once the database has them

        return plan()

    # -- schedules -------------------------------------------------------------------

    def list_schedules(self) -> Plan[list[ScheduleInfo]]:
        return self.store.list_schedules()

    def pause_schedule(self, name: str, paused: bool) -> Plan[ScheduleInfo | None]:
        check_key("schedule", name, required=True, error=InvalidArgumentError)
        return self.store.pause_schedule(name, paused)

    def delete_schedule(self, name: str) -> Plan[bool]:
        check_key("schedule", name, required=True, error=InvalidArgumentError)
        return self.store.delete_schedule(name)

    def list_queues(self) -> Plan[list[QueueInfo]]:
        return self.store.list_queues()

    def list_workers(self) -> Plan[list[WorkerInfo]]:
        return self.store.list_workers()

    def queue_summaries(self, window: float) -> Plan[list[QueueSummary]]:
        seconds_ = as_seconds(
            "window",
            window,
            allow_zero=False,
            maximum=MAX_SETTING_SECONDS,
            error=InvalidArgumentError,
        )
        return self.store.queue_summaries(seconds_)

    def counts(self) -> Plan[dict[str, int]]:
        keys = [s.value for s in JobStatus] + ["archive", "dlq"]
        return _then(self.store.counts(), lambda found: {k: found.get(k, 0) for k in keys})


def _limit(limit: object, *, bulk: bool = False) -> int:
    most = MAX_BULK if bulk else MAX_LIST
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {most}, got {limit!r}")
    return limit


def _statuses(status: object, *, dead: bool = False) -> list[str] | None:
    """None (every status), or the statuses named, each checked (`dead`: dead ones only)."""
    if status is None:
        return None
    many: Iterable[Any] = (
        status if isinstance(status, Iterable) and not isinstance(status, str) else [status]
    )
    allowed = [s for s in JobStatus if s.is_dead or not dead]
    try:
        found = [JobStatus(s) for s in many]
    except ValueError:
        found = []
    if not found or any(s not in allowed for s in found):
        known = ", ".join(s.value for s in allowed)
        raise InvalidArgumentError(f"status must be one of {known}, got {status!r}")
    return [s.value for s in found]


def check_text(name: str, value: object, most: int = 1000) -> None:
    """An optional short text (who paused a queue, and why)."""
    if value is None:
        return
    if not isinstance(value, str) or "\x00" in value or len(value) > most:
        raise InvalidArgumentError(
            f"{name} must be a text of at most {most} characters without NUL, got {value!r:.80}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"{name} is not valid unicode: {exc}") from None


def _then(plan: Plan[T], after: Callable[[T], U]) -> Plan[U]:
    return after((yield from plan))


def _one(count: int) -> bool:
    return count == 1


def seconds(name: str, value: object) -> float:
    """A finite, non-negative number of seconds, or InvalidArgumentError before anything runs."""
    return as_seconds(name, value, error=InvalidArgumentError)


def first_attempt_over(job: Job) -> bool:
    """What wait_for_job waits for: the job's first processing attempt has ended."""
    if job.status is JobStatus.RUNNING:
        return False
    if job.status is JobStatus.PENDING:
        return job.attempt >= 1 or job.reprocess_count >= 1
    return True


def wait_timed_out(job_id: uuid.UUID, last: Job | None, timeout: Any) -> TimeoutError:
    state = "not read yet" if last is None else f"still {last.status.value}"
    return TimeoutError(f"job {job_id} is {state} after {timeout}s")


def as_uuid(value: uuid.UUID | str, what: str = "job id") -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidArgumentError(f"not a {what}: {value!r}") from None
