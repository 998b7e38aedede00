"""The programs of docs/producers.md, run exactly as they are written there."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import count, query

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = DOCS / "producers.md"


def examples(page: Path = PAGE) -> dict[str, str]:
    """The code blocks of a docs page marked `<!-- example: name -->`, by name."""
    found = re.findall(r"<!-- example: (\w+) -->\n```python\n(.*?)```", page.read_text(), re.S)
    return dict(found)


def url(dsn: str) -> str:
    """The test database as a postgresql:// URL (the socket directory in the query)."""
    params = conninfo_to_dict(dsn)
    return (
        f"postgresql://{params.get('user', 'postgres')}@/{params['dbname']}"
        f"?host={params.get('host', '127.0.0.1')}&port={params.get('port', 5432)}"
    )


def run(names: list[str], page: Path = PAGE) -> dict[str, Any]:
    """The examples in one module, as a script runs (SQLAlchemy, pydantic and Flask look
    the module up while it runs)."""
    module = types.ModuleType("docs_example")
    module.__file__ = str(page)
    sys.modules[module.__name__] = module
    try:
        for name in names:
            exec(compile(examples(page)[name], f"{page}:{name}", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module.__dict__


def test_the_page_has_its_examples() -> None:
    assert set(examples()) == {"handler", "sync", "sqlalchemy", "django_views"}


def test_the_sync_producer(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url(dsn))
    namespace = run(["handler", "sync"])
    order_id = namespace["order_id"]
    assert query(dsn, "SELECT email FROM orders WHERE id = %s", [order_id]) == [("a@example.com",)]
    assert (
        count(dsn, "queue = 'confirmations' AND data = %s::jsonb", [f'{{"order_id": {order_id}}}'])
        == 1
    )


def test_the_sqlalchemy_producer_end_to_end(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url(dsn))
    namespace = run(["handler", "sqlalchemy"])
    (order_id,) = query(dsn, "SELECT id FROM shop_orders")[0]
    assert namespace["SendConfirmation"].sent == [order_id]
    assert count(dsn, "status = 'completed'") == 1
