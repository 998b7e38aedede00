"""docs/recipes.md, run as written: FastAPI, Flask, Alembic."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine

from tests.conftest import count, query, sqlalchemy_url
from tests.test_docs_examples import DOCS, examples, run, url

PAGE = DOCS / "recipes.md"


def test_the_page_has_its_recipes() -> None:
    assert set(examples(PAGE)) == {"fastapi", "flask", "alembic"}


def test_fastapi(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setenv("DATABASE_URL", url(dsn))
    app = run(["fastapi"], PAGE)["app"]
    with TestClient(app) as client:
        first = client.post("/signups", json={"email": "a@example.com"})
        again = client.post("/signups", json={"email": "a@example.com"})
        bad = client.post("/signups", json={"mail": "a@example.com"})
        found = client.get(f"/jobs/{first.json()['id']}")
        missing = client.get(f"/jobs/{uuid.uuid4()}")
    assert first.status_code == 200 and first.json()["data"] == {"email": "a@example.com"}
    assert again.json()["id"] == first.json()["id"]  # the live job its unique key points at
    assert bad.status_code == 422 and found.json()["status"] == "pending"
    assert missing.status_code == 404
    assert query(dsn, "SELECT count(*) FROM signups") == [(2,)] and count(dsn) == 1


def test_flask(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url(dsn))
    module = run(["flask"], PAGE)
    try:
        client = module["app"].test_client()
        placed = client.post("/orders", data={"email": "a@example.com"})
        declined = client.post("/orders", data={"email": "b@example.com", "declined": "1"})
    finally:
        module["queue"].close()
        with module["app"].app_context():
            module["db"].engine.dispose()
    order = placed.json["order"]
    assert declined.json == {"declined": True}
    assert query(dsn, 'SELECT id, email FROM "order"') == [(order, "a@example.com")]
    assert query(dsn, "SELECT queue, data FROM simplequeue.jobs") == [
        ("receipts", {"order": order})
    ]


def test_alembic_leaves_the_queue_schema_alone(dsn: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    include_name = run(["alembic"], PAGE)["include_name"]
    engine = create_engine(sqlalchemy_url(dsn, "psycopg"))
    mine = MetaData()
    Table("orders", mine, Column("id", Integer, primary_key=True))

    def planned(conn: Any, **options: Any) -> list[str]:
        """What autogenerate would do to the queue's schema."""
        diffs = compare_metadata(MigrationContext.configure(conn, opts=options), mine)
        return [str(d) for d in diffs if "simplequeue" in str(d)]

    try:
        with engine.connect() as conn:
            mine.create_all(conn)
            assert planned(conn) == []  # the default: the public schema only
            assert planned(conn, include_schemas=True, include_name=include_name) == []
            assert planned(conn, include_schemas=True), "what include_name prevents"
    finally:
        engine.dispose()
