"""One hierarchy for every error simplequeue raises, so callers can catch ours alone."""

from __future__ import annotations


class SimpleQueueError(Exception):
    """Base of every simplequeue error."""


class ConfigError(SimpleQueueError, ValueError):
    """A configuration value is invalid; raised when the queue is built, not when it runs."""


class InvalidJobError(SimpleQueueError, ValueError):
    """A job cannot be stored as given; raised before anything is written."""


class UnknownQueueError(InvalidJobError):
    """A job names a queue no worker handles and no operator declared, and the queue is
    built with `strict_queues=True`; nothing is written."""


class InvalidArgumentError(SimpleQueueError, TypeError, ValueError):
    """An argument other than a job is of the wrong kind; raised before any statement runs."""


class MigrationError(SimpleQueueError):
    """The schema could not be brought up to date."""


class JobNotFoundError(SimpleQueueError, LookupError):
    """No job with that id exists in the live table, the archive or the DLQ."""


class QueueStateError(SimpleQueueError, RuntimeError):
    """The queue is used in a state that does not allow it (not opened, already stopped)."""


class SchemaNotFoundError(QueueStateError):
    """The queue's tables are not in the database the statement ran on: run
    `simplequeue migrate` there (or pass a connection to the queue's database)."""
