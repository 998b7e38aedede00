"""`columns.JOB_ROW`, the one definition of a job row, against the tables the migrations
create: a column added to one and not the other fails here, not in production."""

from __future__ import annotations

import simplequeue as sq
from simplequeue import columns
from tests.conftest import query

PG_TYPES = {
    "uuid": "uuid",
    "text": "text",
    "jsonb": "jsonb",
    "int": "integer",
    "float8": "double precision",
    "timestamptz": "timestamp with time zone",
    "boolean": "boolean",
}

FINISHED_ONLY = {"moved_at": "timestamp with time zone"}
"""Columns of the archive and the DLQ that a live job does not have."""


def table_columns(dsn: str, table: str) -> dict[str, str]:
    return dict(
        query(
            dsn,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'simplequeue' AND table_name = %s",
            [table],
        )
    )


def test_every_table_holds_exactly_the_defined_columns(dsn: str) -> None:
    live = {c.name: PG_TYPES[c.sql_type] for c in columns.JOB_ROW}
    assert table_columns(dsn, "jobs") == live
    finished = {c.name: PG_TYPES[c.sql_type] for c in columns.JOB_ROW if not c.live_only}
    for table in ("archive", "dlq"):
        assert table_columns(dsn, table) == finished | FINISHED_ONLY, table


def test_every_attribute_named_exists_on_a_job() -> None:
    job = sq.Job("q", {"a": 1})
    for column in columns.JOB_ROW:
        for attribute in (column.attribute, column.insert_from):
            if attribute is not None:
                assert hasattr(job, attribute), (column.name, attribute)


def test_the_roles_name_only_defined_columns() -> None:
    from simplequeue.roles import WORKER_UPDATE_COLUMNS

    names = {c.name for c in columns.JOB_ROW}
    assert set(WORKER_UPDATE_COLUMNS) <= names
    assert set(columns.INSERT_COLUMNS) <= names


async def test_a_job_reads_back_every_column_it_was_inserted_with(
    queue: sq.SimpleQueue,
) -> None:
    from datetime import UTC, datetime, timedelta

    due = datetime.now(UTC) + timedelta(hours=1)
    job = sq.Job(
        "q",
        {"n": [1, 2.5, "x"]},
        unique_key="k",
        fingerprint="f",
        run_at=due,
        max_attempts=7,
        priority=-3,
        timeout=12.5,
    )
    job_id = await queue.insert_job(job)
    assert job_id is not None
    back = await queue.get_job(job_id)
    assert back is not None
    for column in columns.JOB_ROW:
        if column.insert_from and column.attribute:
            expected = job.data if column.attribute == "data" else getattr(job, column.attribute)
            assert getattr(back, column.attribute) == expected, column.name
    assert back.status is sq.JobStatus.PENDING and back.attempt == 0
