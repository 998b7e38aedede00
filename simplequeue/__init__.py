"""simplequeue: a PostgreSQL-native background job queue.

The public API is what this package re-exports (`__all__`, documented in docs/api.md);
the modules behind it are internal and may change from one release to the next."""

from simplequeue.backoff import BackoffStrategy, Custom, Exponential, Fixed, Linear
from simplequeue.blocking import BlockingQueue
from simplequeue.config import QueueConfig
from simplequeue.durability import Durability
from simplequeue.errors import (
    ConfigError,
    InvalidArgumentError,
    InvalidJobError,
    JobNotFoundError,
    MigrationError,
    QueueStateError,
    SchemaNotFoundError,
    SimpleQueueError,
    UnknownQueueError,
)
from simplequeue.fleet import QueueInfo, WorkerInfo
from simplequeue.handler import Handler
from simplequeue.job import FOREVER, AttemptError, Job, JobResult, JobStatus, ProgressUpdate
from simplequeue.limits import QueueLimits, Rate
from simplequeue.maintenance.janitor import JanitorReport
from simplequeue.maintenance.reaper import ReapReport
from simplequeue.migrate import setup
from simplequeue.permits import (
    CancelJob,
    ConcurrencyLimit,
    Immediate,
    JobStrategy,
    MarkCompleted,
    Permit,
    RetryJob,
    StrategyDecision,
    TryAfter,
)
from simplequeue.queue import SimpleQueue
from simplequeue.schedules import Schedule, ScheduleInfo
from simplequeue.stats import QueueStats, QueueSummary
from simplequeue.stopping import StopReason, StopSignal
from simplequeue.syncqueue import SyncQueue

__version__ = "0.1.0"

__all__ = [
    "FOREVER",
    "AttemptError",
    "BackoffStrategy",
    "BlockingQueue",
    "CancelJob",
    "ConcurrencyLimit",
    "ConfigError",
    "Custom",
    "Durability",
    "Exponential",
    "Fixed",
    "Handler",
    "Immediate",
    "InvalidArgumentError",
    "InvalidJobError",
    "JanitorReport",
    "Job",
    "JobNotFoundError",
    "JobResult",
    "JobStatus",
    "JobStrategy",
    "Linear",
    "MarkCompleted",
    "MigrationError",
    "Permit",
    "ProgressUpdate",
    "QueueConfig",
    "QueueInfo",
    "QueueLimits",
    "QueueStateError",
    "QueueStats",
    "QueueSummary",
    "Rate",
    "ReapReport",
    "RetryJob",
    "Schedule",
    "ScheduleInfo",
    "SchemaNotFoundError",
    "SimpleQueue",
    "SimpleQueueError",
    "StopReason",
    "StopSignal",
    "StrategyDecision",
    "SyncQueue",
    "TryAfter",
    "UnknownQueueError",
    "WorkerInfo",
    "setup",
]
