"""The app's settings, read from `settings.SIMPLEQUEUE`, and this process's queue."""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from psycopg.conninfo import make_conninfo

from simplequeue.config import QueueConfig
from simplequeue.errors import ConfigError
from simplequeue.syncqueue import SyncQueue

__all__ = ["database", "dsn", "get_queue", "schema"]

KNOWN = {"DATABASE", "DSN", "SCHEMA", "OPTIONS"}


def _settings() -> dict[str, Any]:
    given = getattr(settings, "SIMPLEQUEUE", {})
    if not isinstance(given, dict):
        raise ConfigError(f"settings.SIMPLEQUEUE must be a dict, got {type(given).__name__}")
    unknown = set(given) - KNOWN
    if unknown:
        raise ConfigError(
            f"settings.SIMPLEQUEUE has unknown keys {sorted(unknown)}; known: {sorted(KNOWN)}"
        )
    return given


def database() -> str:
    """The alias of the Django database that holds the queue."""
    return str(_settings().get("DATABASE", "default"))


def schema() -> str:
    default = QueueConfig.model_fields["schema_name"].default
    return str(_settings().get("SCHEMA", default))


def dsn() -> str:
    """`SIMPLEQUEUE["DSN"]`, else a connection string built from the database's settings."""
    given = _settings().get("DSN")
    if given:
        return str(given)
    alias = database()
    if alias not in settings.DATABASES:
        raise ConfigError(f"SIMPLEQUEUE['DATABASE'] is {alias!r}, not in settings.DATABASES")
    db = settings.DATABASES[alias]
    if "postgresql" not in db.get("ENGINE", ""):
        raise ConfigError(
            f"the {alias!r} database is {db.get('ENGINE')}; simplequeue needs PostgreSQL"
        )
    options = {k: v for k, v in db.get("OPTIONS", {}).items() if isinstance(v, str | int)}
    params = {
        "dbname": db.get("NAME"),
        "user": db.get("USER"),
        "password": db.get("PASSWORD"),
        "host": db.get("HOST"),
        "port": db.get("PORT"),
        **options,
    }
    return make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})


@functools.cache
def get_queue() -> SyncQueue:
    """This process's SyncQueue on the queue's database, opened at first use."""
    queue = SyncQueue.from_url(dsn(), schema_name=schema(), **_settings().get("OPTIONS", {}))
    queue.open()
    return queue
