"""`manage.py migrate` brings the queue's schema up to date (simplequeue's own migrations,
idempotent, under an advisory lock), in the database SIMPLEQUEUE["DATABASE"] names."""

from __future__ import annotations

import asyncio
from typing import Any

from django.db import migrations


def apply(apps: Any, schema_editor: Any) -> None:
    from simplequeue.contrib.django.conf import database, dsn, schema
    from simplequeue.migrate import setup

    if schema_editor.connection.alias == database():
        asyncio.run(setup(dsn(), schema=schema()))


class Migration(migrations.Migration):
    atomic = False  # setup() runs its migrations on its own connection, each atomically
    initial = True
    dependencies: list[Any] = []
    operations = [migrations.RunPython(apply, migrations.RunPython.noop, elidable=False)]
