"""The producer and operator calls, written once for `SimpleQueue` and `SyncQueue`.

Each call checks its arguments at once, so bad input raises before a connection is taken
or a statement runs, and returns the store's plan for it; the facade runs that plan on
a connection of its pool, or on the caller's (`conn=`), with its driver.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from simplequeue.config import QueueConfig
from simplequeue.errors import InvalidArgumentError, InvalidJobError
from simplequeue.job import Job, JobStatus
from simplequeue.stats import QueueSummary
from simplequeue.store import Plan, Store
from simplequeue.validation import as_seconds, check_key, check_time

__all__ = ["MAX_LIST", "WAIT_POLL", "Operations"]

T = TypeVar("T")
U = TypeVar("U")

MAX_LIST = 10_000
"""The most jobs one list_dlq call returns: page through more with the queue filter."""

WAIT_POLL = (0.005, 1.5, 0.25)
"""wait_for_job reads the job again after 5 ms, then 1.5 times later each time, up to
every 250 ms."""


class Connection(Protocol):
    """What an insert plan needs to know of the connection it will run on."""

    @property
    def can_copy(self) -> bool: ...

    def commits_each_statement(self) -> bool: ...


class Operations:
    """The calls of one queue: argument checks, then the store's plan."""

    def __init__(self, store: Store, config: QueueConfig) -> None:
        self.store = store
        self.config = config

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
        seen: set[uuid.UUID] = set()
        limit = self.config.max_payload_bytes
        for index, job in enumerate(checked):
            if not isinstance(job, Job):
                raise InvalidJobError(
                    f"item {index} is {type(job).__name__}, not a simplequeue.Job"
                )
            if job.id in seen:
                raise InvalidJobError(
                    f"item {index} is the same job as an earlier item (the same Job object, "
                    "or a copy of it)"
                )
            seen.add(job.id)
            job._check()  # its attributes may have changed since it was built
            size = len(job.encoded_data.encode("utf-8"))
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
        retry = any([job._begin_insert() for job in jobs])  # a list: every job is readied
        committed = conn.commits_each_statement()
        inserted = yield from self.store.insert_jobs(
            jobs,
            notify=self.config.use_notify,
            retry=retry,
            can_copy=conn.can_copy,
        )
        ids: list[uuid.UUID | None] = []
        for job in jobs:
            stored = job.id in inserted
            job._stored = stored and committed
            ids.append(job.id if stored else None)
        return ids

    # -- operating -------------------------------------------------------------------

    def get_job(self, job_id: uuid.UUID | str) -> Plan[Job | None]:
        return self.store.get_job(as_uuid(job_id))

    def get_job_by_unique_key(self, unique_key: str) -> Plan[Job | None]:
        check_key("unique_key", unique_key, required=True, error=InvalidArgumentError)
        return self.store.get_live_job_by_key(unique_key)

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
    ) -> Plan[list[Job]]:
        check_key("queue", queue, required=False, error=InvalidArgumentError)
        since = None if after is None else as_uuid(after)
        return self.store.list_jobs(queue, _statuses(status), since, _limit(limit))

    def list_dlq(self, queue: str | None, limit: int) -> Plan[list[Job]]:
        check_key("queue", queue, required=False, error=InvalidArgumentError)
        return self.store.list_dlq(queue, _limit(limit))

    def requeue_dlq_job(self, job_id: uuid.UUID | str) -> Plan[bool]:
        """Run it atomically: its statements are one change."""
        return self.store.requeue_dead(as_uuid(job_id))

    def queue_summaries(self, window: float) -> Plan[list[QueueSummary]]:
        seconds_ = as_seconds("window", window, allow_zero=False, error=InvalidArgumentError)
        return self.store.queue_summaries(seconds_)

    def counts(self) -> Plan[dict[str, int]]:
        keys = [s.value for s in JobStatus] + ["archive", "dlq"]
        return _then(self.store.counts(), lambda found: {k: found.get(k, 0) for k in keys})


def _limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
        raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_LIST}, got {limit!r}")
    return limit


def _statuses(status: object) -> list[str] | None:
    """None (every status), or the statuses named, each checked."""
    if status is None:
        return None
    many: Iterable[Any] = (
        status if isinstance(status, Iterable) and not isinstance(status, str) else [status]
    )
    try:
        return [JobStatus(s).value for s in many]
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidArgumentError(f"status must be one of {known}, got {status!r}") from None


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


def as_uuid(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidArgumentError(f"not a job id: {value!r}") from None
