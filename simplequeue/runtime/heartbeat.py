"""Heartbeats for every job this process runs: one statement per interval, from a thread.

The thread has its own connection, so a handler that blocks the event loop cannot
silence its job's heartbeat and get it taken away while it still runs. Each job is
tracked for the span of its processing (`track()` to `untrack()`), however that ends,
then held (`hold()`) until the result writer has stored its outcome: a result waiting out
a database outage must not have its job reaped and run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from simplequeue.audience import Audience
from simplequeue.drivers import commits_alone, run_sync
from simplequeue.durability import FastQueues
from simplequeue.fleet import WorkerIdentity
from simplequeue.job import Job
from simplequeue.runtime.outage import DatabaseHealth, Outage
from simplequeue.stopping import StopReason
from simplequeue.store import MISSING_SCHEMA_OBJECT, Plan, Store, sqlstate

__all__ = ["Heartbeater", "Presence", "Run"]

T = TypeVar("T")

log = logging.getLogger("simplequeue.heartbeat")


@dataclass
class Presence:
    """This process's worker row, beaten with the jobs: who it is, the queues it handles
    (declared at its first beat), and how long a beat keeps it alive."""

    worker: WorkerIdentity
    queues: Callable[[], list[str]]
    """The queues the worker handles now."""
    ttl: float
    audience: Audience
    """Told at each beat whether anyone listens to the job events."""
    declared: frozenset[str] = frozenset()
    """The queues declared so far: a handler registered after start is declared too."""
    broken: bool = False
    """The schema has no workers or queues table (not migrated): job beats go on without."""
    refused: bool = False
    """The last beat of the row was refused (logged once until it is written again)."""


Run = tuple[uuid.UUID, int]
"""One run of a job: its id and the lease its claim took. A job reaped and claimed again
while an earlier run still executes has two runs, each beating (or not) for itself."""


class Heartbeater:
    """The one duty that runs in a thread rather than as a `Service` task: a handler that
    blocks the event loop must not stop its own job's heartbeat. It meets database trouble
    as the services do, and reports it to the same `DatabaseHealth`."""

    name = "heartbeat"

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        store: Store,
        interval: float,
        *,
        health: DatabaseHealth | None = None,
        presence: Presence | None = None,
        fast_queues: FastQueues | None = None,
    ) -> None:
        self._presence = presence
        self._fast = fast_queues or FastQueues()
        self._connect = connect
        self._store = store
        self._interval = interval
        self._running: dict[Run, Job] = {}
        self._held: dict[Run, str | None] = {}  # finished, result not yet written: its queue
        self._lost: set[Run] = set()  # running here, no longer ours in the database
        self.lost_total = 0
        self._shutting_down = False
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._nudged = threading.Event()  # beat now, not at the end of the interval
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self.outage = Outage(log, self.name, health or DatabaseHealth())

    def track(self, job: Job) -> None:
        """Beat for this run of `job` until `untrack()`: call both around its processing,
        in try/finally."""
        with self._lock:
            self._running[(job.id, job.lease)] = job
            shutting_down = self._shutting_down
        if shutting_down:  # claimed while the stop began: it hears it all the same
            job.stopping.set(StopReason.SHUTDOWN)

    def untrack(self, job: Job) -> None:
        run_id, lease, _ = job._run_as_claimed()
        run = (run_id, lease)
        with self._lock:
            self._running.pop(run, None)
            self._lost.discard(run)

    def signal_shutdown(self) -> None:
        """Tell every run, those already tracked and those tracked from now on, that the
        worker is stopping (`job.stopping`)."""
        with self._lock:
            self._shutting_down = True
            jobs = list(self._running.values())
        self._nudged.set()  # the worker's row says it is stopping at once
        for job in jobs:
            job.stopping.set(StopReason.SHUTDOWN)

    def is_lost(self, job: Job) -> bool:
        """True once a beat found this run cancelled or taken over elsewhere."""
        run_id, lease, _ = job._run_as_claimed()
        return (run_id, lease) in self._lost

    def runs(self) -> set[Run]:
        """Every run this process still beats for: the reaper of this process leaves them
        alone, whatever their heartbeat says (a pause of the process, a locked row)."""
        with self._lock:
            return self._running.keys() | self._held.keys()

    def hold(self, job_id: uuid.UUID, lease: int, queue: str | None = None) -> None:
        """Beat for a finished attempt until `release()`: its outcome is not stored yet.
        `queue`: the job's (its beats commit fast only when it is fast)."""
        with self._lock:
            self._held[(job_id, lease)] = queue

    def release(self, keys: Iterable[Run]) -> None:
        """Stop beating for finished attempts (job id, lease) whose outcome is stored."""
        with self._lock:
            for key in keys:
                self._held.pop(key, None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="simplequeue-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop beating; wait up to `timeout` seconds for the thread (blocking)."""
        self._stopping.set()
        self._nudged.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._forget_thread()

    async def stop_async(self, timeout: float) -> None:
        """Stop beating; wait up to `timeout` seconds for the thread without taking a
        thread of the loop's executor, which handlers may have filled."""
        self._stopping.set()
        self._nudged.set()
        deadline = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive():
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.01)
        self._forget_thread()

    def _forget_thread(self) -> None:
        """A thread stuck on a silent network is left to end on its own: it is a daemon,
        and its connection gives up within PEER_WATCH's bounds."""
        if self._thread is not None and self._thread.is_alive():
            log.warning("the heartbeat thread is still waiting for the database; left behind")
        self._thread = None

    def beat_now(self) -> None:
        """One round of heartbeats (the thread calls it every interval), the worker's own
        row's first."""
        beats = sorted(self.runs())
        try:
            if self._beat_presence() and not beats:
                self.outage.recovered()
            if not beats:
                return
            alive = self._beat(beats)
        except psycopg.Error as exc:
            self.outage.failed(exc)
            self._close()
            return
        self.outage.recovered()
        with self._lock:
            # Runs that ended meanwhile are not lost; those already known are not news.
            gone = (set(beats) - alive) & self._running.keys() - self._lost
            self._lost |= gone
            self.lost_total += len(gone)
            told = [self._running[run] for run in gone]
        for job in told:  # the handler may stop early: nothing it writes now counts
            job.stopping.set(StopReason.LOST)
        if gone:
            log.warning(
                "%d running job(s) were cancelled or taken over elsewhere; their "
                "results will be ignored",
                len(gone),
                extra={"job_ids": sorted(str(job_id) for job_id, _ in gone)},
            )

    def _beat_presence(self, *, gone: bool = False) -> bool:
        """Beat (or, `gone`, delete) the worker's row; True when it did. A statement the
        database refuses (a schema not yet migrated) is logged once and never stops the
        jobs' beats."""
        presence = self._presence
        if presence is None or presence.broken:
            return False
        store = self._store

        def plan() -> Plan[None]:
            if gone:
                yield from store.worker_gone(presence.worker.id)
                return
            with self._lock:
                stopping = self._shutting_down
            queues = presence.queues()
            listened = yield from store.worker_beat(presence.worker, queues, presence.ttl, stopping)
            presence.audience.heard(listened)
            if not presence.declared.issuperset(queues):
                yield from store.declare_queues(sorted(set(queues) - presence.declared))
                presence.declared = presence.declared | set(queues)

        try:
            self._on_connection(plan)
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            if sqlstate(exc) in MISSING_SCHEMA_OBJECT:
                presence.broken = True
                log.warning("the worker's row cannot be written (%s); is the schema migrated?", exc)
            elif not presence.refused:  # read-only for a while, a failover: tried next beat
                log.warning("the worker's row cannot be written (%s); trying again", exc)
            presence.refused = True
            return False
        if presence.refused:
            log.info("the worker's row is written again")
            presence.refused = False
        return True

    def _on_connection(self, plan: Callable[[], Plan[T]]) -> T:
        """Run a plan on the thread's connection, opened (again) when it has none."""
        conn = self._conn
        if conn is not None and not conn.closed:
            try:
                return run_sync(conn, plan())
            except psycopg.OperationalError:
                if not conn.closed:
                    raise  # the statement failed, not the connection
                # The connection was dropped (a server restart, pg_terminate_backend): one
                # fresh try now rather than a missed beat, which brings a job closer to stalled.
                self._close()
        self._conn = self._connect()
        return run_sync(self._conn, plan())

    def _beat(self, beats: list[Run]) -> set[Run]:
        """One statement for every run; it commits fast only when every run's queue is
        fast (one durable queue's job among them makes it durable)."""
        with self._lock:
            queues = [
                job._run_as_claimed()[2]
                if (job := self._running.get(run)) is not None
                else self._held.get(run)
                for run in beats
            ]
        fast = self._fast.all_fast(queues)

        def plan() -> Plan[set[Run]]:
            conn = self._conn
            alone = conn is not None and commits_alone(conn)
            return self._store.heartbeat(beats, fast=fast and alone)

        return self._on_connection(plan)

    def _run(self) -> None:
        try:
            self._round()  # the worker's row at once: operators see it start
            while True:
                self._nudged.wait(self._interval)
                self._nudged.clear()
                if self._stopping.is_set():
                    break
                self._round()
            with contextlib.suppress(psycopg.Error):
                self._beat_presence(gone=True)
        finally:
            self._close()

    def _round(self) -> None:
        try:
            self.beat_now()
        except Exception:  # supervised like the services: a bug must not end the beats
            log.exception("heartbeat: a round failed unexpectedly; beating on")
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
