"""The archive partitioned by time: the janitor makes partitions ahead, moves completed
jobs into them, and retires those past the retention by dropping them whole."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

import simplequeue as sq
from tests.conftest import count, query

HOUR = 3600.0


def partitions(dsn: str) -> list[tuple[str, str, str]]:
    """The archive's partitions: name, lower and upper bound as the catalog has them."""
    return [
        (str(name), str(lower), str(upper))
        for name, lower, upper in query(
            dsn,
            "SELECT partition::text, lower_bound, upper_bound "
            "FROM simplequeue.archive_partitions() ORDER BY lower_bound",
        )
    ]


def where_archived(dsn: str) -> dict[str, int]:
    """How many archived rows each partition holds, the DEFAULT one included."""
    return dict(
        query(dsn, "SELECT tableoid::regclass::text, count(*) FROM simplequeue.archive GROUP BY 1")
    )


def old_partition(dsn: str) -> None:
    """`archive_old`, a partition of 5 to 3 hours ago: wholly past an hour's retention."""
    query(
        dsn,
        "CREATE TABLE simplequeue.archive_old PARTITION OF simplequeue.archive "
        "FOR VALUES FROM (now() - interval '5 hours') TO (now() - interval '3 hours')",
    )


async def complete(queue: sq.SimpleQueue, dsn: str, n: int) -> None:
    await queue.insert_jobs([sq.Job("q", i) for i in range(n)])
    query(dsn, "UPDATE simplequeue.jobs SET status = 'completed', completed_at = now()")


def test_the_partition_width_follows_the_retention() -> None:
    def width(retention: float) -> float:
        return sq.QueueConfig.build(archive_retention=retention).archive_partition_width

    assert width(7 * 86400) == 86400  # the default: a day per partition, 7 to 9 kept
    assert width(30 * 86400) == 7 * 86400
    assert width(HOUR) == 900
    assert width(600) == 60
    assert width(1) == 60  # no partition narrower than a minute


