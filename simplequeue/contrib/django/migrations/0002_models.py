"""The read-only models' state (no table is made: they are unmanaged), built by the same
code as the models, so `makemigrations` finds nothing to do whatever SCHEMA is."""

from __future__ import annotations

from typing import Any

from django.db import migrations

from simplequeue.contrib.django.models import TABLES, fields, options


class Migration(migrations.Migration):
    dependencies: list[Any] = [("simplequeue", "0001_schema")]
    operations = [
        migrations.CreateModel(name, fields(live), options=options(table, plural))
        for name, table, live, plural in TABLES
    ]
