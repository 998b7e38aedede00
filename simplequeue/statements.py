"""Every SQL statement of the running library, each with a line on why it is written so.

Templates: `{s}` is the schema, rendered once per schema by `Store`; every value is a
bound parameter (`%s`, `%(name)s`). Batched statements take parallel arrays and `unnest`
them, so one round trip serves a whole batch. Anything that changes a running job is
fenced by its `lease` (bumped at every claim), so a late write from a worker that lost the
job changes nothing. Column lists come from `columns.JOB_ROW`.
"""

from __future__ import annotations

from simplequeue import columns
from simplequeue.durability import Durability
from simplequeue.job import DEAD_STATUSES, MAX_ATTEMPT_ERRORS

_READ = columns.read_list()
"""What `Job.from_row` reads, in its order."""
_DEAD = "(" + ", ".join(f"'{s}'" for s in DEAD_STATUSES) + ")"
_STATUS_IN = "(%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s))"
_LISTENED = "EXISTS (SELECT 1 FROM {s}.event_listeners WHERE expires_at > now())"
"""Some server of the HTTP API listens to the job events now."""

# Both inserts skip a job on any conflict: a live job holding its unique key
# (jobs_unique_key_live), or its own id already stored by an earlier try of the same insert.
# A job due later is `scheduled`: out of the claim's way until a poller promotes it.
# (Column lists, casts and the `scheduled` rule come from `columns.JOB_ROW`.)
INSERT = (
    "INSERT INTO {s}.jobs "
    + columns.insert_select()
    + " ON CONFLICT DO NOTHING RETURNING id, queue"
)
INSERT_ONE = (
    "INSERT INTO {s}.jobs "
    + columns.insert_values()
    + " ON CONFLICT DO NOTHING RETURNING id, queue"
)


STORED_IDS = "SELECT id FROM {s}.jobs WHERE id = ANY(%s::uuid[])"
STORED_ANYWHERE_IDS = (
    "SELECT id FROM {s}.jobs WHERE id = ANY(%s::uuid[]) "
    "UNION ALL SELECT id FROM {s}.archive WHERE id = ANY(%s::uuid[]) "
    "UNION ALL SELECT id FROM {s}.dlq WHERE id = ANY(%s::uuid[])"
)
CAN_READ_FINISHED = (
    "SELECT has_table_privilege({archive}, 'SELECT') AND has_table_privilege({dlq}, 'SELECT')"
)


EVENTS_PER_NOTIFY = 40
"""Events one NOTIFY carries: 40 lines of at most 190 bytes (a kind, an id, a queue name
of at most 120 bytes once JSON-escaped, or the md5 of a longer one) stay within
PostgreSQL's 8000-byte payload."""

EVENT_KIND = (
    "CASE {status} WHEN 'pending' THEN 'retried' WHEN 'running' THEN 'started' "
    "WHEN 'completed' THEN 'completed' WHEN 'failed' THEN 'failed' "
    "WHEN 'cancelled' THEN 'cancelled' ELSE 'dead' END"
)
"""A job's new status as the event the HTTP API streams: a pending job after an attempt
was retried, a running one started; critical_failure, unprocessable and bad_job are dead."""


def publishing(change: str, kind: str, also: str = "", before: str = "") -> str:
    """The change (a data-modifying statement RETURNING at least `id` and `queue`), plus one
    NOTIFY on the events channel per EVENTS_PER_NOTIFY changed rows, delivered at commit:
    a JSON array [kind, id, queue] per line, or [kind, id, null, md5 of the queue] when
    the queue's name is longer than 120 bytes once JSON-escaped (quotes, backslashes and
    control characters grow). The rows come back as the change returned them, then
    `also`'s columns, then one more. Uncorrelated sub-selects run once (InitPlans), and
    only when a row changed. `before`: CTEs the change reads ("a AS (...), "), which
    must stand at the top level when they modify data."""
    return (
        f"WITH {before}changed AS ({change}) "
        f"SELECT changed.*{also}, (SELECT count(*) FROM (SELECT pg_notify({{events}}, "
        f"string_agg((CASE WHEN octet_length(to_json(queue)::text) <= 122 "
        f"THEN json_build_array({kind}, id, queue) "
        f"ELSE json_build_array({kind}, id, NULL, md5(queue)) END)::text, E'\\n')) "
        "FROM (SELECT *, (row_number() OVER () - 1) / "
        f"{EVENTS_PER_NOTIFY} AS chunk FROM changed) AS numbered GROUP BY chunk) AS sent) "
        "FROM changed"
    )


def quiet(change: str, also: str = "", before: str = "") -> str:
    """The change as `publishing` returns it, less the events (nobody listens to them):
    the same leading columns, so both variants read alike."""
    if also:
        return f"WITH {before}changed AS ({change}) SELECT changed.*{also} FROM changed"
    return f"WITH {before.removesuffix(', ')} {change}" if before else change


# After a COPY (which cannot notify): the insert's NOTIFY and its events, from the ids and
# queues of the jobs it wrote.
# After a COPY, one row back whatever the batch's size: the events of its jobs (when
# someone listens), and the NOTIFY that wakes workers.
_COPIED = "SELECT * FROM unnest(%s::uuid[], %s::text[]) AS copied(id, queue)"
_WAKE = ", (SELECT pg_notify(%s, %s))"
NOTIFY_COPIED = (
    "SELECT count(*) FROM (" + publishing(_COPIED, "'inserted'", also=_WAKE) + ") AS sent"
)

# Inserts with notifications: one NOTIFY naming the queues, on the channel that wakes
# workers, and the events of the HTTP API.
INSERT_NOTIFY = publishing(INSERT, "'inserted'", also=_WAKE)
INSERT_NOTIFY_QUIET = quiet(INSERT, also=_WAKE)
_WAKE_ONE = ", (SELECT pg_notify(%(channel)s, %(queues)s))"
INSERT_ONE_NOTIFY = publishing(INSERT_ONE, "'inserted'", also=_WAKE_ONE)
INSERT_ONE_NOTIFY_QUIET = quiet(INSERT_ONE, also=_WAKE_ONE)

