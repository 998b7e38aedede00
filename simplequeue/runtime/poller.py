"""The poller: claims as many due jobs as it holds permits for, and starts them.

It counts global and queue permits before it claims, asks for each queue only what that
queue can start, and so never claims a job it must give back. It sleeps when there is
nothing to claim, until a NOTIFY, a freed permit or the fallback poll wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from simplequeue.audience import Audience
from simplequeue.config import QueueConfig
from simplequeue.connections import borrow
from simplequeue.drivers import commits_alone, run
from simplequeue.durability import FastQueues
from simplequeue.job import Job
from simplequeue.registry import QueueRegistry
from simplequeue.runtime.executor import Executor
from simplequeue.runtime.outage import DatabaseHealth
from simplequeue.runtime.service import Service
from simplequeue.stats import LATENCY_BUCKETS, SIZE_BUCKETS, Histogram
from simplequeue.store import Store

__all__ = ["Poller", "claim_was_saturated", "plan_claim"]

CONTROLS_REFRESH = 1.0
"""Seconds between two looks at which of its queues are controlled (fleet-wide limits,
fairness, parked keys) and which are fast: a new limit or durability takes effect within
this time."""

CONTROLLED_RETRY = 0.1
"""Seconds before a controlled queue that gave fewer jobs than asked is asked again (its
limit may have held them back; the worker that frees a slot wakes its own poller)."""

PROMOTE_BATCH = 1000
"""Scheduled jobs made claimable per statement; a poller promotes again at once while
jobs keep coming due."""


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


def _nothing() -> None:
    return None


def plan_claim(free: int, rooms: dict[str, int]) -> tuple[list[str], list[int], set[str]]:
    """What one claim asks for: of each queue with room, as many jobs as its free permits
    allow and the process's `free` permits too; and the queues left out for want of room."""
    queues: list[str] = []
    limits: list[int] = []
    full: set[str] = set()
    for name, room in rooms.items():
        room = min(room, free)
        if room > 0:
            queues.append(name)
            limits.append(room)
        else:
            full.add(name)
    return queues, limits, full


def claim_was_saturated(
    claimed: Sequence[str], queues: Sequence[str], limits: Sequence[int], total: int
) -> bool:
    """True when permits, not the backlog, limited a claim (`claimed`: the queue of each
    job it returned): more jobs are waiting, and the poller claims again at once."""
    if len(claimed) >= total:
        return True
    got = Counter(claimed)
    return any(got[name] >= limit for name, limit in zip(queues, limits, strict=True))


