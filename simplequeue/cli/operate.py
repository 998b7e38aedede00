"""The operator's commands: stats, jobs, dlq, queues, schedules, workers, janitor, reap.

Each reads or changes the queue through `SyncQueue` (the janitor and the reaper through
`SimpleQueue`): the same calls an application makes, the same checks, the same errors.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from simplequeue.cli.common import (
    apply_log_options,
    connection_options,
    log_options,
    opened,
    reachable,
    who,
)
from simplequeue.cli.common import rate as parse_rate
from simplequeue.cli.common import when as parse_when
from simplequeue.cli.render import age, emit_json, fields, show, table
from simplequeue.durability import Durability
from simplequeue.job import Job, JobStatus
from simplequeue.limits import QueueLimits
from simplequeue.operations import MAX_BULK, MAX_LIST
from simplequeue.queue import SimpleQueue

__all__ = ["register"]

F = TypeVar("F", bound=Callable[..., Any])

STATUSES = [s.value for s in JobStatus]
DEAD = [s.value for s in JobStatus if s.is_dead]


def register(cli: click.Group) -> None:
    """Add these commands to the group."""
    for command in (stats, jobs, dlq, queues, schedules, workers, janitor, reap):
        cli.add_command(command)


def _json_option(function: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="print JSON, not a table")(function)


def _common(function: Any) -> Any:
    """--dsn, --schema and the logging options, after the command's own."""
    return connection_options(log_options(function))


def _logs(options: dict[str, Any]) -> None:
    apply_log_options(options.pop("log_level", None), options.pop("log_format", None))


# -- stats -------------------------------------------------------------------------------


@click.command(
    help="Per queue: due, scheduled, running, retrying, failed, DLQ, oldest wait, throughput."
)
@click.option(
    "--window",
    type=float,
    default=300.0,
    show_default=True,
    help="seconds the completed count and throughput cover",
)
@_json_option
@_common
def stats(window: float, as_json: bool, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    with opened(dsn, schema) as queue:
        summaries = queue.queue_summaries(window)
    show(
        as_json,
        [{**vars(s), "completed_per_minute": s.completed_per_minute} for s in summaries],
        "queues",
        ["queue", "paused", "due", "scheduled", "running", "retrying", "failed", "dlq",
         "oldest due", "done/min"],
        [
            (s.queue, s.paused, s.due, s.scheduled, s.running, s.retrying, s.dead, s.dlq,
             age(s.oldest_due_seconds), s.completed_per_minute)
            for s in summaries
        ],
    )  # fmt: skip


# -- jobs --------------------------------------------------------------------------------


@click.group(help="List, show, cancel, reschedule and retry jobs; release unique keys.")
def jobs() -> None:
    pass


def _job_rows(found: list[Job]) -> list[tuple[Any, ...]]:
    return [
        (j.id, j.queue, j.status.value, f"{j.attempt}/{j.max_attempts}", j.run_at, j.worker_id,
         (j.last_error or "").splitlines()[0][:80] if j.last_error else None)
        for j in found
    ]  # fmt: skip


JOB_COLUMNS = ["id", "queue", "status", "attempt", "run at", "worker", "last error"]


@jobs.command("list", help="Live jobs by id (oldest first), filtered; page with --after.")
@click.option("--queue", help="only this queue")
@click.option(
    "--status", multiple=True, type=click.Choice(STATUSES), help="only these statuses (repeat)"
)
@click.option("--unique-key", help="only the job(s) with this unique key")
@click.option("--fingerprint", help="only the jobs with this fingerprint")
@click.option("--since", help="only jobs created since: ISO 8601, or a duration back (15m, 2h, 7d)")
@click.option("--worker", help="only jobs whose latest attempt this worker claimed (an id)")
@click.option("--after", help="the last id of the previous page")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIST),
    default=50,
    show_default=True,
    help="most jobs to show",
)
@_json_option
@_common
def jobs_list(
    queue: str | None,
    status: tuple[str, ...],
    unique_key: str | None,
    fingerprint: str | None,
    since: str | None,
    worker: str | None,
    after: str | None,
    limit: int,
    as_json: bool,
    dsn: str,
    schema: str,
    **options: Any,
) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        found = q.list_jobs(
            queue,
            list(status) or None,
            limit,
            after=after,
            unique_key=unique_key,
            fingerprint=fingerprint,
            since=None if since is None else parse_when(since, ahead=False),
            worker=worker,
        )
    if as_json:
        emit_json({"jobs": [j.to_dict() for j in found], "next_after": _next(found, limit)})
        return
    table("jobs", JOB_COLUMNS, _job_rows(found))
    following = _next(found, limit)
    if following:
        click.echo(f"more: --after {following}")


