"""The `simplequeue` command: run workers, migrate, grant roles, and see and steer the queue.

Every command takes `--dsn` (default: $SIMPLEQUEUE_DSN) and `--schema`; `--log-level` and
`--log-format` may come before or after the command. Errors exit with status 2 and one
line on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click
import psycopg

from simplequeue.cli.common import cli
from simplequeue.cli.operate import register as register_operator_commands
from simplequeue.cli.run import load_target
from simplequeue.cli.run import register as register_run_commands
from simplequeue.cli.serve import register as register_serve
from simplequeue.errors import SimpleQueueError

__all__ = ["cli", "load_target", "main"]

register_run_commands(cli)
register_operator_commands(cli)
register_serve(cli)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: the process's); returns the exit status."""
    try:
        result = cli.main(
            args=list(sys.argv[1:] if argv is None else argv),
            prog_name="simplequeue",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        print("simplequeue: aborted", file=sys.stderr)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SimpleQueueError as exc:
        print(f"simplequeue: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"simplequeue: cannot reach the database: {detail}", file=sys.stderr)
        return 1
    return int(result or 0)