# Inserts of jobs whose unique key stays taken for a while after their insert, or for good
# (`unique_for`): the key is claimed by the statement that inserts the job, never read
# first. The INSERT into unique_keys takes a key nobody holds, or takes over one whose
# period has ended (ON CONFLICT ... WHERE, checked on the key's row once locked: of
# concurrent inserts of one key, the first to write it holds it, and the others wait for
# its transaction, then find it held, or take it if that transaction rolled back); only
# the jobs whose key was won are inserted. Per key, the batch's first job decides
# (DISTINCT ON: a statement may not claim one row twice, and a plain job first takes the
# key as INSERT would), in key order (concurrent batches lock keys in one order). No key
# is claimed while a live job holds it (whatever that job asked), so no key is held for a
# job the live index then skips. The period counts from the statement's start
# (statement_timestamp(), the database clock), not from the start of a long transaction
# of the caller's. Jobs without `unique_for` in the same batch are inserted as by INSERT.
_CLAIM_KEYS = """claimed AS (
    INSERT INTO {s}.unique_keys AS k (key, job_id, queue, claimed_at, expires_at)
    SELECT f.unique_key, f.id, f.queue, statement_timestamp(),
           CASE WHEN f.unique_for_seconds = 'Infinity' THEN NULL
                ELSE statement_timestamp() + make_interval(secs => f.unique_for_seconds) END
    FROM (SELECT DISTINCT ON (t.unique_key) * FROM t WHERE t.unique_key IS NOT NULL
          ORDER BY t.unique_key, t.ord) AS f
    WHERE f.unique_for_seconds IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM {s}.jobs AS live WHERE live.unique_key = f.unique_key
                      AND live.status IN ('pending', 'running'))
    ORDER BY f.unique_key
    ON CONFLICT (key) DO UPDATE SET job_id = EXCLUDED.job_id, queue = EXCLUDED.queue,
        claimed_at = EXCLUDED.claimed_at, expires_at = EXCLUDED.expires_at
    WHERE k.expires_at <= statement_timestamp()
    RETURNING k.job_id
), """
_INSERT_CLAIMED = (
    "INSERT INTO {s}.jobs "
    + columns.insert_from("t")
    + " WHERE (t.unique_for_seconds IS NULL OR t.id IN (SELECT job_id FROM claimed))"
    # the first job of a key decides for the others of the batch, refused or not
    " AND (t.unique_key IS NULL OR t.id IN (SELECT DISTINCT ON (unique_key) id FROM t"
    " WHERE unique_key IS NOT NULL ORDER BY unique_key, ord))"
    " ON CONFLICT DO NOTHING RETURNING id, queue"
)
_MANY = "t AS (" + columns.source_rows() + "), " + _CLAIM_KEYS
_ONE = "t AS (" + columns.source_row() + "), " + _CLAIM_KEYS
INSERT_UNIQUE = quiet(_INSERT_CLAIMED, before=_MANY)
INSERT_UNIQUE_NOTIFY = publishing(_INSERT_CLAIMED, "'inserted'", also=_WAKE, before=_MANY)
INSERT_UNIQUE_NOTIFY_QUIET = quiet(_INSERT_CLAIMED, also=_WAKE, before=_MANY)
INSERT_ONE_UNIQUE = quiet(_INSERT_CLAIMED, before=_ONE)
INSERT_ONE_UNIQUE_NOTIFY = publishing(_INSERT_CLAIMED, "'inserted'", also=_WAKE_ONE, before=_ONE)
INSERT_ONE_UNIQUE_NOTIFY_QUIET = quiet(_INSERT_CLAIMED, also=_WAKE_ONE, before=_ONE)

# After an insert that claimed a key for a job the live index then skipped (a live job of
# the key became visible only once the claim had waited for its transaction): the claim is
# undone, in the insert's transaction. The key's earlier holder had a period that ended
# (or there would have been no claim), so no key is left held for a job never stored.
UNCLAIM_KEYS = (
    "DELETE FROM {s}.unique_keys WHERE key = ANY(%s::text[]) AND job_id = ANY(%s::uuid[])"
)

# A retry of an insert that may have landed: which of these jobs hold their key (claimed by
# the earlier try, which stored them too), found by key.
HOLDING_KEYS = (
    "SELECT job_id FROM {s}.unique_keys WHERE key = ANY(%s::text[]) AND job_id = ANY(%s::uuid[])"
)

# An operator frees a key before its period ends: the next insert with it may take it
# (while a live job holds it, the live index still refuses one). Answers whether it was
# still held.
RELEASE_UNIQUE_KEY = (
    "DELETE FROM {s}.unique_keys WHERE key = %s "
    "RETURNING expires_at IS NULL OR expires_at > statement_timestamp()"
)

# Keys whose period ended, oldest first, in a bounded batch (the reaper's): a claim takes
# over such a row anyway, so this only keeps the table from growing. A key taken over
# meanwhile is locked by its claim (skipped) or no longer expired once locked.
FORGET_EXPIRED_KEYS = """
DELETE FROM {s}.unique_keys WHERE key IN (
    SELECT key FROM {s}.unique_keys WHERE expires_at <= statement_timestamp()
    ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED)
"""


# COPY writes values as they are: no COALESCE with now(), no comparison with it. A job
# without run_at leaves run_at and scheduled to their defaults (now, false); one with a
# run_at goes in as scheduled, and the first promotion makes it claimable once due.
COPY_COLUMNS = ", ".join(columns.SOURCES[i].name for i in columns.COPY_SOURCES)
COPY = "COPY {s}.jobs (" + COPY_COLUMNS + ") FROM STDIN"
COPY_RUN_AT = "COPY {s}.jobs (" + COPY_COLUMNS + ", run_at, scheduled) FROM STDIN"


def paused_now(row: str) -> str:
    """True when the queues row (`row` is its alias and a dot, or empty) is paused now."""
    return (
        f"({row}paused_at IS NOT NULL AND ({row}paused_until IS NULL OR {row}paused_until > now()))"
    )


def controlled_now(row: str) -> str:
    """True when the queues row is claimed by claim_controlled now: it has limits, is
    fair, or some of its keys are parked."""
    return f"({row}controlled OR {row}keys_parked_until > now())"


def held(queue: str) -> str:
    """True when the plain claim skips the queue named by the SQL `queue`: paused, parked
    or controlled now (one primary-key probe of the small queues table per queue)."""
    return (
        "EXISTS (SELECT 1 FROM {s}.queues AS held WHERE held.name = "
        + queue
        + " AND ("
        + paused_now("held.")
        + " OR held.parked_until > now() OR "
        + controlled_now("held.")
        + "))"
    )


def with_error(error: str, status: str, *, nullable: bool = True) -> str:
    """The errors column of a row `j` with one more attempt's error (when `error` is not
    NULL): its attempt, time, text, outcome and worker, the oldest dropped past the most
    a job keeps."""
    appended = (
        "(CASE WHEN jsonb_typeof(j.errors) <> 'array' THEN '[]'::jsonb "
        f"WHEN jsonb_array_length(j.errors) >= {MAX_ATTEMPT_ERRORS} "
        "THEN j.errors - 0 ELSE j.errors END) || jsonb_build_array(jsonb_build_object("
        f"'attempt', j.attempt, 'at', now(), 'error', {error}, 'status', {status}, "
        "'worker_id', j.worker_id))"
    )
    return f"CASE WHEN {error} IS NULL THEN j.errors ELSE {appended} END" if nullable else appended


def fast_commit(fast: str) -> str:
    """A column for a worker's write's RETURNING list: when the bound boolean `fast` is
    true, it turns synchronous_commit off for the write's own transaction (set_config's
    is_local), which then commits without waiting for its WAL to reach the disk (the
    queue is fast: docs/durability.md). NULL otherwise, the session's setting untouched.

    Evaluated for every row the write changes, so a write that changed a row commits
    fast; one that changed none committed nothing to lose. The library's connections
    run each such statement as a transaction of its own (autocommit): the runtime asks
    for fast only there (`drivers.commits_alone`), never for a write that also changes
    a durable queue's jobs."""
    return f"CASE WHEN {fast}::boolean THEN set_config('synchronous_commit', 'off', true) END"