def _next(found: list[Job], limit: int) -> str | None:
    return str(found[-1].id) if len(found) == limit else None


_JSON = ("result", "progress")
"""Fields shown as JSON after the data (None: none, shown as such)."""

SHOWN_JSON_CHARS = 2000
"""Characters of a result or a progress value `jobs show` prints; --json gives them all."""


def _shown_json(value: Any) -> str | None:
    """A result or progress value on one line, cut short when long (a result may be a
    megabyte): the line stays readable, and --json has the whole value."""
    if value is None:
        return None
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > SHOWN_JSON_CHARS:
        text = f"{text[:SHOWN_JSON_CHARS]} ... ({len(text)} characters; --json shows all)"
    return text


@jobs.command("show", help="One job: its fields, data, result, progress, and each failed attempt.")
@click.argument("job_id")
@_json_option
@_common
def jobs_show(job_id: str, as_json: bool, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        job = q.get_job(job_id)
    if job is None:
        raise click.ClickException(f"no job with id {job_id}")
    values = job.to_dict()
    if as_json:
        emit_json(values)
        return
    fields(
        [(name, values[name]) for name in values if name not in ("data", "errors", *_JSON)]
        + [("data", json.dumps(values["data"], ensure_ascii=False))]  # escaped by fields()
        + [(name, _shown_json(values[name])) for name in _JSON]
    )
    table(
        "attempts that failed",
        ["attempt", "at", "status", "worker", "error"],
        [(e.attempt, e.at, e.status, e.worker_id, e.error) for e in job.errors],
    )


def _done(changed: bool, yes: str, no: str) -> None:
    if not changed:
        raise click.ClickException(no)
    click.echo(yes)


@jobs.command("cancel", help="Cancel a pending or running job.")
@click.argument("job_id")
@_common
def jobs_cancel(job_id: str, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        _done(
            q.cancel_job(job_id), f"cancelled {job_id}", f"job {job_id} is not pending or running"
        )


@jobs.command(
    "reschedule", help="Move a pending job's due time (ISO 8601, or a duration ahead: 30m)."
)
@click.argument("job_id")
@click.argument("run_at")
@_common
def jobs_reschedule(job_id: str, run_at: str, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    moment = parse_when(run_at, ahead=True)
    with opened(dsn, schema) as q:
        _done(
            q.reschedule_job(job_id, moment),
            f"rescheduled {job_id} to {moment.isoformat()}",
            f"job {job_id} is not pending",
        )


@jobs.command("retry", help="Run a job now: a pending one becomes due, a dead one runs again.")
@click.argument("job_id")
@_common
def jobs_retry(job_id: str, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        _done(
            q.retry_job(job_id),
            f"retrying {job_id}",
            f"job {job_id} is neither pending nor dead (or a live job holds its unique key)",
        )


@jobs.command(
    "release-key",
    help="Free a unique key held over time (unique_for) before its period ends: the next "
    "insert with it is stored.",
)
@click.argument("unique_key")
@_common
def jobs_release_key(unique_key: str, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        _done(
            q.release_unique_key(unique_key),
            f"released unique key {unique_key}",
            f"unique key {unique_key} is not held over time (never taken so, ended, or "
            "released already)",
        )


# -- dlq ---------------------------------------------------------------------------------


@click.group(help="The dead-letter queue: list, requeue, purge (one job, or in bulk).")
def dlq() -> None:
    pass


@dlq.command("list", help="Dead jobs, newest first.")
@click.option("--queue", help="only this queue")
@click.option(
    "--status", multiple=True, type=click.Choice(DEAD), help="only these dead statuses (repeat)"
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIST),
    default=50,
    show_default=True,
    help="most jobs to show",
)
@_json_option
@_common
def dlq_list(
    queue: str | None,
    status: tuple[str, ...],
    limit: int,
    as_json: bool,
    dsn: str,
    schema: str,
    **options: Any,
) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        found = q.list_dlq(queue, limit, status=list(status) or None)
    show(as_json, [j.to_dict() for j in found], "dead jobs", JOB_COLUMNS, _job_rows(found))


def _bulk(verb: str) -> Callable[[F], F]:
    """A bulk DLQ command: one job by id, or every dead job the filters pick, counted
    first and confirmed (or --yes)."""

    def decorate(function: F) -> F:
        options = [
            click.argument("job_id", required=False),
            click.option("--queue", help="only this queue"),
            click.option(
                "--status",
                multiple=True,
                type=click.Choice(DEAD),
                help="only these dead statuses (repeat)",
            ),
            click.option(
                "--older-than",
                help="only jobs that died before: a duration (2h, 7d) or an ISO 8601 time",
            ),
            click.option(
                "--limit",
                type=click.IntRange(1, MAX_BULK),
                default=MAX_BULK,
                show_default=True,
                help=f"most jobs to {verb}",
            ),
            click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation"),
        ]
        for option in reversed(options):
            function = option(function)
        return _common(function)  # type: ignore[no-any-return]

    return decorate


def _pick(
    q: Any, job_id: str | None, queue: str | None, status: tuple[str, ...], older_than: str | None
) -> dict[str, Any] | None:
    """The filters of a bulk call (None: one job by id); both at once is a usage error."""
    if job_id is not None:
        if queue or status or older_than:
            raise click.UsageError(
                "give a job id, or filters (--queue, --status, --older-than), not both"
            )
        return None
    before: datetime | None = None if older_than is None else parse_when(older_than, ahead=False)
    return {"queue": queue, "status": list(status) or None, "before": before}


def _confirmed(q: Any, filters: dict[str, Any], verb: str, yes: bool, limit: int) -> bool:
    matching = q.count_dlq(**filters)
    if not matching:
        raise click.ClickException("no dead job matches")
    many = min(matching, limit)
    if not yes:
        click.confirm(f"{verb} {many} dead job(s)?", abort=True, err=True)
    return True


def _dead_jobs_command(verb: str, done: str, help_text: str, held: bool) -> click.Command:
    """`dlq requeue` or `dlq purge`: one dead job by id, or every match, counted and
    confirmed first. `held`: a live job holding a unique key may keep a job where it is."""
    if_held = ", or a live job holds its unique key" if held else ""

    @dlq.command(verb, help=help_text)
    @_bulk(verb)
    def command(
        job_id: str | None,
        queue: str | None,
        status: tuple[str, ...],
        older_than: str | None,
        limit: int,
        yes: bool,
        dsn: str,
        schema: str,
        **options: Any,
    ) -> None:
        _logs(options)
        with opened(dsn, schema) as q:
            one, many = getattr(q, f"{verb}_dlq_job"), getattr(q, f"{verb}_dlq")
            filters = _pick(q, job_id, queue, status, older_than)
            if filters is None:
                _done(one(job_id), f"{done} {job_id}", f"no dead job {job_id} to {verb}{if_held}")
            elif _confirmed(q, filters, verb, yes, limit):
                n = many(**filters, limit=limit)
                _done(bool(n), f"{done} {n} dead job(s)", f"{done} none: live jobs hold their keys")

    return command


dlq_requeue = _dead_jobs_command(
    "requeue", "requeued", "Back to pending with fresh attempts: one job, or every match.", True
)
dlq_purge = _dead_jobs_command(
    "purge", "purged", "Delete dead jobs for good: one job, or every match.", False
)


# -- queues and workers ------------------------------------------------------------------


@click.group(help="List, pause and resume queues (for every worker of the fleet).")
def queues() -> None:
    pass


@queues.command("list", help="Declared queues: paused or not, by whom, until when; live workers.")
@_json_option
@_common
def queues_list(as_json: bool, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        found = q.list_queues()
    show(
        as_json,
        [info.to_dict() for info in found],
        "queues",
        ["queue", "paused", "since", "until", "by", "reason", "limits", "durability",
         "parked until", "workers", "last seen"],
        [(i.name, i.paused, i.paused_at if i.paused else None, i.paused_until if i.paused else None,
          i.paused_by, i.pause_reason, _limits(i.limits), i.durability.value, i.parked_until,
          i.workers, i.last_seen)
         for i in found],
    )  # fmt: skip


def _limits(limits: QueueLimits) -> str:
    """A queue's fleet-wide limits in a table cell."""
    parts = []
    if limits.max_running is not None:
        parts.append(f"running≤{limits.max_running}")
    if limits.max_running_per_key is not None:
        parts.append(f"per key≤{limits.max_running_per_key}")
    for label, rate in (("rate", limits.rate_limit), ("rate per key", limits.rate_limit_per_key)):
        if rate is not None:
            parts.append(f"{label} {rate.limit}/{rate.seconds:g}s")
    if limits.fair:
        parts.append("fair")
    return ", ".join(parts)


@queues.command(
    "configure",
    help="Set the queue's fleet-wide limits and durability, for every worker (each call sets "
    "them all: a limit left out is lifted, a durability left out is durable).",
)
@click.argument("name")
@click.option("--max-running", type=click.IntRange(min=1), help="jobs running at once")
@click.option(
    "--max-running-per-key", type=click.IntRange(min=1), help="jobs running at once per key"
)
@click.option("--rate", "rate_text", help="starts per window across the fleet: 100/1s, 10/1m")
@click.option("--rate-per-key", "rate_per_key_text", help="starts per window per key")
@click.option("--fair/--not-fair", default=False, help="take every key's next job in turn")
@click.option(
    "--durability",
    type=click.Choice([mode.value for mode in Durability]),
    default=Durability.DURABLE.value,
    show_default=True,
    help="fast: workers commit the queue's claims, results, heartbeats and progress without "
    "waiting for the disk (a server crash may run the last jobs again; docs/durability.md)",
)
@_common
def queues_configure(
    name: str,
    max_running: int | None,
    max_running_per_key: int | None,
    rate_text: str | None,
    rate_per_key_text: str | None,
    fair: bool,
    durability: str,
    dsn: str,
    schema: str,
    **options: Any,
) -> None:
    _logs(options)
    rate_limit, rate_per_key = parse_rate(rate_text), parse_rate(rate_per_key_text)
    with opened(dsn, schema) as q:
        info = q.configure_queue(
            name,
            max_running=max_running,
            max_running_per_key=max_running_per_key,
            rate_limit=rate_limit,
            rate_limit_per_key=rate_per_key,
            fair=fair,
            durability=durability,
        )
    limits = _limits(info.limits) or "no limits"
    click.echo(f"configured {name}: {limits}; durability {info.durability.value}")


@queues.command("park", help="No job of the queue (or of one key) starts before a time.")
@click.argument("name")
@click.option("--until", required=True, help="a duration ahead (30s, 15m, 2h) or an ISO 8601 time")
@click.option("--key", help="only the jobs of this concurrency key")
@_common
def queues_park(
    name: str, until: str, key: str | None, dsn: str, schema: str, **options: Any
) -> None:
    _logs(options)
    moment = parse_when(until, ahead=True)
    with opened(dsn, schema) as q:
        q.park(name, moment, key=key)
    click.echo(f"parked {name}{f' key {key}' if key else ''} until {moment.isoformat()}")


@queues.command("unpark", help="Lift a park: the jobs may start at once.")
@click.argument("name")
@click.option("--key", help="the concurrency key parked")
@_common
def queues_unpark(name: str, key: str | None, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    what = f"{name}{f' key {key}' if key else ''}"
    with opened(dsn, schema) as q:
        _done(q.unpark(name, key=key), f"unparked {what}", f"{what} is not parked")


@queues.command(
    "pause", help="No worker claims the queue's jobs until it is resumed; running jobs finish."
)
@click.argument("name")
@click.option(
    "--until", help="resume by itself then: a duration ahead (30m, 2h) or an ISO 8601 time"
)
@click.option("--reason", help="why, for the other operators")
@click.option("--by", help="who pauses it  [default: $USER@host]")
@_common
def queues_pause(
    name: str,
    until: str | None,
    reason: str | None,
    by: str | None,
    dsn: str,
    schema: str,
    **options: Any,
) -> None:
    _logs(options)
    moment = None if until is None else parse_when(until, ahead=True)
    with opened(dsn, schema) as q:
        info = q.pause_queue(name, until=moment, by=by or who(), reason=reason)
    ends = f" until {info.paused_until.isoformat()}" if info.paused_until else ""
    click.echo(f"paused {name}{ends}")


@queues.command("resume", help="Lift a pause; idle workers start at once.")
@click.argument("name")
@_common
def queues_resume(name: str, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        _done(q.resume_queue(name), f"resumed {name}", f"queue {name} is not paused")


@queues.command(
    "declare", help="Make queues known without a worker (inserts into them do not warn)."
)
@click.argument("names", nargs=-1, required=True)
@_common
def queues_declare(names: tuple[str, ...], dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        q.declare_queues(names)
    click.echo(f"declared {', '.join(names)}")


@click.group(help="The schedules the workers registered: list, pause, resume, delete.")
def schedules() -> None:
    pass


@schedules.command(
    "list", help="Every schedule: its rule, paused or not, last and next slot, jobs enqueued."
)
@_json_option
@_common
def schedules_list(as_json: bool, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        found = q.list_schedules()
    show(
        as_json,
        [info.to_dict() for info in found],
        "schedules",
        ["schedule", "queue", "rule", "missed", "paused", "last slot", "next slot", "enqueued",
         "last registered"],
        [(i.name, i.queue, i.rule,
          i.missed, i.paused, i.last_slot, None if i.paused else i.next_slot, i.enqueued,
          i.seen_at) for i in found],
    )  # fmt: skip


def _schedule_command(verb: str, done: str, help_text: str) -> click.Command:
    """`schedules pause|resume|delete NAME`: one SyncQueue call, False for an unknown name."""

    @schedules.command(verb, help=help_text)
    @click.argument("name")
    @_common
    def command(name: str, dsn: str, schema: str, **options: Any) -> None:
        _logs(options)
        with opened(dsn, schema) as q:
            changed = getattr(q, f"{verb}_schedule")(name)
        _done(changed, f"{done} schedule {name}", f"no schedule named {name}")

    return command


schedules_pause = _schedule_command(
    "pause", "paused", "Stop enqueuing a schedule, fleet-wide, until resumed."
)
schedules_resume = _schedule_command(
    "resume", "resumed", "Enqueue a paused schedule again, from its next slot."
)
schedules_delete = _schedule_command(
    "delete",
    "deleted",
    "Forget a schedule no code registers any more (a worker that does writes it again "
    "within a minute).",
)


@click.group(help="The workers of the fleet.")
def workers() -> None:
    pass


@workers.command(
    "list", help="Every worker: host, pid, queues, last beat, alive, jobs running, the leader."
)
@_json_option
@_common
def workers_list(as_json: bool, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    with opened(dsn, schema) as q:
        found = q.list_workers()
    show(
        as_json,
        [info.to_dict() for info in found],
        "workers",
        ["id", "host", "pid", "queues", "started", "last beat", "alive", "stopping", "running",
         "leader"],
        [(w.id, w.host, w.pid, w.queues, w.started_at, w.heartbeat_at, w.alive,
          w.stopping_at is not None, w.running, w.leader) for w in found],
    )  # fmt: skip


# -- maintenance -------------------------------------------------------------------------


@click.group(help="The janitor: archive completed jobs, move dead ones to the DLQ, purge.")
def janitor() -> None:
    pass


async def _sweep(dsn: str, schema: str, janitor: bool) -> Any:
    reachable(dsn)
    async with SimpleQueue.from_url(dsn, schema=schema, pool_min_size=1, pool_max_size=2) as q:
        return await (q.run_janitor() if janitor else q.reap())


@janitor.command("run", help="One janitor sweep now.")
@_json_option
@_common
def janitor_run(as_json: bool, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    report = asyncio.run(_sweep(dsn, schema, janitor=True))
    emit_json(vars(report)) if as_json else click.echo(
        ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in vars(report).items())
    )


@click.command(help="One reaper sweep now: stalled jobs back to pending, exhausted ones failed.")
@_json_option
@_common
def reap(as_json: bool, dsn: str, schema: str, **options: Any) -> None:
    _logs(options)
    report = asyncio.run(_sweep(dsn, schema, janitor=False))
    emit_json(vars(report)) if as_json else click.echo(
        ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in vars(report).items())
    )
