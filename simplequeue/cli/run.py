"""The commands that run things: worker, migrate, roles, demo."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
import typing
from collections.abc import Callable
from typing import Any

import click

from simplequeue.cli.common import apply_log_options, connection_options, log_options
from simplequeue.config import QueueConfig
from simplequeue.errors import ConfigError
from simplequeue.handler import Handler
from simplequeue.migrate import setup
from simplequeue.queue import SimpleQueue

__all__ = ["SETTINGS_OPTIONS", "load_target", "register"]

log = logging.getLogger("simplequeue.cli")


def _option_type(annotation: Any) -> type:
    """The command-line type of a QueueConfig field: its own, or the one inside Optional
    and Annotated."""
    if annotation in (int, float, str, bool):
        return annotation  # type: ignore[no-any-return]
    for inner in typing.get_args(annotation):
        found = _option_type(inner)
        if found is not str or inner is str:
            return found
    return str


SETTINGS_OPTIONS: dict[str, type] = {
    name: _option_type(field.annotation)
    for name, field in QueueConfig.model_fields.items()
    if name not in ("schema_name", "backoff", "use_notify")
}
"""The QueueConfig settings `simplequeue worker` takes as options (and as environment
variables SIMPLEQUEUE_<SETTING>), with QueueConfig's defaults: the one source of them.
The schema is --schema, notifications --no-notify; backoff is set in code."""


def register(cli: click.Group) -> None:
    """Add these commands to the group."""
    for command in (migrate, worker, roles, demo):
        cli.add_command(command)


@click.command(help="Create or upgrade the schema.")
@connection_options
@log_options
def migrate(dsn: str, schema: str, log_level: str | None, log_format: str | None) -> None:
    apply_log_options(log_level, log_format)
    applied = asyncio.run(setup(dsn, schema=schema))
    click.echo(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


def _setting_options(function: Any) -> Any:
    for setting, kind in reversed(SETTINGS_OPTIONS.items()):
        field = QueueConfig.model_fields[setting]
        flag = setting.replace("_", "-")
        function = click.option(
            f"--{flag}/--no-{flag}" if kind is bool else f"--{flag}",
            setting,
            type=None if kind is bool else kind,
            default=None,
            envvar=f"SIMPLEQUEUE_{setting.upper()}",
            show_envvar=True,
            help=f"{field.description or setting.replace('_', ' ')}  [default: {field.default}]",
        )(function)
    return function


@click.command(help="Run workers for the handlers in TARGET (module:attr).")
@click.argument("target")
@connection_options
@_setting_options
@click.option("--no-notify", is_flag=True, help="poll only, no LISTEN and no NOTIFY")
@click.option("--no-migrate", is_flag=True, help="do not apply migrations at start")
@click.option(
    "--shutdown-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="seconds running jobs get to finish on SIGTERM before they are interrupted",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="serve this process's Prometheus metrics on this port (needs simplequeue[metrics])",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="address of --metrics-port"
)
@log_options
def worker(
    target: str,
    dsn: str,
    schema: str,
    no_notify: bool,
    no_migrate: bool,
    shutdown_timeout: float,
    metrics_port: int | None,
    metrics_host: str,
    log_level: str | None,
    log_format: str | None,
    **options: Any,
) -> None:
    """TARGET names a Handler (class or instance), a list of them, or a function that
    receives the SimpleQueue to configure."""
    apply_log_options(log_level, log_format)
    configure = load_target(target)
    if metrics_port is not None:
        configure = _with_metrics(configure, metrics_host, metrics_port)
    given = {setting: value for setting, value in options.items() if value is not None}
    settings: dict[str, Any] = {"schema": schema, "use_notify": not no_notify, **given}
    asyncio.run(_run_worker(dsn, settings, configure, shutdown_timeout, no_migrate))
    _exit_past_sync_handlers()


@click.command(
    help="Create (if missing) a producer role that may insert and read live jobs and a "
    "worker role that may run them, and grant each exactly its privileges on the schema. "
    "Run as the schema's owner or a superuser, after `migrate`. See docs/security.md."
)
@connection_options
@click.option(
    "--producer", default="simplequeue_producer", show_default=True, help="producer role name"
)
@click.option(
    "--worker",
    "worker_role",
    default="simplequeue_worker",
    show_default=True,
    help="worker role name",
)
@click.option(
    "--login",
    is_flag=True,
    help="let the roles log in (default: new roles are NOLOGIN, to be granted to login "
    "roles; set passwords with ALTER ROLE ... PASSWORD or psql's \\password)",
)
@log_options
def roles(
    dsn: str,
    schema: str,
    producer: str,
    worker_role: str,
    login: bool,
    log_level: str | None,
    log_format: str | None,
) -> None:
    from simplequeue.roles import grant_roles

    apply_log_options(log_level, log_format)
    asyncio.run(grant_roles(dsn, schema=schema, producer=producer, worker=worker_role, login=login))
    click.echo(
        f"granted on schema {schema}: producer {producer} (insert and read live "
        f"jobs), worker {worker_role} (run jobs, reaper, janitor)"
    )


@click.command(help="A guided tour on a throwaway database (embedded when no DSN is given).")
@click.option(
    "--dsn",
    envvar="SIMPLEQUEUE_DSN",
    default=None,
    help="PostgreSQL connection string  [default: $SIMPLEQUEUE_DSN, else an embedded server]",
)
@click.option(
    "--schema", default=QueueConfig.model_fields["schema_name"].default, show_default=True
)
@log_options
def demo(dsn: str | None, schema: str, log_level: str | None, log_format: str | None) -> int:
    from simplequeue.demo import run_demo

    apply_log_options(log_level, log_format)
    return asyncio.run(run_demo(dsn, schema=schema))


def load_target(target: str) -> Callable[[SimpleQueue], None]:
    """Resolve module:attr into a function that registers its handlers on a queue."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"worker target must look like module:attr, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        obj: Any = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None

    def handler_of(item: Any) -> Handler:
        return item() if isinstance(item, type) and issubclass(item, Handler) else item

    if isinstance(obj, Handler) or (isinstance(obj, type) and issubclass(obj, Handler)):
        return lambda queue: queue.register_handler(handler_of(obj))
    if isinstance(obj, list | tuple):

        def register_all(queue: SimpleQueue) -> None:
            for item in obj:
                queue.register_handler(handler_of(item))

        return register_all
    if callable(obj):
        return obj  # type: ignore[no-any-return]
    raise ConfigError(f"{target} is neither a Handler, a list of handlers nor a function")


