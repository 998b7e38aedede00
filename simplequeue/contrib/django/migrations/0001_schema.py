"""`manage.py migrate` brings the queue's schema up to date (simplequeue's own migrations,
idempotent, under an advisory lock), in the database SIMPLEQUEUE["DATABASE"] names: the
one migrate runs on (the test database, under `manage.py test`)."""

from __future__ import annotations

from typing import Any

from django.db import migrations

from simplequeue.contrib.django.migrations import apply


class Migration(migrations.Migration):
    atomic = False  # setup() runs its migrations on its own connection, each atomically
    initial = True
    dependencies: list[Any] = []
    operations = [migrations.RunPython(apply, migrations.RunPython.noop, elidable=False)]
