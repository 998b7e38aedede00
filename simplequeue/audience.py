"""Whether anyone listens to a schema's job events: the statements that change jobs
publish events (a NOTIFY per batch) only while a server of the HTTP API does, so a fleet
without one pays nothing for them.

A worker learns it at every heartbeat (its own row's beat answers); a producer asks at
most every RECHECK seconds. A server that starts is heard within that long; its
`GET /events` clients see the transitions from then on.
"""

from __future__ import annotations

import time

__all__ = ["RECHECK", "Audience"]

RECHECK = 5.0
"""Seconds a producer trusts its last answer."""


class Audience:
    def __init__(self) -> None:
        self.listened = False
        self._heard_at = float("-inf")

    @property
    def unknown(self) -> bool:
        """Never asked yet (a worker's first claim may come before its first beat)."""
        return self._heard_at == float("-inf")

    def stale(self) -> bool:
        return time.monotonic() - self._heard_at > RECHECK

    def heard(self, listened: bool) -> None:
        self.listened = listened
        self._heard_at = time.monotonic()
