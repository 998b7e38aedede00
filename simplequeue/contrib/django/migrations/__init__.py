"""The app's migrations; `apply` is what each schema migration of theirs runs."""

from __future__ import annotations

import asyncio
from typing import Any


def apply(apps: Any, schema_editor: Any) -> None:
    """Bring the queue's schema up to date (idempotent), in the database migrate runs on
    when it is the one SIMPLEQUEUE["DATABASE"] names."""
    from simplequeue.contrib.django.conf import conninfo, database, schema
    from simplequeue.migrate import setup

    if schema_editor.connection.alias == database():
        target = conninfo(schema_editor.connection.settings_dict)
        asyncio.run(setup(target, schema=schema()))
