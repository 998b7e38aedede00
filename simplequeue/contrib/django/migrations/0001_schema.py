"""`manage.py migrate` brings the queue's schema up to date (simplequeue's own migrations,
idempotent, under an advisory lock), in the database SIMPLEQUEUE["DATABASE"] names: the
one migrate runs on (the test database, under `manage.py test`)."""

from __future__ import annotations

import asyncio
from typing import Any

from django.db import migrations


def apply(apps: Any, schema_editor: Any) -> None:
    from simplequeue.contrib.django.conf import conninfo, database, schema
    from simplequeue.migrate import setup

    if schema_editor.connection.alias == database():
        target = conninfo(schema_editor.connection.settings_dict)
        asyncio.run(setup(target, schema=schema()))


class Migration(migrations.Migration):
    atomic = False  # setup() runs its migrations on its own connection, each atomically
    initial = True
    dependencies: list[Any] = []
    operations = [migrations.RunPython(apply, migrations.RunPython.noop, elidable=False)]
