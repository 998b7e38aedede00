"""The `simplequeue` command: migrate, worker, roles, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from simplequeue import logs
from simplequeue.config import QueueConfig
from simplequeue.errors import ConfigError, SimpleQueueError
from simplequeue.handler import Handler
from simplequeue.migrate import setup
from simplequeue.queue import SimpleQueue

__all__ = ["load_target", "main"]

log = logging.getLogger("simplequeue.cli")

SETTINGS_OPTIONS: dict[str, type] = {
    "global_permits": int,
    "queue_permits": int,
    "heartbeat_interval": float,
    "empty_poll_sleep": float,
    "max_reprocess_count": int,
}
"""The QueueConfig settings `simplequeue worker` takes as options, defaults and all."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    try:
        return int(args.func(args) or 0)
    except SimpleQueueError as exc:
        print(f"simplequeue: {exc}", file=sys.stderr)
        return 2


def log_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """--log-level and --log-format, before the subcommand (with the defaults) or after
    it (overriding only when given)."""
    parser.add_argument(
        "--log-level",
        choices=logs.LEVELS,
        default="info" if defaults else argparse.SUPPRESS,
        help="simplequeue's log level; other libraries log warnings only (default: info)",
    )
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text" if defaults else argparse.SUPPRESS,
        help="text lines with the job's context, or JSON lines (default: text)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simplequeue", description=__doc__)
    log_options(parser, defaults=True)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def dsn_options(command: argparse.ArgumentParser, required: bool = True) -> None:
        command.add_argument(
            "--dsn",
            default=os.environ.get("SIMPLEQUEUE_DSN"),
            required=required and not os.environ.get("SIMPLEQUEUE_DSN"),
            help="PostgreSQL connection string (default: $SIMPLEQUEUE_DSN)",
        )
        command.add_argument("--schema", default=QueueConfig.model_fields["schema_name"].default)

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A subcommand; the logging options may come after it too."""
        sub = commands.add_parser(name, **kwargs)
        log_options(sub, defaults=False)
        return sub

    migrate = command("migrate", help="create or upgrade the schema")
    dsn_options(migrate)
    migrate.set_defaults(func=_migrate)

    worker = command("worker", help="run workers for the handlers in module:attr")
    worker.add_argument(
        "target",
        help="module:attr naming a Handler (class or instance), a list of them, or a function "
        "that receives the SimpleQueue to configure",
    )
    dsn_options(worker)
    for setting, kind in SETTINGS_OPTIONS.items():
        default = QueueConfig.model_fields[setting].default
        worker.add_argument(
            "--" + setting.replace("_", "-"),
            type=kind,
            default=default,
            help=f"(default: {default})",
        )
    worker.add_argument("--no-notify", action="store_true", help="poll only (PgBouncer)")
    worker.add_argument("--no-migrate", action="store_true", help="do not apply migrations")
    worker.add_argument("--shutdown-timeout", type=float, default=30.0)
    worker.set_defaults(func=_worker)

    roles = command(
        "roles",
        help="create least-privilege producer and worker roles and grant them their privileges",
        description="Create (if missing) a producer role that may insert and read live jobs "
        "and a worker role that may run them, and grant each exactly its privileges on the "
        "schema. Run as the schema's owner or a superuser, after `migrate`. See "
        "docs/security.md.",
    )
    dsn_options(roles)
    roles.add_argument("--producer", default="simplequeue_producer", help="producer role name")
    roles.add_argument("--worker", default="simplequeue_worker", help="worker role name")
    roles.add_argument(
        "--login",
        action="store_true",
        help="let the roles log in (default: new roles are NOLOGIN, to be granted to login "
        "roles; set passwords with ALTER ROLE ... PASSWORD or psql's \\password)",
    )
    roles.set_defaults(func=_roles)

    demo = command("demo", help="a guided tour on a throwaway database")
    dsn_options(demo, required=False)
    demo.set_defaults(func=_demo)
    return parser


def _migrate(args: argparse.Namespace) -> int:
    applied = asyncio.run(setup(args.dsn, schema=args.schema))
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    return 0


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


def _worker(args: argparse.Namespace) -> int:
    configure = load_target(args.target)
    settings: dict[str, Any] = {"schema": args.schema, "use_notify": not args.no_notify}
    settings.update({setting: getattr(args, setting) for setting in SETTINGS_OPTIONS})
    asyncio.run(_run_worker(args.dsn, settings, configure, args.shutdown_timeout, args.no_migrate))
    _exit_past_sync_handlers()
    return 0


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


def _roles(args: argparse.Namespace) -> int:
    from simplequeue.roles import grant_roles

    asyncio.run(
        grant_roles(
            args.dsn,
            schema=args.schema,
            producer=args.producer,
            worker=args.worker,
            login=args.login,
        )
    )
    print(
        f"granted on schema {args.schema}: producer {args.producer} (insert and read live "
        f"jobs), worker {args.worker} (run jobs, reaper, janitor)"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from simplequeue.demo import run_demo

    return asyncio.run(run_demo(args.dsn, schema=args.schema))


if __name__ == "__main__":
    sys.exit(main())
