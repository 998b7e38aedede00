"""Read-only models over the queue's tables, for the admin and for queries: the fields
follow `columns.JOB_ROW`, so they match the tables as the migrations made them. Their
manager reads the queue's database (SIMPLEQUEUE["DATABASE"])."""

from __future__ import annotations

from typing import Any

from django.db import models

from simplequeue.columns import JOB_ROW
from simplequeue.contrib.django.conf import database, schema

__all__ = ["ArchivedJob", "DeadJob", "Job"]

_FIELDS: dict[str, Any] = {
    "uuid": lambda: models.UUIDField(null=True),
    "text": lambda: models.TextField(null=True),
    "jsonb": lambda: models.JSONField(),
    "int": lambda: models.IntegerField(),
    "float8": lambda: models.FloatField(null=True),
    "timestamptz": lambda: models.DateTimeField(null=True),
    "boolean": lambda: models.BooleanField(),
}

TABLES = (
    ("Job", "jobs", True, "jobs"),
    ("ArchivedJob", "archive", False, "archived jobs"),
    ("DeadJob", "dlq", False, "dead jobs (DLQ)"),
)
"""Each model: its name, its table, whether it is the live table, its plural."""


def fields(live: bool) -> list[tuple[str, Any]]:
    """A table's columns as model fields (the archive and the DLQ lack the live-only ones)."""
    return [
        (c.name, models.UUIDField(primary_key=True) if c.name == "id" else _FIELDS[c.sql_type]())
        for c in JOB_ROW
        if live or not c.live_only
    ]


def options(table: str, plural: str) -> dict[str, Any]:
    return {
        "managed": False,  # Django never creates, alters or drops the queue's tables
        "db_table": f'{schema()}"."{table}',  # quoted by Django as "schema"."table"
        "ordering": ["-id"],
        "verbose_name_plural": plural,
    }


class QueueManager(models.Manager):
    """Reads the database that holds the queue, whichever alias the project routes to."""

    def get_queryset(self) -> Any:
        return super().get_queryset().using(database())


def _model(name: str, table: str, live: bool, plural: str) -> type[models.Model]:
    meta = type("Meta", (), {**options(table, plural), "app_label": "simplequeue"})
    attrs: dict[str, Any] = {
        "__module__": __name__,
        "Meta": meta,
        "objects": QueueManager(),
        "__str__": lambda self: f"{self.queue} {self.id} ({self.status})",
        **dict(fields(live)),
    }
    return type(name, (models.Model,), attrs)


Job, ArchivedJob, DeadJob = (_model(*table) for table in TABLES)