class Poller(Service):
    name = "poller"

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        store: Store,
        registry: QueueRegistry,
        executor: Executor,
        config: QueueConfig,
        *,
        health: DatabaseHealth | None = None,
        worker_id: uuid.UUID | None = None,
        audience: Audience | None = None,
        fast_queues: FastQueues | None = None,
    ) -> None:
        self._audience = audience or Audience()
        # Shared with the writers of this runtime: the poller reads it, they follow it.
        self._fast = fast_queues or FastQueues()
        super().__init__(health, max_retry_delay=config.empty_poll_sleep)
        self._worker_id = worker_id
        self._pool = pool
        self._store = store
        self._registry = registry
        self._executor = executor
        self._config = config
        # The registry's, not the poller's: a handler still running after a restart counts.
        self.global_permits = registry.global_permits
        self._wake = asyncio.Event()
        self._capacity = asyncio.Event()
        self._claiming = True
        self._full: set[str] = set()  # handled queues left out of the last claim: no room
        self.tasks: set[asyncio.Task[None]] = set()
        self.claims = 0
        self.claimed = 0
        self.claim_batch = Histogram(SIZE_BUCKETS)
        self.pickup_seconds = Histogram(LATENCY_BUCKETS)
        self.claiming = False
        self._promoted_at = float("-inf")
        self._controlled: set[str] = set()
        self._controls_read_at = float("-inf")
        self._held_rounds = 0
        self._held_back = False
        self._controlled_first = False
        self._unsubscribe = registry.on_change(self.poke)

    def wake(self, queues: set[str] | None) -> None:
        """A NOTIFY arrived; wake only if it names a queue this process handles."""
        if queues is None or not queues.isdisjoint(self._registry.handlers):
            self._wake.set()

    def poke(self) -> None:
        """Something changed (a handler, a limit): look again now."""
        self._wake.set()
        self._capacity.set()

    def results_written(self, due_at_once: bool = False) -> None:
        """Results were written: jobs left `running`, and a controlled queue's limit that
        held the last claim back may have room now (the local permits were freed
        earlier, when the jobs ended; the fleet's count follows the write). With
        `due_at_once`, some job is pending again and due now (a retry without backoff):
        no notification announces it, so this worker claims it without waiting for its
        fallback poll."""
        if due_at_once:
            self._wake.set()
        if self._held_back:
            self._held_rounds = 0
            self._wake.set()

    def stop_claiming(self) -> None:
        self._claiming = False
        self.poke()
        self._unsubscribe()
        self._unsubscribe = _nothing

    async def run(self) -> None:
        while self._claiming:
            queues, limits = self._capacity_by_queue()
            if not queues:
                self._capacity.clear()
                await _wait(self._capacity, self._config.empty_poll_sleep)
                continue
            total = min(self.global_permits.free, sum(limits))
            self._wake.clear()
            self.claiming = True
            try:
                async with borrow(self._pool) as conn:
                    if self._audience.unknown:
                        self._audience.heard(await run(conn, self._store.events_listened()))
                    if time.monotonic() - self._controls_read_at >= CONTROLS_REFRESH:
                        await self._read_controls(conn)
                    jobs, asked = await self._claim(conn, queues, limits, total)
            except psycopg.OperationalError as exc:
                self.claiming = False
                await self.back_off(exc)
                continue
            self.outage.recovered()
            self.claims += 1
            self.claimed += len(jobs)
            if jobs:
                self.claim_batch.observe(len(jobs))
                now = datetime.now(UTC)
                for job in jobs:
                    if job.run_at is not None:  # always, for a claimed job
                        waited = (now - job.run_at).total_seconds()
                        self.pickup_seconds.observe(max(waited, 0.0))
            for job in jobs:
                self._start(job)
            self.claiming = False  # the jobs it claimed are tasks now
            claimed = [job.queue for job in jobs]
            saturated = claim_was_saturated(claimed, queues, limits, total)
            if self._promotion_due() and await self._promote(queues):
                continue  # jobs came due: claim them now
            if not saturated and self._claiming:
                await _wait(self._wake, self._sleep_after(claimed, asked))

    async def _read_controls(self, conn: Any) -> None:
        """Which of the handled queues are controlled, and which fast, now."""
        controls = await run(conn, self._store.queue_controls(list(self._registry.handlers)))
        self._controlled = set(controls.controlled)
        self._fast.names = controls.fast
        self._controls_read_at = time.monotonic()

    async def follow_fast_queues(self) -> None:
        """While a handled queue is fast, read the queues' rows again once a second,
        whatever the claims do (idle on a long poll, every permit taken, stopping): a queue
        made durable again is written durably within about a second, running jobs' results,
        beats and progress included (`FastQueuesWatcher`)."""
        if not self._fast.names or time.monotonic() - self._controls_read_at < CONTROLS_REFRESH:
            return
        async with borrow(self._pool) as conn:
            await self._read_controls(conn)

    def _sleep_after(self, claimed: list[str], asked: dict[str, int]) -> float:
        """How long to sleep, unwoken, after a claim that was not saturated: the fallback
        poll; but when a controlled queue gave fewer jobs than asked (a limit may have
        held them back), CONTROLLED_RETRY while it still gives some, then twice as long
        each round it gives none, up to the fallback poll."""
        sleep = self._config.empty_poll_sleep
        got = Counter(claimed)
        self._held_back = any(got[name] < n for name, n in asked.items())
        if not self._held_back:
            return sleep
        if any(got[name] for name in asked):
            self._held_rounds = 0
        else:
            self._held_rounds = min(self._held_rounds + 1, 16)
        return float(min(sleep, CONTROLLED_RETRY * 2**self._held_rounds))

    async def _claim(
        self, conn: Any, queues: list[str], limits: list[int], total: int
    ) -> tuple[list[Job], dict[str, int]]:
        """Claim from the plain queues in one statement and from the controlled ones in
        another, the second with what the first left of `total`; returns the jobs, and
        what each controlled queue was asked for."""
        plain = [(q, n) for q, n in zip(queues, limits, strict=True) if q not in self._controlled]
        if self._controlled_first and len(plain) < len(queues):
            controlled_jobs, asked = await self._claim_controlled(conn, queues, limits, total)
            plain_jobs = await self._claim_plain(conn, plain, total - len(controlled_jobs))
        else:
            plain_jobs = await self._claim_plain(conn, plain, total)
            controlled_jobs, asked = await self._claim_controlled(
                conn, queues, limits, total - len(plain_jobs)
            )
        # Turn about: with both kinds of queue, the one asked first may take every free
        # permit; the other goes first next time.
        self._controlled_first = not self._controlled_first
        return plain_jobs + controlled_jobs, asked

    def _fast_claim(self, conn: Any, queues: list[str]) -> bool:
        """A claim of these queues commits fast when every one of them is fast (one of a
        durable queue's jobs in it would make it durable) and it is a transaction of its
        own."""
        return self._fast.all_fast(queues) and commits_alone(conn)

    async def _claim_plain(self, conn: Any, plain: list[tuple[str, int]], total: int) -> list[Job]:
        jobs: list[Job] = []
        if plain and total > 0:
            names = [q for q, _ in plain]
            jobs = await run(
                conn,
                self._store.claim(
                    names,
                    [n for _, n in plain],
                    total,
                    self._worker_id,
                    publish=self._audience.listened,
                    fast=self._fast_claim(conn, names),
                ),
            )
        return jobs

    async def _claim_controlled(
        self, conn: Any, queues: list[str], limits: list[int], total: int
    ) -> tuple[list[Job], dict[str, int]]:
        asked: dict[str, int] = {}
        left = total
        for name, n in zip(queues, limits, strict=True):
            if name in self._controlled and left > 0:
                asked[name] = min(n, left)
                left -= asked[name]
        jobs: list[Job] = []
        if asked:
            jobs = await run(
                conn,
                self._store.claim_controlled(
                    list(asked),
                    list(asked.values()),
                    self._worker_id,
                    publish=self._audience.listened,
                    # durable always: the starts a rate counts and the turns of a fair
                    # queue commit with the claim, and a crash must not forget them
                    fast=False,
                ),
            )
        return jobs, asked

    def _promotion_due(self) -> bool:
        """Promote once per fallback poll, busy or idle: a job coming due waits no longer
        than the fallback poll lets any job wait, and a claim that a NOTIFY woke seldom
        pays for an extra statement before the next (it costs pickup latency)."""
        return time.monotonic() - self._promoted_at >= self._config.empty_poll_sleep

    async def _promote(self, queues: list[str]) -> int:
        """Make scheduled jobs of `queues` that have come due claimable; how many."""
        self._promoted_at = time.monotonic()
        try:
            async with borrow(self._pool) as conn:
                fast = self._fast_claim(conn, queues)
                return await run(conn, self._store.promote_due(queues, PROMOTE_BATCH, fast=fast))
        except psycopg.OperationalError as exc:
            self.outage.failed(exc)  # the claim's retry loop waits; the next poll retries
            return 0

    def _capacity_by_queue(self) -> tuple[list[str], list[int]]:
        free = self.global_permits.free
        if free <= 0:
            return [], []
        rooms = {name: self._registry.permits(name).free for name in self._registry.handlers}
        queues, limits, self._full = plan_claim(free, rooms)
        return queues, limits

    def _start(self, job: Job) -> None:
        self.global_permits.take()
        self._registry.permits(job.queue).take()
        task = asyncio.create_task(self._execute(job), name=f"simplequeue-job-{job.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _execute(self, job: Job) -> None:
        leftover = None
        try:
            leftover = await self._executor.execute(job)
        finally:
            if leftover is None or leftover.done():
                self._release(job)
            else:  # a handler past its timeout still runs: its permits stay taken till it ends
                leftover.add_done_callback(lambda _: self._release(job))

    def _release(self, job: Job) -> None:
        self.global_permits.release()
        self._registry.permits(job.queue).release()
        self._capacity.set()
        if job.queue in self._full or job.queue in self._controlled:
            # The poller may be asleep on the other queues' behalf: this one has room now
            # (or, controlled, a slot of its fleet-wide limit is free).
            self._wake.set()