# Jobs of these queues a claim could take now, or right after a promotion (not those of
# a paused or parked queue, or of a parked key): what `drain()` waits to see run out.
COUNT_DUE = (
    """
SELECT count(*) FROM {s}.jobs
WHERE status = 'pending' AND queue = ANY(%s::text[]) AND run_at <= now()
  AND attempt < max_attempts
  AND NOT EXISTS (SELECT 1 FROM {s}.queues AS q WHERE q.name = jobs.queue
                  AND ("""
    + paused_now("q.")
    + """ OR q.parked_until > now()))
  AND NOT EXISTS (SELECT 1 FROM {s}.parked_keys AS p WHERE p.queue = jobs.queue
                  AND p.key = jobs.concurrency_key AND p.until > now())
"""
)

# Promotes scheduled jobs that have come due, so that the claim finds them: a bounded
# batch of the queues the poller claims from, read in jobs_scheduled's order (per queue,
# the earliest first), so it stops after `limit` rows however many have come due. One
# row back, how many.
PROMOTE = (
    """
WITH promoted AS (
    UPDATE {s}.jobs AS j SET scheduled = false
    FROM (
        SELECT id FROM {s}.jobs
        WHERE status = 'pending' AND scheduled AND queue = ANY(%(queues)s::text[])
          AND run_at <= now()
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE j.id = due.id
    RETURNING """
    + fast_commit("%(fast)s")
    + """
)
SELECT count(*) FROM promoted
"""
)


# heartbeat_at takes clock_timestamp(), not now(): a claim (or a beat) that waited on a lock
# would otherwise stamp the time it started waiting, and the reaper would take the job at once.
def _claiming(candidates: str) -> str:
    """The claim's one UPDATE: the jobs `candidates` (a CTE of ids) names become running
    under a new lease, for the worker, attempt counted; the rows come back to read (and,
    after them, `fast_commit`: the claim's transaction is fast when its queues are)."""
    return (
        f"WITH candidates AS ({candidates}) "
        """
UPDATE {s}.jobs AS jobs
SET status = 'running', attempt = jobs.attempt + 1, lease = jobs.lease + 1,
    heartbeat_at = clock_timestamp(), updated_at = now(), worker_id = %(worker)s::uuid,
    progress = NULL, progress_message = NULL, progress_at = NULL
FROM candidates
WHERE jobs.id = candidates.id
RETURNING """
        + columns.read_list("jobs.", claimed=True)
        + ", "
        + fast_commit("%(fast)s")
        + " AS fast_commit"
    )


# The plain claim: per queue, its first due jobs, skipping the queues it may not claim
# from (paused, parked, or controlled: those are claimed by CLAIM_CONTROLLED).
# The due-and-claimable test is also claim_controlled's (sql/0007_fleet_limits.sql).
CLAIM = _claiming(
    """
    SELECT j.id
    FROM (SELECT name, lim FROM unnest(%(queues)s::text[], %(limits)s::int[]) AS u(name, lim)
          WHERE NOT """
    + held("u.name")
    + """) AS q
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at
        FROM {s}.jobs
        WHERE status = 'pending' AND NOT scheduled AND queue = q.name AND run_at <= now()
          AND attempt < max_attempts
        ORDER BY priority DESC, run_at, id
        LIMIT q.lim
        FOR UPDATE SKIP LOCKED
    ) AS j
    ORDER BY j.priority DESC, j.run_at, j.id
    LIMIT %(total)s
"""
)
CLAIM_QUIET = CLAIM
CLAIM = publishing(CLAIM, "'started'")

# The claim of controlled queues (fleet-wide limits, fairness or parked keys): the
# schema's claim_controlled function picks each queue's jobs, one claim of a queue at a
# time across the fleet. Queues in the order of their locks' keys (the hash of the name):
# two claims take their locks in one order, and cannot deadlock.
CLAIM_CONTROLLED = _claiming(
    """
    SELECT c.id
    FROM (SELECT name, lim FROM unnest(%(queues)s::text[], %(limits)s::int[]) AS u(name, lim)
          ORDER BY hashtext(name), name) AS u
    CROSS JOIN LATERAL {s}.claim_controlled(u.name, u.lim) AS c(id)
"""
)
CLAIM_CONTROLLED_QUIET = CLAIM_CONTROLLED
CLAIM_CONTROLLED = publishing(CLAIM_CONTROLLED, "'started'")

# Of these queues, those the plain claim skips for being controlled (or having parked
# keys), and those whose writes commit fast: what a worker reads once a second. A queue
# that is neither costs no row.
_FAST = f"q.durability = '{Durability.FAST.value}'"
QUEUE_CONTROLS = (
    "SELECT name, "
    + controlled_now("q.")
    + ", "
    + _FAST
    + " FROM {s}.queues AS q WHERE name = ANY(%s::text[]) AND ("
    + controlled_now("q.")
    + " OR "
    + _FAST
    + ")"
)

# Result writes lock their rows in a sub-select that skips rows another transaction holds
# (a heartbeat, a cancel, a user's long transaction): the writer never waits, so one held
# row cannot stall every result of the process, and it cannot deadlock. It writes the
# skipped results again a moment later (`running_runs` tells them from fenced-off ones).
# The sub-select checks status and lease on the version it locks; locked, the row cannot
# change again before the UPDATE above it, which finds it by id.

# A handler's returned values travel as a third array of JSON text, NULL when no job of
# the batch returned one (unnest pads a NULL array with NULLs): plain completions, most of
# them, send nothing more.
COMPLETE = (
    """
UPDATE {s}.jobs AS j
SET status = 'completed', completed_at = now(), heartbeat_at = NULL, updated_at = now(),
    result = locked.result::jsonb
FROM (
    SELECT jobs.id, r.result FROM {s}.jobs
    JOIN unnest(%s::uuid[], %s::int[], %s::text[]) AS r(id, lease, result)
        ON jobs.id = r.id AND jobs.lease = r.lease
    WHERE jobs.status = 'running'
    FOR UPDATE OF jobs SKIP LOCKED
) AS locked
WHERE j.id = locked.id
RETURNING j.id, j.queue, """
    + fast_commit("%s")
    + """ AS fast_commit
"""
)
COMPLETE_QUIET = COMPLETE
COMPLETE = publishing(COMPLETE, "'completed'")

WRITE_OUTCOMES = (
    """
UPDATE {s}.jobs AS j
SET status = r.status,
    attempt = j.attempt - r.refund,
    reprocess_count = j.reprocess_count + r.reprocess,
    run_at = CASE WHEN r.status = 'pending' THEN r.next_run_at ELSE j.run_at END,
    scheduled = r.status = 'pending' AND r.next_run_at > now(),
    last_error = COALESCE(r.error, j.last_error),
    errors = """
    + with_error("r.error", "r.status")
    + """,
    completed_at = CASE WHEN r.status = 'pending' THEN NULL ELSE now() END,
    heartbeat_at = NULL,
    updated_at = now()
FROM (
    SELECT jobs.id, r.status, r.refund, r.reprocess, r.error,
           LEAST(GREATEST(now() + make_interval(secs => r.delay), r.not_before), {latest})
               AS next_run_at
    FROM {s}.jobs
    JOIN unnest(%s::uuid[], %s::int[], %s::text[], %s::int[], %s::int[], %s::float8[],
                %s::timestamptz[], %s::text[])
         AS r(id, lease, status, refund, reprocess, delay, not_before, error)
        ON jobs.id = r.id AND jobs.lease = r.lease
    WHERE jobs.status = 'running'
    FOR UPDATE OF jobs SKIP LOCKED
) AS r
WHERE j.id = r.id
RETURNING j.id, j.queue, j.status, """
    + fast_commit("%s")
    + """ AS fast_commit
"""
)
WRITE_OUTCOMES_QUIET = WRITE_OUTCOMES
WRITE_OUTCOMES = publishing(WRITE_OUTCOMES, EVENT_KIND.format(status="status"))

