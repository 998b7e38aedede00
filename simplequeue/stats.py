"""What `SimpleQueue.stats()` reports: this process's runtime, read without a query."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class QueueStats:
    """Counters of this process since `start()` (all zero when not started).

    They come from memory, not the database: cheap enough to read on every scrape, and
    about this process only. For the jobs of every process, `counts()` reads the tables.
    """

    started: bool = False
    services: tuple[str, ...] = ()
    """The background services running: poller, results, listener, reaper, janitor."""
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
