-- What operators see and steer: queues and workers as rows, who ran each attempt, and why
-- each attempt failed.

-- 1. Queues are rows. Workers declare the queues they handle when they start, and an
--    operator's pause declares its queue too; an insert into a queue nobody declared is
--    most likely a typo, which producers warn about (or refuse, with strict_queues).
--    A paused queue is skipped by every claim of every worker until it is resumed (or
--    until paused_until, when given); jobs already running finish.
CREATE TABLE queues (
    name         text        PRIMARY KEY CHECK (name <> ''),
    paused_at    timestamptz,
    paused_until timestamptz,
    paused_by    text,
    pause_reason text,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queues_pause_whole CHECK (
        paused_at IS NOT NULL
        OR (paused_until IS NULL AND paused_by IS NULL AND pause_reason IS NULL))
);

-- Every queue that already holds jobs was in use: declared.
INSERT INTO queues (name)
    SELECT queue FROM jobs UNION SELECT queue FROM dlq
    ON CONFLICT DO NOTHING;

-- 2. Workers are rows: one per started queue of a process (its id is new at every boot),
--    beaten from the heartbeat thread, deleted when it stops; a worker that died is shown
--    as gone once expires_at has passed, and forgotten by the reaper an hour later.
CREATE TABLE workers (
    id           uuid        PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    version      text        NOT NULL,
    queues       text[]      NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    stopping_at  timestamptz
);

-- 3. The worker that claimed a job's current attempt, and every failed attempt's error
--    (attempt, time, error, worker): the last error alone does not say why attempts 1 and
--    2 failed. Both go with the job to the archive and the DLQ.
--    An array always (as 0005's checks, against rows written by hand): every result write
--    appends to it.
ALTER TABLE jobs ADD COLUMN worker_id uuid, ADD COLUMN errors jsonb NOT NULL DEFAULT '[]'
    CONSTRAINT jobs_errors_array CHECK (jsonb_typeof(errors) = 'array');
ALTER TABLE archive ADD COLUMN worker_id uuid, ADD COLUMN errors jsonb NOT NULL DEFAULT '[]';
ALTER TABLE dlq ADD COLUMN worker_id uuid, ADD COLUMN errors jsonb NOT NULL DEFAULT '[]';

-- 4. The trace context of the insert (W3C traceparent and tracestate, when the producer
--    traces with OpenTelemetry): the worker's span of the job continues the producer's trace.
ALTER TABLE jobs ADD COLUMN trace_context jsonb;
ALTER TABLE archive ADD COLUMN trace_context jsonb;
ALTER TABLE dlq ADD COLUMN trace_context jsonb;

-- No index on worker_id: every claim of a worker would add an entry under one key (a hot
-- page that costs a busy worker about a tenth of its throughput). Which jobs a worker runs
-- is read through jobs_running (every running row: as many as run at once).

-- 5. Who listens to the job events (the HTTP API's servers, while they run): statements
--    publish events only while someone does, so a fleet without a dashboard pays nothing.
CREATE TABLE event_listeners (
    id         uuid        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