# SKIP LOCKED: a row held by another transaction (a result write, a cancel, a user's long
# transaction) must not block the beats of all the others; it is beaten next interval.
# The ids returned are read from the snapshot, locked or not: still running under the lease.
# Never waiting on a lock, a beat cannot deadlock with a result write either.
HEARTBEAT = (
    """
WITH mine AS (
    SELECT j.id, j.lease FROM {s}.jobs AS j
    JOIN unnest(%s::uuid[], %s::int[]) AS b(id, lease) ON j.id = b.id AND j.lease = b.lease
    WHERE j.status = 'running'
), beatable AS (
    SELECT j.id FROM {s}.jobs AS j JOIN mine ON j.id = mine.id AND j.lease = mine.lease
    WHERE j.status = 'running'
    ORDER BY j.id
    FOR UPDATE OF j SKIP LOCKED
), beaten AS (
    UPDATE {s}.jobs AS j SET heartbeat_at = clock_timestamp() FROM beatable WHERE j.id = beatable.id
    RETURNING """
    + fast_commit("%s")
    + """
)
SELECT id, lease FROM mine
"""
)

# A running attempt's progress, fenced by its lease like every write to a running job; it
# waits for a row lock rather than skipping it (one row, one statement: no deadlock).
PROGRESS = (
    """
UPDATE {s}.jobs SET progress = %(progress)s::jsonb, progress_message = %(message)s,
    progress_at = now()
WHERE id = %(id)s AND lease = %(lease)s AND status = 'running'
RETURNING id, queue, """
    + fast_commit("%(fast)s")
    + """ AS fast_commit
"""
)
PROGRESS_QUIET = PROGRESS
PROGRESS = publishing(PROGRESS, "'progress'")

RUNNING_RUNS = """
SELECT j.id, j.lease FROM {s}.jobs AS j
JOIN unnest(%s::uuid[], %s::int[]) AS r(id, lease) ON j.id = r.id AND j.lease = r.lease
WHERE j.status = 'running'
"""

STILL_RUNNING = "SELECT 1 FROM {s}.jobs WHERE id = %s AND lease = %s AND status = 'running'"

_REAPED_STATUS = (
    "CASE WHEN j.reprocess_count + 1 >= %(max_reprocess)s THEN 'bad_job' ELSE 'pending' END"
)
_REAPED_ERROR = """CASE WHEN j.reprocess_count + 1 >= %(max_reprocess)s
                      THEN 'poison job: stalled or rescheduled ' || (j.reprocess_count + 1)
                           || ' times (max_reprocess_count)'
                      ELSE 'stalled: no heartbeat, its worker is presumed dead' END"""
REAP_STALLED = (
    """
UPDATE {s}.jobs AS j
SET status = """
    + _REAPED_STATUS
    + """,
    attempt = GREATEST(j.attempt - 1, 0),
    reprocess_count = j.reprocess_count + 1,
    last_error = """
    + _REAPED_ERROR
    + """,
    errors = """
    + with_error(_REAPED_ERROR, _REAPED_STATUS, nullable=False)
    + """,
    completed_at = CASE WHEN j.reprocess_count + 1 >= %(max_reprocess)s THEN now() END,
    heartbeat_at = NULL,
    updated_at = now()
FROM (
    SELECT id FROM {s}.jobs
    WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => %(stall)s)
      AND (%(only)s::uuid IS NULL OR id = %(only)s)
      AND NOT EXISTS (
          SELECT 1 FROM unnest(%(own_ids)s::uuid[], %(own_leases)s::int[]) AS own(id, lease)
          WHERE own.id = jobs.id AND own.lease = jobs.lease)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS stalled
WHERE j.id = stalled.id
RETURNING j.id, j.status, j.queue
"""
)
REAP_STALLED = publishing(REAP_STALLED, EVENT_KIND.format(status="status"))

STALLED_IDS = """
SELECT id FROM {s}.jobs
WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => %s)
ORDER BY id LIMIT %s
"""

FAIL_EXHAUSTED = """
UPDATE {s}.jobs AS j
SET status = 'failed', completed_at = now(), updated_at = now(),
    last_error = COALESCE(j.last_error, 'no attempts left')
FROM (
    SELECT id FROM {s}.jobs
    WHERE status = 'pending' AND attempt >= max_attempts
      AND (%(only)s::uuid IS NULL OR id = %(only)s)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS exhausted
WHERE j.id = exhausted.id
RETURNING j.id, j.queue
"""
FAIL_EXHAUSTED = publishing(FAIL_EXHAUSTED, "'failed'")

EXHAUSTED_IDS = """
SELECT id FROM {s}.jobs WHERE status = 'pending' AND attempt >= max_attempts ORDER BY id LIMIT %s
"""

GET_LIVE_JOB = "SELECT " + _READ + " FROM {s}.jobs WHERE id = %(id)s"
# The live job holding a unique key (at most one: jobs_unique_key_live), read through
# that index.
GET_LIVE_JOB_BY_KEY = (
    "SELECT " + _READ + " FROM {s}.jobs WHERE unique_key = %s AND status IN ('pending', 'running')"
)

GET_FINISHED_JOB = (
    "SELECT " + _READ + " FROM {s}.archive WHERE id = %(id)s "
    "UNION ALL SELECT " + _READ + " FROM {s}.dlq WHERE id = %(id)s "
    "LIMIT 1"
)

CANCEL = """
UPDATE {s}.jobs AS j
SET status = 'cancelled', completed_at = now(), updated_at = now(), heartbeat_at = NULL
FROM (
    SELECT id FROM {s}.jobs WHERE {column} = %s AND status IN ('pending', 'running')
    ORDER BY id FOR UPDATE
) AS locked
WHERE j.id = locked.id AND j.status IN ('pending', 'running')
RETURNING j.id, j.queue
"""
CANCEL = publishing(CANCEL, "'cancelled'")

RESCHEDULE = """
UPDATE {s}.jobs SET run_at = %(run_at)s, scheduled = %(run_at)s > now(), updated_at = now()
WHERE id = %(id)s AND status = 'pending'
"""