async def test_a_sweep_makes_partitions_ahead_and_archives_into_them(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    await complete(queue, dsn, 5)
    report = await queue.run_janitor()
    assert report.archived == 5 and report.failed_steps == ()
    assert report.partitions_created >= 1
    made = partitions(dsn)
    assert len(made) == report.partitions_created
    covered = query(
        dsn,
        "SELECT min(lower_bound) <= now() AND max(upper_bound) >= now() + interval '1 minute' "
        "AND max(upper_bound) <= now() + interval '1 day 1 minute' "
        "FROM simplequeue.archive_partitions()",
    )
    assert covered == [(True,)]
    assert where_archived(dsn) == {made[0][0]: 5}  # none in the DEFAULT partition
    # the next sweep finds the archive covered and makes none
    again = await queue.run_janitor()
    assert again.partitions_created == 0 and again.failed_steps == ()
    # an archived job is still read by id
    archived = query(dsn, "SELECT id FROM simplequeue.archive LIMIT 1")[0][0]
    job = await queue.get_job(archived)
    assert job is not None and job.status == sq.JobStatus.COMPLETED


async def test_partitions_past_the_retention_are_dropped_whole(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    await complete(queue, dsn, 6)
    janitor = sq.SimpleQueue(queue.pool, archive_retention=HOUR)
    assert (await janitor.run_janitor()).archived == 6
    old_partition(dsn)
    query(
        dsn,
        "CREATE TABLE simplequeue.archive_straddling PARTITION OF simplequeue.archive "
        "FOR VALUES FROM (now() - interval '3 hours') TO (now() - interval '30 minutes')",
    )
    query(
        dsn,
        "UPDATE simplequeue.archive SET moved_at = CASE WHEN (data)::int < 4 "
        "THEN now() - interval '4 hours' ELSE now() - interval '2 hours' END",
    )
    assert where_archived(dsn) == {
        "simplequeue.archive_old": 4,
        "simplequeue.archive_straddling": 2,
    }
    report = await janitor.run_janitor()
    # the partition wholly past the retention goes with its rows; the one that holds rows
    # within the retention stays, rows past it included, until its last row is past it
    assert (report.partitions_dropped, report.purged) == (1, 4)
    assert "simplequeue.archive_old" not in [p[0] for p in partitions(dsn)]
    assert count(dsn, table="archive") == 2
    assert query(dsn, "SELECT to_regclass('simplequeue.archive_old')") == [(None,)]
    assert (await janitor.run_janitor()).partitions_dropped == 0


async def test_rows_no_partition_covers_go_to_the_default_one_and_are_purged_there(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    await complete(queue, dsn, 4)
    janitor = sq.SimpleQueue(queue.pool, archive_retention=HOUR, janitor_batch_size=3)
    assert (await janitor.run_janitor()).archived == 4
    # a time no range partition covers (the first was made just now): the DEFAULT one
    query(dsn, "UPDATE simplequeue.archive SET moved_at = now() - interval '30 days'")
    assert where_archived(dsn) == {"simplequeue.archive_default": 4}
    report = await janitor.run_janitor()
    assert (report.purged, report.partitions_dropped) == (4, 0)
    assert count(dsn, table="archive") == 0


async def test_janitors_of_other_retentions_add_partitions_without_overlap(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    weekly = sq.SimpleQueue(queue.pool, archive_retention=7 * 86400)
    hourly = sq.SimpleQueue(queue.pool, archive_retention=HOUR)
    reports = await asyncio.gather(
        *(j.run_janitor() for j in (weekly, hourly, weekly, hourly, queue))
    )
    assert not any(r.failed_steps for r in reports)
    made = partitions(dsn)
    assert sum(r.partitions_created for r in reports) == len(made) >= 1
    # one after the other: each starts where the previous ends
    assert all(made[i][2] == made[i + 1][1] for i in range(len(made) - 1))


async def test_a_sweep_that_cannot_make_partitions_archives_all_the_same(
    queue: sq.SimpleQueue, dsn: str
) -> None:
    await complete(queue, dsn, 3)
    async with await psycopg.AsyncConnection.connect(dsn) as reader:
        # a long query on the archive: making a partition would have to wait for it
        await reader.execute("SELECT count(*) FROM simplequeue.archive")
        report = await queue.run_janitor()
    assert report.failed_steps == ("partitions",)
    assert report.archived == 3
    assert where_archived(dsn) == {"simplequeue.archive_default": 3}
    assert partitions(dsn) == []
    # once the query is over, the next sweep makes them
    assert (await queue.run_janitor()).partitions_created >= 1


@pytest.mark.parametrize(
    "call",
    [
        "SELECT simplequeue.archive_prepare(1)",
        "SELECT simplequeue.archive_prepare('NaN')",
        "SELECT simplequeue.archive_prepare(NULL)",
        "SELECT simplequeue.archive_prepare('Infinity')",
        "SELECT * FROM simplequeue.archive_retire(0)",
        "SELECT * FROM simplequeue.archive_retire('NaN')",
        "SELECT * FROM simplequeue.archive_retire(-1)",
        "SELECT simplequeue.archive_purge(-5, 10)",
        "SELECT simplequeue.archive_purge(60, 0)",
        "SELECT * FROM simplequeue.archive_retire('Infinity')",
    ],
)
def test_the_archive_functions_refuse_nonsense(dsn: str, call: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        query(dsn, call)
    assert partitions(dsn) == []


async def test_each_schema_keeps_its_own_partitions(queue: sq.SimpleQueue, dsn: str) -> None:
    await sq.setup(dsn, schema="tenant")
    async with sq.SimpleQueue.from_url(dsn, schema="tenant") as tenant:
        made = (await tenant.run_janitor()).partitions_created
    assert made >= 1
    assert partitions(dsn) == []  # none in the default schema
    assert query(
        dsn,
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'tenant.archive'::regclass "
        "AND inhrelid::regclass::text LIKE 'tenant.archive\\_%%'",
    ) == [(made + 1,)]  # its own, and its DEFAULT partition
