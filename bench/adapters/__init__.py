"""Adapters for every benchmarked system, created by name (imports stay lazy)."""

from __future__ import annotations

from .base import Adapter

SYSTEMS: tuple[str, ...] = ("bare", "sq", "procrastinate", "pgqueuer-psycopg", "pgqueuer-asyncpg")

ALIASES: dict[str, tuple[str, ...]] = {
    "simplequeue": ("sq",),
    "floor": ("bare",),
    "pgqueuer": ("pgqueuer-psycopg", "pgqueuer-asyncpg"),
    "pgq": ("pgqueuer-psycopg", "pgqueuer-asyncpg"),
    "pgqueuer-psy": ("pgqueuer-psycopg",),
    "pgqueuer-apg": ("pgqueuer-asyncpg",),
}


def expand(names: str) -> list[str]:
    """Turn a --only value ("sq,pgqueuer") into system names, in the canonical order."""
    wanted: set[str] = set()
    for raw in names.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name in SYSTEMS:
            wanted.add(name)
        elif name in ALIASES:
            wanted.update(ALIASES[name])
        else:
            raise ValueError(
                f"unknown system {name!r}; known: {', '.join(SYSTEMS + tuple(ALIASES))}"
            )
    return [s for s in SYSTEMS if s in wanted]


def make_adapter(name: str) -> Adapter:
    """Import only the library the caller needs (workers load a single one)."""
    if name == "bare":
        from .bare import BareAdapter

        return BareAdapter()
    if name == "sq":
        from .simplequeue_adapter import SimplequeueAdapter

        return SimplequeueAdapter()
    if name == "procrastinate":
        from .procrastinate_adapter import ProcrastinateAdapter

        return ProcrastinateAdapter()
    if name.startswith("pgqueuer-"):
        from .pgqueuer_adapter import PgqueuerAdapter

        return PgqueuerAdapter(name.removeprefix("pgqueuer-"))
    raise ValueError(name)