# The newest of each table from its index (dlq_newest, jobs_dead_newest, or their per-queue
# twins), then the newest of both: reads about 2 × limit rows, whatever the DLQ's size.
_LIST_DLQ_NEWEST = (
    "SELECT * FROM ("
    "  (SELECT " + _READ + " FROM {s}.dlq WHERE " + _STATUS_IN + " {also}"
    "   ORDER BY updated_at DESC, id DESC LIMIT %(limit)s)"
    "  UNION ALL"
    "  (SELECT "
    + _READ
    + " FROM {s}.jobs WHERE status IN "
    + _DEAD
    + " AND "
    + _STATUS_IN
    + " {also}"
    "   ORDER BY updated_at DESC, id DESC LIMIT %(limit)s)"
    ") AS dead ORDER BY updated_at DESC, id DESC LIMIT %(limit)s"
)
# Per queue, what an operator looks at first: how many wait (due now, or scheduled), run,
# ended badly (still in jobs, and in the DLQ), completed within the window (live, or
# archived within it: found by the archive's moved_at index), and how long the oldest due
# job has waited. Whole-table counts of jobs and dlq: for dashboards, not hot paths.
QUEUE_SUMMARIES = (
    """
WITH live AS (
    SELECT queue,
        count(*) FILTER (WHERE status = 'pending' AND NOT scheduled AND run_at <= now()) AS due,
        count(*) FILTER (WHERE status = 'pending' AND (scheduled OR run_at > now()))
            AS scheduled,
        count(*) FILTER (WHERE status = 'running') AS running,
        count(*) FILTER (WHERE status = 'pending' AND attempt > 0) AS retrying,
        count(*) FILTER (WHERE status IN """
    + _DEAD
    + """) AS dead,
        count(*) FILTER (WHERE status = 'completed'
            AND completed_at > now() - make_interval(secs => %(window)s)) AS completed,
        min(run_at) FILTER (WHERE status = 'pending' AND NOT scheduled AND run_at <= now())
            AS oldest_due
    FROM {s}.jobs GROUP BY queue
), archived AS (
    SELECT queue, count(*) AS completed FROM {s}.archive
    WHERE moved_at > now() - make_interval(secs => %(window)s)
      AND completed_at > now() - make_interval(secs => %(window)s)
    GROUP BY queue
), dead_letters AS (
    SELECT queue, count(*) AS dlq FROM {s}.dlq GROUP BY queue
)
SELECT q.queue, coalesce(l.due, 0), coalesce(l.scheduled, 0), coalesce(l.running, 0),
       coalesce(l.dead, 0), coalesce(d.dlq, 0),
       coalesce(l.completed, 0) + coalesce(a.completed, 0),
       extract(epoch FROM now() - l.oldest_due)::float8, coalesce(l.retrying, 0),
       coalesce(p.paused, false)
FROM (SELECT queue FROM live UNION SELECT queue FROM archived UNION
      SELECT queue FROM dead_letters UNION SELECT name FROM {s}.queues) AS q
LEFT JOIN (SELECT name AS queue, """
    + paused_now("")
    + """ AS paused FROM {s}.queues) AS p USING (queue)
LEFT JOIN live AS l USING (queue)
LEFT JOIN archived AS a USING (queue)
LEFT JOIN dead_letters AS d USING (queue)
ORDER BY q.queue
"""
)

# Live jobs by id (the order they were built: ids are time-ordered), for operators and
# tests of producers; every filter optional. Read along the primary key from `after` (a
# page's last id), bounded by the limit.
JOB_FILTERS = ("queue", "statuses", "unique_key", "fingerprint", "since", "worker")
"""The filters of LIST_JOBS, each a parameter (None: not filtered)."""
LIST_JOBS = (
    "SELECT " + _READ + " FROM {s}.jobs "
    "WHERE (%(queue)s::text IS NULL OR queue = %(queue)s) AND " + _STATUS_IN + " "
    "AND (%(unique_key)s::text IS NULL OR unique_key = %(unique_key)s) "
    "AND (%(fingerprint)s::text IS NULL OR fingerprint = %(fingerprint)s) "
    "AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s) "
    "AND (%(worker)s::uuid IS NULL OR worker_id = %(worker)s) "
    "AND (%(after)s::uuid IS NULL OR id > %(after)s) "
    "ORDER BY id LIMIT %(limit)s"
)

LIST_DLQ = _LIST_DLQ_NEWEST.format(s="{s}", also="")
LIST_DLQ_OF_QUEUE = _LIST_DLQ_NEWEST.format(s="{s}", also="AND queue = %(queue)s")

# Dead jobs an operator picks in bulk: of a queue, of some statuses, ended before a time
# (each filter optional), or the one job `only`; in the DLQ and, not moved there yet, in
# the jobs table.
_DEAD_MATCH = (
    "(%(queue)s::text IS NULL OR queue = %(queue)s) AND " + _STATUS_IN + " "
    "AND (%(before)s::timestamptz IS NULL OR updated_at < %(before)s)"
)
COUNT_DEAD = (
    "SELECT (SELECT count(*) FROM {s}.dlq WHERE " + _DEAD_MATCH + ") "
    "+ (SELECT count(*) FROM {s}.jobs WHERE status IN " + _DEAD + " AND " + _DEAD_MATCH + ")"
)
DEAD_LIVE_IDS = (
    "SELECT id FROM {s}.jobs WHERE status IN " + _DEAD + " AND " + _DEAD_MATCH + " "
    "ORDER BY id LIMIT %(limit)s"
)
_PURGE = (
    "DELETE FROM {s}.{table} WHERE id IN (SELECT id FROM {s}.{table} WHERE {dead}"
    + _DEAD_MATCH
    + " AND (%(only)s::uuid IS NULL OR id = %(only)s)"
    " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
)
PURGE_DLQ = _PURGE.format(s="{s}", table="dlq", dead="")
PURGE_DEAD_LIVE = _PURGE.format(s="{s}", table="jobs", dead="status IN " + _DEAD + " AND ")

# retry_job of a pending job: due now (a scheduled run, or a backoff, waited out at once).
RUN_NOW = (
    "UPDATE {s}.jobs SET run_at = now(), scheduled = false, updated_at = now() "
    "WHERE id = %s AND status = 'pending'"
)

REQUEUE_DEAD_LIVE = (
    "UPDATE {s}.jobs SET status = 'pending', attempt = 0, reprocess_count = 0, run_at = now(), "
    "scheduled = false, completed_at = NULL, updated_at = now(), worker_id = NULL "
    "WHERE id = %s AND status IN " + _DEAD + " "
    "AND (unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM {s}.jobs AS live "
    "     WHERE live.unique_key = jobs.unique_key AND live.status IN ('pending', 'running')))"
)

# A requeued job starts afresh: these columns are set anew (None: left to the default);
# every other column comes back from the DLQ as it was.
_REQUEUED = {
    "status": "'pending'",
    "attempt": "0",
    "reprocess_count": "0",
    "run_at": "now()",
    "updated_at": "now()",
    "completed_at": None,
    "heartbeat_at": None,
    "worker_id": None,
}
_REQUEUE_COLUMNS = [
    c.name for c in columns.JOB_ROW if not c.live_only and _REQUEUED.get(c.name, "") is not None
]
_REQUEUE_LIST = ", ".join(_REQUEUE_COLUMNS)
_REQUEUE_VALUES = ", ".join(_REQUEUED.get(name) or name for name in _REQUEUE_COLUMNS)
REQUEUE_FROM_DLQ = (
    f"INSERT INTO {{s}}.jobs ({_REQUEUE_LIST}) "
    f"SELECT {_REQUEUE_VALUES} "
    "FROM {s}.dlq WHERE id = %s ON CONFLICT DO NOTHING"
)

