"""`manage.py simplequeue_worker TARGET [options]`: `simplequeue worker` on the queue's
database and schema from the settings (TARGET and options as for `simplequeue worker`)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = "Run simplequeue workers for the handlers in module:attr (as `simplequeue worker`)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("target", help="module:attr, as for `simplequeue worker`")
        parser.add_argument(
            "worker_options", nargs="*", help="options of `simplequeue worker`, after --"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from simplequeue.cli import main
        from simplequeue.contrib.django.conf import dsn, schema

        rest = list(options["worker_options"])
        top: list[str] = []  # the command's own options come before `worker`
        if "--log-level" in rest:
            at = rest.index("--log-level")
            top, rest = rest[at : at + 2], rest[:at] + rest[at + 2 :]
        argv = [*top, "worker", options["target"], "--dsn", dsn(), "--schema", schema()]
        code = main([*argv, *rest])
        if code:
            raise CommandError(f"simplequeue worker exited with {code}")
