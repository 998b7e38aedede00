"""What `SimpleQueue.stats()` reports: this process's runtime, read without a query."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["QueueStats", "QueueSummary"]


@dataclass(frozen=True)
class QueueSummary:
    """One queue as the tables show it now, for every process (`queue_summaries()`)."""

    queue: str
    due: int
    """Pending jobs due now: what workers would claim next."""
    scheduled: int
    """Pending jobs due later."""
    running: int
    dead: int
    """Jobs ended without success, still in the jobs table (the janitor moves them)."""
    dlq: int
    """Jobs in the dead-letter queue."""
    completed: int
    """Jobs completed within the last `window` seconds (live or archived)."""
    oldest_due_seconds: float | None
    """How long the longest-waiting due job has been due; None when none is."""
    window: float
    """The seconds `completed` counts over."""
    retrying: int = 0
    """Pending jobs that failed before and wait for another attempt (counted in due or
    scheduled too)."""
    paused: bool = False
    """No worker claims its jobs (`pause_queue()`)."""

    @property
    def completed_per_minute(self) -> float:
        return self.completed * 60 / self.window


LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Upper bounds (seconds) of the duration histograms: from a millisecond to five minutes."""

SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
"""Upper bounds of the batch size histograms."""


class Histogram:
    """Counts of observations per bucket, and their sum: cheap enough for every job (one
    bisect and two additions), read by `stats()` and Prometheus."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.sum)


@dataclass(frozen=True)
class HistogramSnapshot:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    """Observations per bucket (not cumulative), one more than `bounds`: above them all."""
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)


NO_LATENCIES = HistogramSnapshot(LATENCY_BUCKETS, (0,) * (len(LATENCY_BUCKETS) + 1), 0.0)
NO_SIZES = HistogramSnapshot(SIZE_BUCKETS, (0,) * (len(SIZE_BUCKETS) + 1), 0.0)


@dataclass(frozen=True)
class QueueStats:
    """Counters of this process since `start()` (all zero when not started).

    They come from memory, not the database: cheap enough to read on every scrape, and
    about this process only. For the jobs of every process, `counts()` reads the tables.
    """

    started: bool = False
    services: tuple[str, ...] = ()
    """The background services running: poller, results, listener, leader, and the reaper
    and the janitor while this worker leads."""
    claims: int = 0
    """Claim statements run by the poller."""
    claimed: int = 0
    """Jobs those claims returned."""
    running: int = 0
    """Jobs whose handler runs now."""
    results_written: int = 0
    """Outcomes stored."""
    results_fenced_off: int = 0
    """Outcomes the database ignored: their job was cancelled or taken over meanwhile."""
    results_refused: int = 0
    """Outcomes the database refused (a constraint, a trigger): their job ended failed."""
    results_buffered: int = 0
    """Outcomes waiting to be written."""
    lost_runs: int = 0
    """Runs that heartbeats found cancelled or taken over elsewhere while they ran."""
    heartbeat_failures: int = 0
    """Heartbeat rounds that failed to reach the database."""
    database_failures: int = 0
    """Failed statements of every service: claims, writes, beats, sweeps, LISTEN."""
    listener_connected: bool = False
    """LISTEN is in place: inserts wake this worker at once (False with use_notify off)."""
    listener_connections: int = 0
    """LISTEN connections made: more than one means it reconnected."""
    service_restarts: int = 0
    """Services that crashed and were started again (each logged with its traceback)."""
    leader: bool = False
    """This worker holds the schema's maintenance lease now: the reaper and the janitor
    run here (`leader_election`; with it off, they run in every worker and this is False)."""
    leader_term: int | None = None
    """The term of the lease it holds (grows with every new leader); None when not leading."""
    outcomes: Mapping[str, int] = field(default_factory=dict)
    """Attempts whose outcome was stored, by the status it gave the job (`pending`: it
    runs again)."""
    handler_seconds: HistogramSnapshot = NO_LATENCIES
    """How long handlers ran (each attempt that reached its handler)."""
    pickup_seconds: HistogramSnapshot = NO_LATENCIES
    """From a job's due time to its claim (this host's clock against the database's)."""
    claim_batch: HistogramSnapshot = NO_SIZES
    """Jobs per claim that found any."""
    result_batch: HistogramSnapshot = NO_SIZES
    """Outcomes per result write."""