# Inserted back into jobs, then deleted from the DLQ: only those inserted, so a job whose
# unique key a live job holds (ON CONFLICT) stays in the DLQ rather than being lost.
REQUEUE_DLQ_BULK = (
    "WITH picked AS (SELECT id FROM {s}.dlq WHERE " + _DEAD_MATCH + " "
    "    ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED), "
    f"requeued AS (INSERT INTO {{s}}.jobs ({_REQUEUE_LIST}) "
    f"    SELECT {_REQUEUE_VALUES} FROM {{s}}.dlq JOIN picked USING (id) ORDER BY id "
    "    ON CONFLICT DO NOTHING RETURNING id) "
    "DELETE FROM {s}.dlq USING requeued WHERE dlq.id = requeued.id"
)
COUNTS = """
SELECT status, count(*) FROM {s}.jobs GROUP BY status
UNION ALL SELECT 'archive', count(*) FROM {s}.archive
UNION ALL SELECT 'dlq', count(*) FROM {s}.dlq
"""

DELETE_FROM_DLQ = "DELETE FROM {s}.dlq WHERE id = %s"
IN_DLQ = "SELECT 1 FROM {s}.dlq WHERE id = %s"

# A finished row whose id the archive or the DLQ already holds (a row written there by
# hand) is left where it is: moving it would fail the whole batch, every sweep.
_MOVE_FINISHED = (
    "WITH moved AS (DELETE FROM {s}.jobs WHERE id IN ("
    "    SELECT id FROM {s}.jobs AS j WHERE {finished}"
    "      AND NOT EXISTS (SELECT 1 FROM {s}.{table} AS t WHERE t.id = j.id)"
    "      AND (%(only)s::uuid IS NULL OR j.id = %(only)s)"
    "    LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    "  RETURNING " + columns.MOVED_COLUMNS + ") "
    "INSERT INTO {s}.{table} (" + columns.MOVED_COLUMNS + ") "
    "SELECT " + columns.MOVED_COLUMNS + " FROM moved "
    "RETURNING id"
)
_FINISHED_IDS = (
    "SELECT id FROM {s}.jobs AS j WHERE {finished}"
    "  AND NOT EXISTS (SELECT 1 FROM {s}.{table} AS t WHERE t.id = j.id) ORDER BY id LIMIT %s"
)
_COMPLETED = {"finished": "status = 'completed'", "table": "archive"}
_DEAD_ROWS = {"finished": "status IN " + _DEAD, "table": "dlq"}
ARCHIVE_COMPLETED = _MOVE_FINISHED.format(s="{s}", **_COMPLETED)
MOVE_DEAD = _MOVE_FINISHED.format(s="{s}", **_DEAD_ROWS)
COMPLETED_IDS = _FINISHED_IDS.format(s="{s}", **_COMPLETED)
DEAD_IDS = _FINISHED_IDS.format(s="{s}", **_DEAD_ROWS)

STUCK_FINISHED = (
    "SELECT count(*) FROM {s}.jobs AS j WHERE"
    " (status = 'completed' AND EXISTS (SELECT 1 FROM {s}.archive AS a WHERE a.id = j.id))"
    " OR (status IN " + _DEAD + " AND EXISTS (SELECT 1 FROM {s}.dlq AS d WHERE d.id = j.id))"
)

# The archive's partitions (0014): made ahead and dropped whole by functions that run as
# the schema's owner, since the worker role may not create or drop tables; the DEFAULT
# partition's rows past the retention are deleted row by row, one purge at a time.
PREPARE_ARCHIVE = "SELECT {s}.archive_prepare(%s)"
RETIRE_ARCHIVE = "SELECT dropped, rows_dropped FROM {s}.archive_retire(%s)"
PURGE_ARCHIVE = "SELECT {s}.archive_purge(%s, %s)"

# -- queues and workers ------------------------------------------------------------------

# In name order: two workers declaring the same queues lock their rows in one order.
DECLARE_QUEUES = """
INSERT INTO {s}.queues (name)
SELECT DISTINCT name FROM unnest(%s::text[]) AS d(name) ORDER BY name
ON CONFLICT (name) DO UPDATE SET last_seen = now()
"""
DECLARED_QUEUES = "SELECT name FROM {s}.queues WHERE name = ANY(%s::text[])"

_QUEUE_ROW = (
    "name, "
    + paused_now("")
    + ", paused_at, paused_until, paused_by, pause_reason, first_seen, last_seen, "
    "max_running, max_running_per_key, rate_limit, rate_period, rate_limit_per_key, "
    "rate_period_per_key, fair, CASE WHEN parked_until > now() THEN parked_until END, "
    "durability"
)
"""What `QueueInfo.from_row` reads (and `LIST_QUEUES` a count of workers after it)."""

# Pausing a paused queue keeps the time it was paused since, and takes the new details.
PAUSE_QUEUE = (
    """
INSERT INTO {s}.queues AS q (name, paused_at, paused_until, paused_by, pause_reason)
VALUES (%(name)s, now(), %(until)s, %(by)s, %(reason)s)
ON CONFLICT (name) DO UPDATE SET
    paused_at = CASE WHEN """
    + paused_now("q.")
    + """ THEN q.paused_at ELSE now() END,
    paused_until = EXCLUDED.paused_until, paused_by = EXCLUDED.paused_by,
    pause_reason = EXCLUDED.pause_reason, last_seen = now()
RETURNING """
    + _QUEUE_ROW
)

# Every limit at once (None lifts it), and the durability; the NOTIFY wakes idle workers,
# which may start more now. Workers see the new limits at their next claim, the
# durability within a second.
CONFIGURE_QUEUE = (
    """
WITH configured AS (
    INSERT INTO {s}.queues AS q (name, max_running, max_running_per_key, rate_limit,
                                 rate_period, rate_limit_per_key, rate_period_per_key, fair,
                                 durability)
    VALUES (%(name)s, %(max_running)s, %(max_running_per_key)s, %(rate_limit)s,
            %(rate_period)s, %(rate_limit_per_key)s, %(rate_period_per_key)s, %(fair)s,
            %(durability)s)
    ON CONFLICT (name) DO UPDATE SET
        max_running = EXCLUDED.max_running, max_running_per_key = EXCLUDED.max_running_per_key,
        rate_limit = EXCLUDED.rate_limit, rate_period = EXCLUDED.rate_period,
        rate_limit_per_key = EXCLUDED.rate_limit_per_key,
        rate_period_per_key = EXCLUDED.rate_period_per_key, fair = EXCLUDED.fair,
        durability = EXCLUDED.durability, last_seen = now()
    RETURNING """
    + _QUEUE_ROW
    + """
)
SELECT configured.*, pg_notify(%(channel)s, %(queues)s) FROM configured
"""
)


