"""QueueConfig: every knob, its default and its validation, checked when the queue is built."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from simplequeue.backoff import BackoffStrategy, Linear, check_backoff
from simplequeue.errors import ConfigError
from simplequeue.validation import as_seconds

__all__ = [
    "MAX_SCHEMA_NAME",
    "QueueConfig",
    "notify_channel",
    "validate_plain_name",
    "validate_schema_name",
]

_PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

IDENTIFIER_MAX_BYTES = 63
"""PostgreSQL's longest identifier (NAMEDATALEN - 1): a longer one is cut short or refused."""


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's jobs."""
    return f"{schema}.jobs"


def events_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of a schema's job transitions (the HTTP API's live
    events): no longer than notify_channel's, which bounds the schema name."""
    return f"{schema}.ev"


MAX_SCHEMA_NAME = IDENTIFIER_MAX_BYTES - len(notify_channel(""))
"""A longer schema name would make the NOTIFY channel too long for an identifier."""


def validate_plain_name(kind: str, name: object) -> str:
    """Names that end up in SQL as identifiers: allow only plain lower-case ones."""
    if not isinstance(name, str) or not _PLAIN_NAME.match(name):
        raise ConfigError(
            f"invalid {kind} name {name!r}: use 1-63 lower-case letters, digits or underscores, "
            "not starting with a digit"
        )
    if name.startswith("pg_"):
        raise ConfigError(f"invalid {kind} name {name!r}: names starting with pg_ are reserved")
    return name


def validate_schema_name(name: object) -> str:
    name = validate_plain_name("schema", name)
    if len(name) > MAX_SCHEMA_NAME:
        raise ConfigError(
            f"invalid schema name {name!r}: at most {MAX_SCHEMA_NAME} characters, so that "
            f"its NOTIFY channel {notify_channel(name)!r} fits PostgreSQL's "
            f"{IDENTIFIER_MAX_BYTES}-byte identifiers"
        )
    return name


MAX_SETTING_SECONDS = 100 * 365.25 * 86400.0
"""The longest duration a setting takes: a century is "never" for a queue, and longer ones
overflow a thread's wait or a PostgreSQL interval subtracted from now()."""


def _seconds(value: Any) -> Any:
    if isinstance(value, timedelta | int | float) and not isinstance(value, bool):
        return as_seconds("duration", value, maximum=MAX_SETTING_SECONDS)
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


PARTITION_WIDTHS = (7 * 86400.0, 86400.0, 6 * 3600.0, 3600.0, 900.0, 300.0, 60.0)
"""The widths an archive partition may have, widest first (see archive_partition_width)."""