def _with_metrics(
    configure: Callable[[SimpleQueue], None], host: str, port: int
) -> Callable[[SimpleQueue], None]:
    """Configure the queue, then serve its process's counters to Prometheus."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from simplequeue.metrics import ProcessCollector
    except ImportError as exc:
        raise ConfigError(
            f'--metrics-port needs the metrics extra: pip install "simplequeue[metrics]" ({exc})'
        ) from None

    def configured(queue: SimpleQueue) -> None:
        configure(queue)
        registry = CollectorRegistry()
        registry.register(ProcessCollector(queue.stats))
        start_http_server(port, addr=host, registry=registry)
        log.info("metrics on http://%s:%d/metrics", host, port)

    return configured


def _exit_past_sync_handlers() -> None:
    """Leave at once when interrupted sync handlers still run in their threads.

    A thread cannot be cancelled, and interpreter exit would wait for it: the process (and
    the handler's side effects) would run on although its job is already back in `pending`.
    """
    busy = [t for t in threading.enumerate() if t.name.startswith("simplequeue-job")]
    deadline = time.monotonic() + 0.2  # for all of them: there may be hundreds
    for thread in busy:
        thread.join(timeout=max(deadline - time.monotonic(), 0))
    busy = [t for t in busy if t.is_alive()]
    if busy:
        log.warning("exiting with %d interrupted sync handler(s) still running", len(busy))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


async def _run_worker(
    dsn: str,
    settings: dict[str, Any],
    configure: Callable[[SimpleQueue], None],
    shutdown_timeout: float,
    no_migrate: bool,
) -> None:
    """Run until SIGINT/SIGTERM; a second signal interrupts running jobs at once."""
    queue = SimpleQueue.from_url(dsn, **settings)
    configure(queue)
    if not no_migrate:
        await setup(dsn, schema=queue.schema)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    started = False

    async def serve() -> None:
        nonlocal started
        async with queue:
            await queue.start()
            started = True
            log.info(
                "worker started (pid %d) for queues: %s",
                os.getpid(),
                ", ".join(queue.handled_queues) or "none",
            )
            await stop.wait()
            await queue.stop(shutdown_timeout)

    serving = asyncio.ensure_future(serve())

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not started:
            # Still connecting (perhaps to a server that does not answer): give up at once.
            log.info("received %s while starting: not starting", name)
            serving.cancel()
        elif not stop.is_set():
            log.info("received %s: finishing running jobs (send it again to interrupt them)", name)
            stop.set()
        else:
            log.warning("received %s again: interrupting running jobs", name)
            stopping.append(asyncio.ensure_future(queue.stop(0)))

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await asyncio.gather(*stopping)
    log.info("worker stopped")