def _parking(parks: str, returning: str = "") -> str:
    """Park what `parks` (a select of queue, key, until) names: a key until then, or the
    whole queue where the key is NULL. A park never ends sooner than one under way: two
    handlers told to wait by the same service keep the later time. `returning`: a
    RETURNING clause of the last INSERT, which writes a row for every park."""
    return (
        f"WITH parks AS ({parks}), "
        """keyed AS (
    INSERT INTO {s}.parked_keys AS p (queue, key, until)
    SELECT queue, key, max(until) FROM parks WHERE key IS NOT NULL
    GROUP BY queue, key ORDER BY queue, key
    ON CONFLICT (queue, key) DO UPDATE SET
        until = GREATEST(p.until, EXCLUDED.until), parked_at = now()
)
INSERT INTO {s}.queues AS q (name, parked_until, keys_parked_until)
SELECT queue, max(until) FILTER (WHERE key IS NULL), max(until) FILTER (WHERE key IS NOT NULL)
FROM parks GROUP BY queue ORDER BY queue
ON CONFLICT (name) DO UPDATE SET
    parked_until = CASE WHEN EXCLUDED.parked_until IS NULL THEN q.parked_until
                        WHEN q.parked_until > now()
                        THEN GREATEST(q.parked_until, EXCLUDED.parked_until)
                        ELSE EXCLUDED.parked_until END,
    keys_parked_until = GREATEST(q.keys_parked_until, EXCLUDED.keys_parked_until)
""" + returning
    )


# An operator's park of a queue, or of one key of it.
PARK = _parking(
    "SELECT %(queue)s::text AS queue, %(key)s::text AS key, %(until)s::timestamptz AS until"
)

# Handlers' parks (JobResult.park): of each run still the job's, its key (its queue when it
# has none). Written before the runs' outcomes, so no job of the key starts in between;
# fast with them when their queue is (the park's WAL precedes theirs: a crash that loses
# the park loses the outcome too, and the job, run again, parks again).
PARK_RUNS = _parking(
    "SELECT j.queue, j.concurrency_key AS key, r.until FROM {s}.jobs AS j "
    "JOIN unnest(%s::uuid[], %s::int[], %s::timestamptz[]) AS r(id, lease, until) "
    "ON j.id = r.id AND j.lease = r.lease WHERE j.status = 'running'",
    returning="RETURNING " + fast_commit("%s"),
)

# Lifts a park (of the queue, or of one key): its jobs may start at once, the job whose
# JobResult.park parked it too (due at the park's end, to the microsecond). The queue
# stays controlled only for the parks of its keys that remain.
UNPARK = """
WITH keyed AS (
    DELETE FROM {s}.parked_keys WHERE queue = %(queue)s AND key = %(key)s AND until > now()
    RETURNING key, until
), before AS (
    SELECT name, parked_until FROM {s}.queues
    WHERE name = %(queue)s AND %(key)s::text IS NULL AND parked_until > now()
    FOR UPDATE
), queued AS (
    UPDATE {s}.queues AS q SET parked_until = NULL FROM before WHERE q.name = before.name
    RETURNING before.parked_until AS until
), released AS (
    UPDATE {s}.jobs AS j SET run_at = now(), scheduled = false
    WHERE j.status = 'pending' AND j.queue = %(queue)s AND (
        EXISTS (SELECT 1 FROM keyed WHERE j.concurrency_key = keyed.key
                AND j.run_at = keyed.until)
        OR EXISTS (SELECT 1 FROM queued WHERE j.run_at = queued.until))
), rest AS (
    UPDATE {s}.queues AS q SET keys_parked_until = (
        SELECT max(p.until) FROM {s}.parked_keys AS p
        WHERE p.queue = q.name AND p.until > now()
          AND NOT EXISTS (SELECT 1 FROM keyed WHERE keyed.key = p.key))
    WHERE q.name = %(queue)s AND EXISTS (SELECT 1 FROM keyed)
)
SELECT (SELECT count(*) FROM keyed) + (SELECT count(*) FROM queued),
       pg_notify(%(channel)s, %(queues)s)
"""

# The NOTIFY wakes idle workers of the queue at once, not at their next poll.
RESUME_QUEUE = (
    """
WITH before AS (
    SELECT name, """
    + paused_now("")
    + """ AS was FROM {s}.queues WHERE name = %s AND paused_at IS NOT NULL FOR UPDATE
), resumed AS (
    UPDATE {s}.queues AS q
    SET paused_at = NULL, paused_until = NULL, paused_by = NULL, pause_reason = NULL
    FROM before WHERE q.name = before.name
    RETURNING before.was
)
SELECT was, CASE WHEN was THEN pg_notify(%s, %s) END FROM resumed
"""
)

LIST_QUEUES = (
    "SELECT "
    + _QUEUE_ROW
    + """,
    (SELECT count(*) FROM {s}.workers AS w
     WHERE queues.name = ANY(w.queues) AND w.expires_at > now()) AS workers
FROM {s}.queues ORDER BY name"""
)

# Beaten from the heartbeat thread; an upsert, so a row forgotten meanwhile (a worker cut
# off for an hour) comes back. It answers whether anyone listens to the events.
WORKER_BEAT = (
    """
INSERT INTO {s}.workers AS w (id, host, pid, version, queues, expires_at, stopping_at)
VALUES (%(id)s, %(host)s, %(pid)s, %(version)s, %(queues)s,
        now() + make_interval(secs => %(ttl)s), CASE WHEN %(stopping)s THEN now() END)
ON CONFLICT (id) DO UPDATE SET
    heartbeat_at = now(), expires_at = EXCLUDED.expires_at, queues = EXCLUDED.queues,
    stopping_at = COALESCE(w.stopping_at, EXCLUDED.stopping_at)
RETURNING """
    + _LISTENED
)
WORKER_GONE = "DELETE FROM {s}.workers WHERE id = %s"

# -- who listens to the events ------------------------------------------------------------

EVENTS_LISTENED = "SELECT " + _LISTENED
# A server's row, renewed while it runs; rows of servers long gone are cleared on the way.
LISTENER_BEAT = """
WITH gone AS (
    DELETE FROM {s}.event_listeners WHERE id IN (
        SELECT id FROM {s}.event_listeners WHERE expires_at < now() - interval '1 hour'
        FOR UPDATE SKIP LOCKED)
)
INSERT INTO {s}.event_listeners (id, expires_at)
VALUES (%(id)s, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at
"""
LISTENER_GONE = "DELETE FROM {s}.event_listeners WHERE id = %s"
FORGET_WORKERS = (
    "DELETE FROM {s}.workers WHERE id IN (SELECT id FROM {s}.workers"
    " WHERE expires_at < now() - make_interval(secs => %s) FOR UPDATE SKIP LOCKED)"
)

# Parks that ended, the turns of keys no job of which started for a day (a fair queue's
# key that comes back goes first, as a new one would), and the starts no rate counts any
# more (the rate lifted, the queue no longer claimed); bounded batches.
FORGET_CONTROLS = """
WITH parks AS (
    DELETE FROM {s}.parked_keys WHERE (queue, key) IN (
        SELECT queue, key FROM {s}.parked_keys WHERE until < now()
        LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING 1
), turns AS (
    DELETE FROM {s}.key_turns WHERE (queue, key) IN (
        SELECT queue, key FROM {s}.key_turns WHERE served_at < now() - interval '1 day'
        LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING 1
), starts AS (
    DELETE FROM {s}.rate_starts WHERE ctid IN (
        SELECT s.ctid FROM {s}.rate_starts AS s LEFT JOIN {s}.queues AS q ON q.name = s.queue
        WHERE q.rate_period IS NULL AND q.rate_period_per_key IS NULL
           OR s.at <= now() - make_interval(
                  secs => GREATEST(q.rate_period, q.rate_period_per_key))
        LIMIT %(limit)s FOR UPDATE OF s SKIP LOCKED)
    RETURNING 1
)
SELECT (SELECT count(*) FROM parks) + (SELECT count(*) FROM turns)
       + (SELECT count(*) FROM starts)
"""

