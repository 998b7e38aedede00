"""The runtime: the background services one `SimpleQueue.start()` runs in this process.

It builds them around one `DatabaseHealth`, starts each as a supervised task (the
heartbeat as a thread), decides in one place what a crashed service does, and stops them
in the order that loses no result: claims first, then the running jobs, then the writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.audience import Audience
from simplequeue.config import QueueConfig
from simplequeue.connections import borrow, dedicated_settings, listen_connector
from simplequeue.drivers import run
from simplequeue.durability import FastQueues
from simplequeue.fleet import WorkerIdentity
from simplequeue.job import Job
from simplequeue.maintenance import janitor_enabled, warn_no_janitor
from simplequeue.maintenance.janitor import Janitor
from simplequeue.maintenance.reaper import Reaper
from simplequeue.registry import QueueRegistry
from simplequeue.runtime.controls import FastQueuesWatcher
from simplequeue.runtime.executor import Executor
from simplequeue.runtime.heartbeat import Heartbeater, Presence
from simplequeue.runtime.leader import RESIGN_TIMEOUT, Leadership
from simplequeue.runtime.listener import Listener
from simplequeue.runtime.outage import DatabaseHealth
from simplequeue.runtime.poller import CONTROLS_REFRESH, PROMOTE_BATCH, Poller
from simplequeue.runtime.progress import ProgressWriter
from simplequeue.runtime.results import ResultWriter
from simplequeue.runtime.scheduler import Insert, Scheduler
from simplequeue.runtime.service import PeriodicService, Service
from simplequeue.schedules import ScheduleBook
from simplequeue.stats import QueueStats
from simplequeue.store import Store

__all__ = ["Runtime"]

log = logging.getLogger("simplequeue.worker")

SHUTDOWN_WRITE_GRACE = 5.0
"""Seconds past the stop timeout allowed to write back the jobs that were interrupted."""

CANCEL_GRACE = 0.5
"""Seconds a stop waits for a cancelled task (or the heartbeat thread) to end."""

RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
"""Seconds before a crashed service starts again: doubling while it keeps crashing at
once (a bug that fails every round must not fill the log every second), back to the
least once it has run for MAX_RESTART_DELAY."""


class Runtime:
    def __init__(
        self,
        queue: Any,
        pool: AsyncConnectionPool[Any],
        store: Store,
        registry: QueueRegistry,
        config: QueueConfig,
        worker: WorkerIdentity,
        schedules: ScheduleBook,
        insert: Insert,
    ) -> None:
        """`insert` is the facade's insert plan: the scheduler's jobs are checked and
        announced like any other."""
        self.worker = worker
        self._config = config
        self._pool = pool
        self._store = store
        self._registry = registry
        self.health = DatabaseHealth()
        health = self.health
        name = worker.application_name
        beat_conninfo, beat_settings = dedicated_settings(pool, "beat", name)

        def connect_sync() -> psycopg.Connection[Any]:
            return psycopg.Connection.connect(beat_conninfo, **beat_settings)

        self.audience = Audience()
        # Which queues' writes commit fast: read by the poller, followed by every writer.
        self.fast_queues = FastQueues()
        presence = Presence(
            worker, lambda: sorted(registry.handlers), config.stall_after, self.audience
        )
        self.heartbeats = Heartbeater(
            connect_sync,
            store,
            config.heartbeat_interval,
            health=health,
            presence=presence,
            fast_queues=self.fast_queues,
        )
        self.results = ResultWriter(
            pool,
            store,
            batch_size=config.result_batch_size,
            flush_interval=config.result_flush_interval,
            # Finished jobs still hold their permits while they wait here: bounding the
            # buffer keeps claims from outrunning the writes.
            max_buffered=config.global_permits,
            heartbeats=self.heartbeats,
            health=health,
            audience=self.audience,
            fast_queues=self.fast_queues,
        )

        async def still_ours(job: Job) -> bool:
            async with borrow(pool) as conn:
                return await run(conn, store.still_running(job.id, job.lease))

        self.executor = Executor(
            queue,
            registry,
            self.heartbeats,
            self.results,
            still_ours,
            max_reprocess=config.max_reprocess_count,
            threads=config.global_permits,
            max_result_bytes=config.max_result_bytes,
            progress=ProgressWriter(
                pool,
                store,
                asyncio.get_running_loop(),
                max_bytes=config.max_progress_bytes,
                audience=self.audience,
                fast_queues=self.fast_queues,
            ),
        )
        self.poller = Poller(
            pool,
            store,
            registry,
            self.executor,
            config,
            health=health,
            worker_id=worker.id,
            audience=self.audience,
            fast_queues=self.fast_queues,
        )
        # Results written free slots of fleet-wide limits the poller may be waiting for.
        self.results.on_written = self.poller.results_written
        self.fast_watcher = FastQueuesWatcher(
            self.poller.follow_fast_queues, CONTROLS_REFRESH, health=health
        )
        self.listener = (
            Listener(
                listen_connector(pool, "listen", name, config.listen_dsn),
                store.listen,
                self._inserted,
                health=health,
                unheard=_unheard(config.empty_poll_sleep),
            )
            if config.use_notify
            else None
        )
        self.reaper = Reaper(pool, store, config, health=health, own_runs=self.heartbeats.runs)
        self.janitor = Janitor(pool, store, config, health=health) if janitor_enabled() else None
        self.leadership = (
            Leadership(
                pool, store, worker.id, config.leader_lease, self._launch_duty, health=health
            )
            if config.leader_election
            else None
        )
        leadership = self.leadership
        self.scheduler = Scheduler(
            pool,
            store,
            schedules,
            insert,
            leading=(lambda: True) if leadership is None else leadership.may_run_duties,
            failover=4 / 3 * config.leader_lease,
            health=health,
        )
        self._leader_task: asyncio.Task[None] | None = None
        self._duties: list[asyncio.Task[None]] = []
        self._poller_task: asyncio.Task[None] | None = None
        self._results_task: asyncio.Task[None] | None = None
        self._services: list[asyncio.Task[None]] = []
        self._running: list[Service] = []
        self._stopped = asyncio.Event()
        self.restarts = 0

    def _inserted(self, payload: str | None) -> None:
        """An insert's NOTIFY names its queues, one per line (empty: any queue); None: the
        listener (re)connected and may have missed some."""
        self.poller.wake(set(payload.split("\n")) if payload else None)

    async def start(self) -> None:
        self.heartbeats.start()
        self._results_task = self._launch(self.results)
        self._poller_task = self._launch(self.poller)
        periodic: list[PeriodicService | None] = [self.reaper, self.janitor]
        services: list[Service | None] = [self.listener, self.scheduler, self.fast_watcher]
        for duty in periodic:
            if duty is not None and duty.leader_only and self.leadership is not None:
                self.leadership.add(duty)  # started while this worker leads
            else:
                services.append(duty)
        self._services = [self._launch(service) for service in services if service is not None]
        if self.leadership is not None:
            self._leader_task = self._launch(self.leadership)
        if self.janitor is None:
            warn_no_janitor()

    def _launch(self, service: Service) -> asyncio.Task[None]:
        self._running.append(service)
        return asyncio.create_task(self._supervised(service), name=f"simplequeue-{service.name}")

    def _launch_duty(self, service: Service) -> asyncio.Task[None]:
        """A leader-only duty, started by the leadership (which cancels it)."""
        self._duties = [task for task in self._duties if not task.done()]
        task = asyncio.create_task(self._supervised(service), name=f"simplequeue-{service.name}")
        self._duties.append(task)
        return task

    async def _supervised(self, service: Service) -> None:
        """The one place that decides what a crashed service does: it is logged and
        started again. Stopping the runtime instead would leave running jobs without a
        poller to follow them, or their results without a writer, until someone noticed."""
        delay = RESTART_DELAY
        while True:
            began = time.monotonic()
            try:
                await service.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.restarts += 1
                if time.monotonic() - began >= MAX_RESTART_DELAY:
                    delay = RESTART_DELAY
                log.exception("%s crashed; restarting it in %gs", service.name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RESTART_DELAY)

    async def ready(self) -> bool:
        """Wait until inserts wake this runtime as soon as they can: its LISTEN is in
        place, or the fallback poll is all there is (notifications off, or the listener
        stood down behind a pooler). False when the runtime stopped first."""
        listener = self.listener
        if listener is None:
            return True
        settled = asyncio.ensure_future(listener.settled())
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait([settled, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            settled.cancel()
            stopped.cancel()
        heard = listener.connected.is_set() or listener.stood_down.is_set()
        return heard and not self._stopped.is_set()

    async def drain(self) -> dict[str, int]:
        """Wait until no job of the handled queues is due, running or unwritten; how
        many attempts ended in each status meanwhile."""
        before = self.results.written_by_status.copy()
        while True:
            queues = sorted(self._registry.handlers)
            # The count holds only if nothing ran meanwhile: a job running when it was
            # counted, whose retry was written before the end, would be in neither.
            moves = (self.poller.claimed, self.results.written)
            idle_before = not (self.poller.claiming or self.poller.tasks or self.results.pending)
            async with borrow(self._pool) as conn:
                await run(conn, self._store.promote_due(queues, PROMOTE_BATCH))
                due = await run(conn, self._store.count_due(queues)) if queues else 0
            idle = not (self.poller.claiming or self.poller.tasks or self.results.pending)
            still = moves == (self.poller.claimed, self.results.written)
            if not due and idle_before and idle and still:
                break
            self.poller.poke()  # claim now, not at the next fallback poll
            await asyncio.sleep(0.005)
        ended = self.results.written_by_status - before
        return dict(ended)

    def stats(self) -> QueueStats:
        listener = self.listener
        leadership = self.leadership
        duties = [] if leadership is None else leadership.running_duties()
        return QueueStats(
            started=True,
            services=tuple(service.name for service in self._running) + tuple(duties),
            leader=leadership is not None and leadership.leading,
            leader_term=None if leadership is None else leadership.term,
            claims=self.poller.claims,
            claimed=self.poller.claimed,
            running=len(self.poller.tasks),
            results_written=self.results.written,
            results_fenced_off=self.results.fenced_off,
            results_refused=self.results.refused,
            results_buffered=self.results.pending,
            lost_runs=self.heartbeats.lost_total,
            heartbeat_failures=self.heartbeats.outage.failures,
            database_failures=self.health.failures,
            listener_connected=listener is not None and listener.connected.is_set(),
            listener_connections=0 if listener is None else listener.connections,
            service_restarts=self.restarts,
            outcomes=dict(self.results.written_by_status),
            handler_seconds=self.executor.handler_seconds.snapshot(),
            pickup_seconds=self.poller.pickup_seconds.snapshot(),
            claim_batch=self.poller.claim_batch.snapshot(),
            result_batch=self.results.batch_sizes.snapshot(),
        )

    def interrupt(self) -> None:
        """Cancel every running job now (a second SIGTERM); their jobs go back to pending."""
        for task in list(self.poller.tasks):
            task.cancel()

    async def stop(self, timeout: float) -> None:
        """Stop claiming, let running jobs finish within `timeout`, then interrupt the rest
        (their jobs go back to pending, attempt given back) and flush every result.

        Returns within `timeout` + SHUTDOWN_WRITE_GRACE + CANCEL_GRACE × 4 whatever the
        network does: a statement still waiting for the database at its deadline (a
        silent partition) is cancelled, and a result not written by then is left to the
        reaper, as after a crash.
        """
        deadline = time.monotonic() + timeout
        last_write = deadline + SHUTDOWN_WRITE_GRACE
        self.poller.stop_claiming()
        self._stopped.set()
        # Another worker takes the maintenance over at once, while this one finishes.
        resigning = asyncio.create_task(self._resign(), name="simplequeue-resign")
        self.heartbeats.signal_shutdown()  # handlers may wrap up early
        await _finish([self._poller_task], deadline)
        running = set(self.poller.tasks)
        if running:
            log.info("stopping: waiting up to %.1fs for %d running job(s)", timeout, len(running))
            _, unfinished = await asyncio.wait(running, timeout=max(deadline - time.monotonic(), 0))
            if unfinished:
                log.warning(
                    "stopping: interrupting %d job(s) still running after %.1fs",
                    len(unfinished),
                    timeout,
                )
                await _finish(unfinished, time.monotonic())
        self.results.close(max(last_write, time.monotonic() + CANCEL_GRACE))
        await _finish([self._results_task], last_write)
        await _finish([resigning], time.monotonic() + RESIGN_TIMEOUT)
        await _finish([*self._services, *self._duties], time.monotonic())
        await self.heartbeats.stop_async(CANCEL_GRACE)
        self.executor.shutdown()

    async def _resign(self) -> None:
        """Stop leading: no more renewals, the duties cancelled, the lease given up."""
        if self.leadership is None:
            return
        await _finish([self._leader_task], time.monotonic())
        await self.leadership.resign()


def _unheard(poll: float) -> str:
    """Why a worker does not listen behind a pooler, and what to do about it."""
    return (
        "not listening: this worker's connections go through a connection pooler "
        "(PgBouncer?), where a LISTEN hears nothing in transaction pooling; new jobs wait "
        f"for the fallback poll (empty_poll_sleep={poll:g}s). Set listen_dsn to a "
        "connection string straight to the server to be woken at once (or to the pooler "
        "itself in session pooling), or use_notify=False to poll without this warning"
    )


async def _finish(tasks: Iterable[asyncio.Task[None] | None], until: float) -> None:
    """Wait for `tasks` until `until` (monotonic), then cancel what still runs, twice if
    need be: cancelled in the middle of a statement, psycopg first tries to cancel it on
    the server, which a silent network makes hang too; a second cancel drops the
    connection instead."""
    pending = {task for task in tasks if task is not None and not task.done()}
    if pending:
        _, pending = await asyncio.wait(pending, timeout=max(until - time.monotonic(), 0))
    for _ in range(2):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_GRACE)
    for task in pending:
        log.error("stopping: %s did not end when cancelled; left behind", task.get_name())
