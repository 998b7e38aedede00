"""Brings the queue's schema up to date again for this release's SQL migration (the
archive partitioned by time): a project that ran the earlier ones has it applied by
`migrate`."""

from __future__ import annotations

from typing import Any

from django.db import migrations

from simplequeue.contrib.django.migrations import apply


class Migration(migrations.Migration):
    atomic = False  # setup() runs its migrations on its own connection, each atomically
    dependencies: list[Any] = [("simplequeue", "0010_unique_for_checks")]
    operations = [migrations.RunPython(apply, migrations.RunPython.noop, elidable=False)]