LIST_WORKERS = """
SELECT w.id, w.host, w.pid, w.version, w.queues, w.started_at, w.heartbeat_at,
       w.expires_at > now(), w.stopping_at,
       (SELECT count(*) FROM {s}.jobs AS j WHERE j.status = 'running' AND j.worker_id = w.id),
       EXISTS (SELECT 1 FROM {s}.leader AS l WHERE l.worker_id = w.id AND l.expires_at > now())
FROM {s}.workers AS w ORDER BY w.started_at, w.id
"""

# -- leadership ---------------------------------------------------------------------------

# Acquire or renew a lease in one statement, on the database clock alone: taken when
# nobody holds it or its holder let it expire, renewed when it is the caller's. A lease
# another worker holds is seen in the snapshot and left unlocked (workers that follow try
# every few seconds: they write nothing); a race for an expired one is settled by the row
# lock of ON CONFLICT, whose WHERE is checked again on the version the winner wrote. The
# term grows with every new holder. One row back: the holder after the statement, its
# term, and whether it is the caller.
LEAD = """
WITH held AS (
    SELECT worker_id, term, expires_at FROM {s}.leader WHERE name = %(name)s
), taken AS (
    INSERT INTO {s}.leader AS l (name, worker_id, expires_at)
    SELECT %(name)s, %(worker)s::uuid, now() + make_interval(secs => %(ttl)s)
    WHERE NOT EXISTS (SELECT 1 FROM held WHERE held.expires_at > now()
                      AND held.worker_id IS DISTINCT FROM %(worker)s::uuid)
    ON CONFLICT (name) DO UPDATE SET
        worker_id = EXCLUDED.worker_id,
        term = CASE WHEN l.worker_id = EXCLUDED.worker_id THEN l.term ELSE l.term + 1 END,
        acquired_at = CASE WHEN l.worker_id = EXCLUDED.worker_id THEN l.acquired_at
                           ELSE now() END,
        renewed_at = now(),
        expires_at = EXCLUDED.expires_at
    WHERE l.worker_id = EXCLUDED.worker_id OR l.expires_at <= now()
    RETURNING l.worker_id, l.term
)
SELECT worker_id, term, true FROM taken
UNION ALL
SELECT worker_id, term, false FROM held WHERE NOT EXISTS (SELECT 1 FROM taken)
"""
# Given up at once (a graceful stop): whoever asks next takes it, without waiting for
# the expiry. By the worker's id alone: a renewal this worker had under way counts too.
RESIGN = """
UPDATE {s}.leader SET worker_id = NULL, expires_at = now()
WHERE name = %(name)s AND worker_id = %(worker)s::uuid
"""

# -- schedules (sql/0010_schedules.sql, simplequeue/schedules.py) ------------------------

_SAME_RULE = """(sc.cron IS NOT DISTINCT FROM EXCLUDED.cron
    AND sc.every IS NOT DISTINCT FROM EXCLUDED.every AND sc.timezone = EXCLUDED.timezone)"""

_SCHEDULE_ROW = """name, queue, cron, every, timezone, missed, paused, paused_at, last_slot,
    next_slot, last_job_id, last_enqueued_at, enqueued, created_at, seen_at"""
"""What `ScheduleInfo.from_row` reads, in its order."""

# The schedules a worker registered, written as they are in its code (in name order, as
# every upsert of several rows). A new one starts at the database's now: no slot before it
# was registered is due; so does a changed rule, whose slots before the change were never
# its own (and the old rule's passed slots are not enqueued again).
REGISTER_SCHEDULES = (
    """
INSERT INTO {s}.schedules AS sc (name, queue, cron, every, timezone, missed, next_slot)
SELECT * FROM unnest(%(names)s::text[], %(queues)s::text[], %(crons)s::text[],
                     %(everys)s::interval[], %(zones)s::text[], %(missed)s::text[],
                     %(next)s::timestamptz[]) AS d (name, queue, cron, every, timezone,
                                                    missed, next_slot)
ORDER BY name
ON CONFLICT (name) DO UPDATE SET
    queue = COALESCE(EXCLUDED.queue, sc.queue), cron = EXCLUDED.cron, every = EXCLUDED.every,
    timezone = EXCLUDED.timezone, missed = EXCLUDED.missed,
    last_slot = CASE WHEN """
    + _SAME_RULE
    + """ THEN sc.last_slot
                     ELSE GREATEST(sc.last_slot, now()) END,
    next_slot = CASE WHEN """
    + _SAME_RULE
    + """ THEN sc.next_slot ELSE EXCLUDED.next_slot END,
    seen_at = now()
"""
)

# What the enqueuer reads each round: where each of its schedules stands, and the
# database's clock, which alone says which slots are due.
SCHEDULES_DUE = """
SELECT name, last_slot, now(), cron, every, timezone
FROM {s}.schedules WHERE name = ANY(%s) AND NOT paused
"""

# A round's slots of one schedule, taken: only while `last_slot` is what the enqueuer read
# (the row lock makes a second enqueuer wait, then find it moved) and the schedule is not
# paused. The jobs are inserted in the same transaction. The row shows the rule that runs:
# the enqueuer's, when workers of two versions of the code disagree.
TAKE_SLOTS = """
UPDATE {s}.schedules
SET last_slot = %(last_slot)s, next_slot = %(next_slot)s, queue = COALESCE(%(queue)s, queue),
    cron = %(cron)s, every = %(every)s, timezone = %(timezone)s, missed = %(missed)s
WHERE name = %(name)s AND last_slot = %(seen)s AND NOT paused
RETURNING 1
"""
SLOTS_ENQUEUED = """
UPDATE {s}.schedules
SET enqueued = enqueued + %(n)s, last_job_id = COALESCE(%(job)s, last_job_id),
    last_enqueued_at = CASE WHEN %(n)s > 0 THEN now() ELSE last_enqueued_at END
WHERE name = %(name)s
"""

LIST_SCHEDULES = "SELECT " + _SCHEDULE_ROW + " FROM {s}.schedules ORDER BY name"
# A pause stops the enqueuing; the slots that pass meanwhile are not enqueued later.
PAUSE_SCHEDULE = (
    "UPDATE {s}.schedules SET paused = true, paused_at = COALESCE(paused_at, now()) "
    "WHERE name = %s RETURNING " + _SCHEDULE_ROW
)
RESUME_SCHEDULE = (
    "UPDATE {s}.schedules SET paused = false, paused_at = NULL, "
    "last_slot = CASE WHEN paused THEN GREATEST(last_slot, now()) ELSE last_slot END "
    "WHERE name = %s RETURNING " + _SCHEDULE_ROW
)
DELETE_SCHEDULE = "DELETE FROM {s}.schedules WHERE name = %s"

NOTIFY = "SELECT pg_notify(%s, %s)"
LISTEN = "LISTEN {}"
PROBE = "SELECT 1"
"""One round trip, to tell a live connection from one whose peer is gone."""
SERVER_PID = "SELECT pg_backend_pid()"
"""The server process behind a connection: a pooler (PgBouncer) hands its clients keys of
its own at login, so a connection whose startup named another process goes through one."""
