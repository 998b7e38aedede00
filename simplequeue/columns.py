"""Every column of a job row, defined once.

The statements' column lists, the INSERT's parameters and casts, the COPY rows, the
columns the producer role may insert, what the janitor copies to the archive and the DLQ,
and how `Job.from_row` reads a row back are all derived from `JOB_ROW`. A new column is
one line here, one migration, and the SQL that gives it meaning; `tests/test_columns.py`
holds this list against every table the migrations create.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "COPY_SOURCES",
    "INSERT_COLUMNS",
    "JOB_ROW",
    "MOVED_COLUMNS",
    "READ",
    "SOURCES",
    "Column",
    "insert_from",
    "insert_select",
    "insert_values",
    "read_list",
    "source_row",
    "source_rows",
]


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    """Its type in the table (what a parameter is cast to)."""
    attribute: str | None = None
    """The `Job` attribute it is read into (None: not read back)."""
    insert_from: str | None = None
    """The `Job` attribute an insert takes its value from: one parameter per job."""
    insert_as: str | None = None
    """The SQL an insert writes, around its value `{v}` or the values of other columns
    (`{run_at}`); None: the value as it is, or, without `insert_from`, the default."""
    param_type: str | None = None
    """The type the value travels as, when not `sql_type` (jsonb goes as text)."""
    read_as: str = "{c}"
    """The SQL a claim reads it as, around the column `{c}`."""
    live_only: bool = False
    """Only in the jobs table: the archive and the DLQ do not have it."""

    @property
    def inserted(self) -> bool:
        return self.insert_from is not None or self.insert_as is not None


JOB_ROW: tuple[Column, ...] = (
    Column("id", "uuid", "_id", insert_from="id"),
    Column("queue", "text", "queue", insert_from="queue"),
    # Inserted as text already encoded (and checked); claimed as text, decoded per job.
    Column(
        "data",
        "jsonb",
        "data",
        insert_from="encoded_data",
        insert_as="{v}::jsonb",
        param_type="text",
        read_as="{c}::text",
    ),
    Column("status", "text", "status"),
    Column("priority", "int", "priority", insert_from="priority"),
    Column("attempt", "int", "attempt"),
    Column("max_attempts", "int", "max_attempts", insert_from="max_attempts"),
    Column("reprocess_count", "int", "reprocess_count"),
    Column("lease", "int", "lease"),
    Column("unique_key", "text", "unique_key", insert_from="unique_key"),
    Column("fingerprint", "text", "fingerprint", insert_from="fingerprint"),
    Column(
        "run_at", "timestamptz", "run_at", insert_from="run_at", insert_as="COALESCE({v}, now())"
    ),
    Column("created_at", "timestamptz", "created_at"),
    Column("updated_at", "timestamptz", "updated_at"),
    Column("completed_at", "timestamptz", "completed_at"),
    Column("last_error", "text", "last_error"),
    Column("timeout_seconds", "float8", "timeout", insert_from="timeout"),
    Column("heartbeat_at", "timestamptz"),
    # The worker that claimed the latest attempt, and each failed attempt's error.
    Column("worker_id", "uuid", "worker_id"),
    Column("errors", "jsonb", "errors", read_as="{c}::text"),
    # The producer's trace (OpenTelemetry), continued by the worker's span of the job.
    Column(
        "trace_context",
        "jsonb",
        "trace_context",
        insert_from="trace_context_json",
        insert_as="{v}::jsonb",
        param_type="text",
        read_as="{c}::text",
    ),
    # What fleet-wide per-key limits and parks count by ("customer-42").
    Column("concurrency_key", "text", "concurrency_key", insert_from="concurrency_key"),
    # What a successful attempt returned (JSON), written with its completion; the latest
    # progress the running attempt reported (cleared by every claim).
    Column("result", "jsonb", "result"),
    Column("progress", "jsonb", "progress"),
    Column("progress_message", "text", "progress_message"),
    Column("progress_at", "timestamptz", "progress_at"),
    # How long the job's unique key stays taken from its insert (Infinity: for good; NULL:
    # while the job is live only). The key itself is held in the unique_keys table.
    Column("unique_for_seconds", "float8", "unique_for", insert_from="unique_for_seconds"),
    # Due later: out of the claim's way until a poller promotes it.
    Column("scheduled", "boolean", insert_as="COALESCE({run_at} > now(), false)", live_only=True),
)

READ = tuple(c for c in JOB_ROW if c.attribute is not None)
"""What `Job.from_row` reads, in its order."""

SOURCES = tuple(c for c in JOB_ROW if c.insert_from is not None)
"""The values an insert sends per job, in this order."""

INSERT_COLUMNS = tuple(c.name for c in JOB_ROW if c.inserted)
"""What an insert writes (every other column takes its default): the columns the
producer role may insert."""

COPY_SOURCES = tuple(i for i, c in enumerate(SOURCES) if c.name != "run_at")
"""The positions in `SOURCES` a COPY writes: COPY cannot compute run_at's default or
`scheduled` from it, so the statements add those two only for jobs that have a run_at."""

MOVED_COLUMNS = ", ".join(c.name for c in JOB_ROW if not c.live_only)
"""What the janitor copies from jobs to the archive and the DLQ."""


def read_list(prefix: str = "", *, claimed: bool = False) -> str:
    """The select list `Job.from_row` reads; `claimed` reads the data as text to decode."""
    return ", ".join((c.read_as if claimed else "{c}").format(c=prefix + c.name) for c in READ)


def _written(value: dict[str, str]) -> str:
    """The select list of an insert, given the SQL of each source value."""
    return ", ".join(
        (c.insert_as or "{v}").format(v=value.get(c.name, ""), **value)
        for c in JOB_ROW
        if c.inserted
    )


def insert_values() -> str:
    """`INSERT ... (columns) VALUES (...)` of one job, its values named after their columns."""
    value = {c.name: f"%({c.name})s::{c.param_type or c.sql_type}" for c in SOURCES}
    return f"({', '.join(INSERT_COLUMNS)}) VALUES ({_written(value)})"


def insert_select() -> str:
    """`INSERT ... (columns) SELECT ... FROM unnest(...)` of a batch: one array parameter
    per source column, in `SOURCES`' order."""
    return insert_from(f"unnest({_arrays()}) AS t({_names()})")


def insert_from(source: str) -> str:
    """`INSERT ... (columns) SELECT ... FROM source`, where `source` has a column per
    source value, named after it (`source_rows()` or `source_row()` as a CTE)."""
    value = {c.name: c.name for c in SOURCES}
    return f"({', '.join(INSERT_COLUMNS)}) SELECT {_written(value)} FROM {source}"


def source_rows() -> str:
    """A batch's values as rows (the parameters of `insert_select()`), plus `ord`, each
    job's place in the batch: for a statement that reads them twice."""
    return f"SELECT * FROM unnest({_arrays()}) WITH ORDINALITY AS t({_names()}, ord)"


def source_row() -> str:
    """One job's values as one row (the parameters of `insert_values()`), `ord` 1."""
    values = ", ".join(f"%({c.name})s::{c.param_type or c.sql_type} AS {c.name}" for c in SOURCES)
    return f"SELECT {values}, 1::bigint AS ord"


def _arrays() -> str:
    return ", ".join(f"%s::{c.param_type or c.sql_type}[]" for c in SOURCES)


def _names() -> str:
    return ", ".join(c.name for c in SOURCES)
