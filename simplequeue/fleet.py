"""Queues and workers as the database knows them, for every process: what operators list,
pause and resume, and the identity this process's worker registers under."""

from __future__ import annotations

import enum
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from typing import Any

from simplequeue.durability import Durability
from simplequeue.limits import QueueLimits, Rate

__all__ = ["QueueInfo", "WorkerIdentity", "WorkerInfo", "jsonable", "library_version"]

WORKER_FORGOTTEN_AFTER = 3600.0
"""Seconds past its expiry after which the reaper deletes a dead worker's row."""


def library_version() -> str:
    try:
        return metadata.version("simplequeue")
    except metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


@dataclass(frozen=True)
class QueueInfo:
    """A declared queue (`list_queues()`, `pause_queue()`): by a worker that handles it,
    or by an operator who paused it."""

    name: str
    paused: bool
    """Paused now: no worker claims its jobs (a pause past its `paused_until` is over)."""
    paused_at: datetime | None
    paused_until: datetime | None
    """When the pause ends by itself; None: until `resume_queue()`."""
    paused_by: str | None
    pause_reason: str | None
    first_seen: datetime
    last_seen: datetime
    """The last time a worker declared it on start, or an operator paused it."""
    limits: QueueLimits = field(default_factory=QueueLimits)
    """Its fleet-wide limits (`configure_queue()`)."""
    parked_until: datetime | None = None
    """No job of it starts before then (a job without a concurrency key parked it)."""
    workers: int = 0
    """Live workers that handle it."""
    durability: Durability = Durability.DURABLE
    """How workers commit their own writes for its jobs (`configure_queue()`;
    docs/durability.md)."""

    @classmethod
    def from_row(cls, row: Any) -> QueueInfo:
        """From the columns of `statements._QUEUE_ROW` (and a count of workers after them)."""
        name, paused, paused_at, paused_until, paused_by, reason, first, last = row[:8]
        max_running, per_key, rate, period, rate_per_key, period_per_key, fair = row[8:15]
        parked_until, durability, *workers = row[15:]
        return cls(
            name,
            paused,
            paused_at,
            paused_until,
            paused_by,
            reason,
            first,
            last,
            limits=QueueLimits(
                max_running,
                per_key,
                Rate.from_columns(rate, period),
                Rate.from_columns(rate_per_key, period_per_key),
                fair,
            ),
            parked_until=parked_until,
            workers=workers[0] if workers else 0,
            durability=Durability(durability),
        )

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


@dataclass(frozen=True)
class WorkerInfo:
    """A worker process (one started `SimpleQueue`), as its row says (`list_workers()`)."""

    id: uuid.UUID
    host: str
    pid: int
    version: str
    queues: tuple[str, ...]
    started_at: datetime
    heartbeat_at: datetime
    alive: bool
    """It beat within its heartbeat timeout; a worker that died shows as not alive until
    it is forgotten, an hour later."""
    stopping_at: datetime | None
    """When it began a graceful stop (finishing its running jobs)."""
    running: int
    """Jobs it runs now."""
    leader: bool = False
    """It holds the maintenance lease now: the reaper and the janitor run in it."""

    @classmethod
    def from_row(cls, row: Any) -> WorkerInfo:
        values = list(row)
        values[4] = tuple(values[4])
        return cls(*values)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this process's worker is: a new id at every `SimpleQueue`, and where it runs.
    Its connections carry the id in their application_name."""

    id: uuid.UUID = field(default_factory=uuid.uuid4)
    version: str = field(default_factory=library_version)

    @property
    def host(self) -> str:
        return socket.gethostname()

    @property
    def pid(self) -> int:
        """Read when it registers: a process forked after the queue was built is its own."""
        return os.getpid()

    @property
    def application_name(self) -> str:
        """55 bytes: its dedicated connections add " beat" and " listen" within the 63
        PostgreSQL keeps."""
        return f"simplequeue worker {self.id}"


def jsonable(info: Any) -> dict[str, Any]:
    """An info dataclass as JSON values (ids and times as text)."""
    values: dict[str, Any] = {}
    for name, value in vars(info).items():
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, QueueLimits):
            value = value.to_dict()
        elif isinstance(value, enum.Enum):
            value = value.value
        values[name] = value
    return values
