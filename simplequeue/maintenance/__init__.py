"""Background upkeep: the reaper (always) and the janitor (with the `janitor` extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simplequeue.maintenance.janitor import Janitor

__all__ = ["JANITOR_HINT", "load_janitor"]

JANITOR_HINT = (
    "no janitor runs in this process: finished jobs stay in the jobs table. Install the "
    'extra to enable it: pip install "simplequeue[janitor]"'
)


def load_janitor() -> type[Janitor] | None:
    """The Janitor class when the extra is installed, else None."""
    try:
        from simplequeue.maintenance.janitor import Janitor
    except ImportError as exc:
        if exc.name == "croniter":
            return None
        raise
    return Janitor
