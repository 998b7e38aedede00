"""The app's settings, read from `settings.SIMPLEQUEUE`, and the project's queue."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg
from django.conf import settings
from psycopg.conninfo import make_conninfo

from simplequeue.config import QueueConfig
from simplequeue.drivers import SyncDriver, sync_driver_for
from simplequeue.errors import ConfigError, QueueStateError
from simplequeue.operations import Operations
from simplequeue.store import Store
from simplequeue.syncqueue import SyncQueue

__all__ = ["DjangoQueue", "conninfo", "database", "dsn", "get_queue", "schema"]

KNOWN = {"DATABASE", "DSN", "SCHEMA", "OPTIONS"}

LIBPQ_KEYWORDS = frozenset(d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults())
"""What a connection string may hold: Django's OPTIONS also carry its own settings
(`server_side_binding`, `pool`, `isolation_level`, ...), which are not for libpq."""


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
    alias = str(_settings().get("DATABASE", "default"))
    if alias not in settings.DATABASES:
        raise ConfigError(f"SIMPLEQUEUE['DATABASE'] is {alias!r}, not in settings.DATABASES")
    engine = settings.DATABASES[alias].get("ENGINE", "")
    if "postgresql" not in engine:
        raise ConfigError(f"the {alias!r} database is {engine}; simplequeue needs PostgreSQL")
    return alias


def schema() -> str:
    default = QueueConfig.model_fields["schema_name"].default
    return str(_settings().get("SCHEMA", default))


def conninfo(database_settings: Mapping[str, Any]) -> str:
    """A connection string for one entry of DATABASES (its NAME, USER, PASSWORD, HOST,
    PORT, and the libpq parameters among its OPTIONS)."""
    options = database_settings.get("OPTIONS", {})
    params = {
        "dbname": database_settings.get("NAME"),
        "user": database_settings.get("USER"),
        "password": database_settings.get("PASSWORD"),
        "host": database_settings.get("HOST"),
        "port": database_settings.get("PORT"),
        **{k: v for k, v in options.items() if k in LIBPQ_KEYWORDS},
    }
    return make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})


def dsn() -> str:
    """Where `manage.py simplequeue_worker` connects: `SIMPLEQUEUE["DSN"]` (a role of
    its own, say), else the queue's database as Django reaches it."""
    given = _settings().get("DSN")
    return str(given) if given else conninfo(settings.DATABASES[database()])


class DjangoQueue(SyncQueue):
    """The project's queue: SyncQueue's calls on Django's own connection to the queue's
    database. Inside `transaction.atomic()` they join it; outside, each commits on its
    own. It holds no pool: Django's connections are per thread, follow the test database
    under `manage.py test`, and are closed and reopened as Django does."""

    def __init__(self, alias: str, **config: Any) -> None:  # no pool: not SyncQueue's
        self.config = QueueConfig.build(**config)
        self.alias = alias
        self._owns_pool = False
        self._ops = Operations(Store(self.config.schema_name), self.config)

    @property
    def pool(self) -> Any:
        raise QueueStateError("a DjangoQueue runs on Django's connections: it has no pool")

    def open(self, timeout: float = 30.0) -> None:
        """Nothing to open: Django connects."""

    def close(self) -> None:
        """Nothing to close: Django's connections are Django's."""

    @contextmanager
    def _driver(self, *, atomic: bool = False) -> Iterator[SyncDriver]:
        from django.db import connections, transaction

        with transaction.atomic(using=self.alias) if atomic else nullcontext():
            yield sync_driver_for(connections[self.alias])


@functools.cache
def get_queue() -> DjangoQueue:
    """The project's queue (see DjangoQueue), on the database `SIMPLEQUEUE["DATABASE"]`."""
    return DjangoQueue(database(), schema_name=schema(), **_settings().get("OPTIONS", {}))
