"""Read-only models over the queue's tables, for the admin and for queries: the fields
follow `columns.JOB_ROW`, so they match the tables as the migrations made them."""

from __future__ import annotations

from typing import Any

from django.db import models

from simplequeue.columns import JOB_ROW
from simplequeue.contrib.django.conf import schema

__all__ = ["ArchivedJob", "DeadJob", "Job"]

_FIELDS: dict[str, Any] = {
    "uuid": lambda: models.UUIDField(primary_key=True),
    "text": lambda: models.TextField(null=True),
    "jsonb": lambda: models.JSONField(),
    "int": lambda: models.IntegerField(),
    "float8": lambda: models.FloatField(null=True),
    "timestamptz": lambda: models.DateTimeField(null=True),
    "boolean": lambda: models.BooleanField(),
}


def _model(name: str, table: str, *, live: bool, plural: str) -> type[models.Model]:
    """A model of one of the queue's tables; Django never creates, alters or writes it."""
    attrs: dict[str, Any] = {"__module__": __name__}
    for column in JOB_ROW:
        if column.live_only and not live:
            continue
        attrs[column.name] = _FIELDS[column.sql_type]()
    attrs["Meta"] = type(
        "Meta",
        (),
        {
            "managed": False,
            "db_table": f'{schema()}"."{table}',  # quoted by Django as "schema"."table"
            "ordering": ["-id"],
            "verbose_name_plural": plural,
            "app_label": "simplequeue",
        },
    )
    attrs["__str__"] = lambda self: f"{self.queue} {self.id} ({self.status})"
    return type(name, (models.Model,), attrs)


Job = _model("Job", "jobs", live=True, plural="jobs")
ArchivedJob = _model("ArchivedJob", "archive", live=False, plural="archived jobs")
DeadJob = _model("DeadJob", "dlq", live=False, plural="dead jobs (DLQ)")
