"""What every command shares: the group, the connection options, the logging options,
times given on the command line, and the queue each command opens."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click
import psycopg

from simplequeue import logs
from simplequeue.config import QueueConfig
from simplequeue.errors import InvalidArgumentError
from simplequeue.limits import Rate
from simplequeue.syncqueue import SyncQueue

__all__ = ["cli", "connection_options", "log_options", "opened", "when"]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SCHEMA = QueueConfig.model_fields["schema_name"].default


def _configure_logs(ctx: click.Context, level: str | None, fmt: str | None) -> None:
    """The group's logging options, overridden by a command's own when given."""
    settings = ctx.ensure_object(dict)
    settings["log_level"] = level or settings.get("log_level") or "info"
    settings["log_format"] = fmt or settings.get("log_format") or "text"
    logs.configure(settings["log_level"], settings["log_format"])


def log_options(function: F) -> F:
    """--log-level and --log-format: before the command or after it."""
    function = click.option(
        "--log-format",
        type=click.Choice(logs.FORMATS),
        default=None,
        help="text lines with the job's context, or JSON lines  [default: text]",
    )(function)
    return click.option(
        "--log-level",
        type=click.Choice(logs.LEVELS),
        default=None,
        help="simplequeue's log level; other libraries log warnings only  [default: info]",
    )(function)


def connection_options(function: F) -> F:
    """--dsn (or $SIMPLEQUEUE_DSN) and --schema, after the command's own arguments."""
    function = click.option(
        "--schema",
        default=DEFAULT_SCHEMA,
        show_default=True,
        help="the schema the queue's tables are in",
    )(function)
    return click.option(
        "--dsn",
        envvar="SIMPLEQUEUE_DSN",
        required=True,
        help="PostgreSQL connection string  [default: $SIMPLEQUEUE_DSN]",
    )(function)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@log_options
@click.pass_context
def cli(ctx: click.Context, log_level: str | None, log_format: str | None) -> None:
    """simplequeue: a PostgreSQL-native job queue. Run workers, and see and steer the
    queue: stats, jobs, the dead-letter queue, queues, workers."""
    _configure_logs(ctx, log_level, log_format)


def apply_log_options(log_level: str | None, log_format: str | None) -> None:
    """A command's own logging options, when given after it."""
    if log_level or log_format:
        _configure_logs(click.get_current_context(), log_level, log_format)


def reachable(dsn: str) -> None:
    """Connect once first: a database that cannot be reached fails the command at once with
    libpq's reason, rather than after a pool's retries with its own."""
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
    except psycopg.ProgrammingError as exc:  # not a connection string
        raise click.BadParameter(str(exc), param_hint="--dsn") from None


@contextmanager
def opened(dsn: str, schema: str) -> Iterator[SyncQueue]:
    """The queue a command reads and steers, on a small pool of its own."""
    reachable(dsn)
    queue = SyncQueue.from_url(dsn, schema=schema, pool_min_size=1, pool_max_size=2)
    with queue:
        yield queue


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def when(text: str, *, ahead: bool) -> datetime:
    """A time given on the command line: ISO 8601 (a time without a zone is UTC), or a
    duration (30s, 15m, 2h, 7d) from now, ahead (`ahead`) or back."""
    match = _DURATION.match(text)
    if match:
        try:
            delta = timedelta(seconds=float(match[1]) * _UNIT[match[2]])
            return datetime.now(UTC) + (delta if ahead else -delta)
        except (OverflowError, ValueError):
            raise click.BadParameter(f"{text!r} is further than a calendar goes") from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither an ISO 8601 time (2026-12-01T18:00:00+00:00) nor a "
            "duration (30s, 15m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def rate(text: str | None) -> Rate | None:
    """A rate given on the command line: starts per duration, `100/1s`, `10/1m`, `5/2h`;
    `none` for no limit."""
    if text is None or text.strip().lower() == "none":
        return None
    count, _, period = text.partition("/")
    match = _DURATION.match(period)
    count = count.strip()
    if not (count.isascii() and count.isdigit()) or not match:
        raise click.BadParameter(f"{text!r} is not a rate: starts per duration, e.g. 100/1s, 10/1m")
    try:
        return Rate(int(count), per=float(match[1]) * _UNIT[match[2]])
    except (InvalidArgumentError, ValueError, OverflowError) as exc:
        raise click.BadParameter(str(exc)) from None


def who() -> str:
    """Who runs the command, for a queue's paused_by."""
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return f"{user}@{os.uname().nodename}"
