"""Background upkeep: the reaper (always) and the janitor (in every worker once the
`janitor` extra is installed; on demand with `SimpleQueue.run_janitor()` in any case)."""

from __future__ import annotations

import functools
import importlib.util
import logging

__all__ = ["JANITOR_HINT", "janitor_enabled", "warn_no_janitor"]

JANITOR_HINT = (
    "no janitor runs in this process: finished jobs stay in the jobs table. Install the "
    'extra to enable it: pip install "simplequeue[janitor]"'
)


def janitor_enabled() -> bool:
    """Whether workers run the janitor: the extra (its cron library) is installed."""
    try:
        return importlib.util.find_spec("croniter") is not None
    except ValueError:  # sys.modules["croniter"] is None: deliberately absent
        return False


@functools.cache
def warn_no_janitor() -> None:
    """Say once per process, not once per started queue, that no janitor runs."""
    logging.getLogger("simplequeue.worker").warning(JANITOR_HINT)