class QueueConfig(BaseModel):
    """Settings of one SimpleQueue. Durations are seconds (float) or timedelta."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, arbitrary_types_allowed=True, populate_by_name=True
    )

    schema_name: str = Field("simplequeue", alias="schema")
    global_permits: int = Field(500, ge=1, description="jobs running at once in this process")
    queue_permits: int = Field(100, ge=1, description="default jobs at once per queue")
    heartbeat_interval: Seconds = Field(5.0, gt=0, description="seconds between heartbeats")
    stall_factor: float = Field(
        2.5, gt=1, le=1000, description="stalled after this many silent intervals"
    )
    backoff: Any = Field(default_factory=lambda: Linear(5.0))
    empty_poll_sleep: Seconds = Field(1.0, gt=0, description="fallback poll when idle")
    max_reprocess_count: int = Field(
        100, ge=1, description="stalls and reschedules after which a job is poison (bad_job)"
    )
    janitor_interval: Seconds = Field(60.0, gt=0, description="seconds between janitor sweeps")
    janitor_schedule: str | None = Field(None, description="cron expression; overrides interval")
    janitor_batch_size: int = Field(1000, ge=1, description="rows a janitor step moves at once")
    archive_retention: Seconds = Field(
        7 * 86400.0,
        gt=0,
        description="seconds archived jobs are kept at least (dropped with their partition, "
        "within archive_partition_width more)",
    )
    reaper_interval: Seconds | None = Field(None, gt=0, description="default: heartbeat_interval")
    leader_election: bool = Field(
        True,
        description="run the reaper and the janitor in one elected worker of the schema "
        "(off: in every worker)",
    )
    leader_ttl: Seconds | None = Field(
        None,
        ge=0.5,
        le=3600,
        description="seconds the leader's lease lasts unrenewed; renewed every third of it "
        "(default: 2 x heartbeat_interval, between 1 and 5)",
    )
    use_notify: bool = Field(True, description="wake on LISTEN/NOTIFY (see listen_dsn)")
    listen_dsn: str | None = Field(
        None,
        repr=False,  # it may hold a password
        description="connection string of the LISTEN connection alone, straight to the "
        "server when the pool goes through PgBouncer (default: the pool's)",
    )
    prepared_statements: bool | None = Field(
        None,
        description="for from_url(): let psycopg prepare the statements it runs often "
        "(default: yes, unless the connection goes through a pooler such as PgBouncer)",
    )
    strict_queues: bool = Field(
        False,
        description="refuse inserts into a queue no worker and no operator declared "
        "(otherwise: a warning, once per queue and process)",
    )
    result_batch_size: int = Field(200, ge=1, description="results written in one statement")
    result_flush_interval: Seconds = Field(
        0.002, ge=0, description="seconds a result waits for others to share its write"
    )
    max_payload_bytes: int = Field(1024 * 1024, ge=1, description="largest job data, encoded")
    max_result_bytes: int = Field(
        1024 * 1024, ge=1, description="largest value a handler may return, encoded"
    )
    max_progress_bytes: int = Field(
        64 * 1024, ge=1, description="largest progress value a handler may report, encoded"
    )
    pool_min_size: int = Field(2, ge=1, description="for from_url(): the pool it owns")
    pool_max_size: int = Field(10, ge=1, description="for from_url(): the pool it owns")

    # ConfigError is a ValueError: pydantic collects it with the other problems.
    @field_validator("schema_name")
    @classmethod
    def _schema(cls, value: str) -> str:
        return validate_schema_name(value)

    @field_validator("backoff")
    @classmethod
    def _backoff(cls, value: Any) -> BackoffStrategy:
        return check_backoff("backoff", value)

    @field_validator("listen_dsn")
    @classmethod
    def _listen_dsn(cls, value: str | None) -> str | None:
        if value is None or not value.strip():  # an empty environment variable: unset
            return None
        try:
            conninfo_to_dict(value)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"not a valid connection string: {exc}") from None
        return value

    @field_validator("janitor_schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            from croniter import croniter
        except ImportError:
            raise ValueError(
                'janitor_schedule needs the janitor extra: pip install "simplequeue[janitor]"'
            ) from None
        if not croniter.is_valid(value):
            raise ValueError(f"janitor_schedule {value!r} is not a valid cron expression")
        return value

    @classmethod
    def build(cls, **settings: Any) -> QueueConfig:
        """Validate keyword settings into a config, or raise ConfigError naming each problem."""
        try:
            config = cls(**settings)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: "
                f"{'unknown setting' if err['type'] == 'extra_forbidden' else err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid simplequeue configuration: {problems}") from None
        if config.pool_max_size < config.pool_min_size:
            raise ConfigError("invalid simplequeue configuration: pool_max_size < pool_min_size")
        return config

    @property
    def leader_lease(self) -> float:
        """Seconds the maintenance lease lasts unrenewed: `leader_ttl`, or twice the
        heartbeat interval between 1 and 5 s. A dead leader is replaced within 4/3 of it."""
        if self.leader_ttl is not None:
            return self.leader_ttl
        return min(max(2 * self.heartbeat_interval, 1.0), 5.0)

    @property
    def archive_partition_width(self) -> float:
        """Seconds of archived jobs one partition of the archive holds: the largest of
        7 days, 1 day, 6 h, 1 h, 15 min, 5 min that is at most a quarter of
        `archive_retention` (1 min below that): 4 to 16 partitions hold the retention, and a
        job stays archived at most one width past it."""
        quarter = self.archive_retention / 4
        return next((w for w in PARTITION_WIDTHS if w <= quarter), PARTITION_WIDTHS[-1])

    @property
    def stall_after(self) -> float:
        """Seconds without a heartbeat after which a running job counts as stalled."""
        return self.heartbeat_interval * self.stall_factor
