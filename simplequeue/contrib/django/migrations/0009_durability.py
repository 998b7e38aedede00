"""Brings the queue's schema up to date again for this release's SQL migration (a queue's
durability, `queues.durability`): a project that ran the earlier ones has it applied by
`migrate`. The models need no change of their own (queues have no model)."""

from __future__ import annotations

from typing import Any

from django.db import migrations

from simplequeue.contrib.django.migrations import apply


class Migration(migrations.Migration):
    atomic = False  # setup() runs its migrations on its own connection, each atomically
    dependencies: list[Any] = [("simplequeue", "0008_unique_for")]
    operations = [migrations.RunPython(apply, migrations.RunPython.noop, elidable=False)]
