"""How a queue's workers commit their own writes: durable (the default) or fast.

`configure_queue(name, durability=Durability.FAST)` stores the mode in the queue's row;
a worker reads it with the limits once a second (`FastQueues`), and makes its claims,
results, heartbeats and progress of that queue's jobs commit with `synchronous_commit`
off, for the transaction of each write only. Inserts are never fast. docs/durability.md
says what fast risks, and what it never does.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from simplequeue.errors import InvalidArgumentError

__all__ = ["Durability", "FastQueues", "check_durability"]


class Durability(enum.StrEnum):
    """How the library's own writes for a queue's jobs commit; the values are what the
    `queues.durability` column holds (sql/0012_durability.sql)."""

    DURABLE = "durable"
    """Each write returns once its WAL is on disk (PostgreSQL's default): a crash of the
    server loses nothing a worker wrote."""
    FAST = "fast"
    """A worker's claims, results, heartbeats and progress for the queue return before
    their WAL is on disk (`synchronous_commit = off` for those transactions only). A
    crash of the server may lose the last few hundred milliseconds of them: those jobs
    run again (at-least-once holds). Inserts stay durable."""


def check_durability(value: object) -> Durability:
    """A durability given as `Durability` or its value ("durable", "fast"); anything else
    is refused before any statement runs, saying what fits."""
    if isinstance(value, str):
        try:
            return Durability(value)
        except ValueError:
            pass
    choices = " or ".join(repr(mode.value) for mode in Durability)
    raise InvalidArgumentError(
        f"durability must be {choices} (simplequeue.Durability), got {value!r}"
    )


class FastQueues:
    """The queues of one worker whose writes commit fast, as its poller last read them.

    The poller replaces `names` whole (once a second, with the limits); the result
    writer, the progress writer and the heartbeat thread read it. A frozenset swapped by
    one assignment: a reader in another thread sees the old set or the new one.
    """

    def __init__(self) -> None:
        self.names: frozenset[str] = frozenset()

    def all_fast(self, queues: Iterable[str | None]) -> bool:
        """True when every one of these queues is fast (and there is at least one): one
        write that also touches a durable queue's jobs must commit durably. A queue
        unknown (None) is durable."""
        names = self.names
        if not names:
            return False
        seen = False
        for queue in queues:
            if queue not in names:
                return False
            seen = True
        return seen
