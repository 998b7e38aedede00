-- Fleet-wide control of a queue: limits on the jobs running and starting across every
-- process, per queue and per concurrency key, and parked keys.

-- 1. A job's concurrency key ("customer-42"): what per-key limits and parks count by.
ALTER TABLE jobs ADD COLUMN concurrency_key text;
ALTER TABLE archive ADD COLUMN concurrency_key text;
ALTER TABLE dlq ADD COLUMN concurrency_key text;

-- The keys that have claimable jobs, and each key's next job, without reading the others'
-- jobs. Only rows with a key (jobs without one cost nothing more to insert), and not the
-- jobs due later (scheduled): a key whose jobs are all for tomorrow costs no claim today.
CREATE INDEX jobs_pending_key ON jobs (queue, concurrency_key, priority DESC, run_at, id)
    WHERE status = 'pending' AND NOT scheduled AND concurrency_key IS NOT NULL;

-- 2. The limits of a queue, for every process (configure_queue). NULL: no limit.
--    A rate is `rate_limit` starts per `rate_period` seconds, in any window of that length.
--    `controlled` queues are claimed one claim at a time (claim_controlled below), all
--    others by the plain claim, which skips them.
ALTER TABLE queues
    ADD COLUMN max_running         integer CHECK (max_running >= 1),
    ADD COLUMN max_running_per_key integer CHECK (max_running_per_key >= 1),
    ADD COLUMN rate_limit          integer CHECK (rate_limit >= 1),
    ADD COLUMN rate_period         double precision CHECK (rate_period > 0),
    ADD COLUMN rate_limit_per_key  integer CHECK (rate_limit_per_key >= 1),
    ADD COLUMN rate_period_per_key double precision CHECK (rate_period_per_key > 0),
    ADD COLUMN fair                boolean NOT NULL DEFAULT false,
    -- Parked: no job of the queue starts before parked_until (a job without a key parked
    -- it); keys_parked_until: the latest end of a park of one of its keys.
    ADD COLUMN parked_until        timestamptz,
    ADD COLUMN keys_parked_until   timestamptz,
    ADD COLUMN controlled          boolean GENERATED ALWAYS AS (
        max_running IS NOT NULL OR max_running_per_key IS NOT NULL
        OR rate_limit IS NOT NULL OR rate_limit_per_key IS NOT NULL OR fair) STORED,
    ADD CONSTRAINT queues_rate_whole CHECK ((rate_limit IS NULL) = (rate_period IS NULL)),
    -- times every client reads back (as jobs.run_at, 0002): a park written by hand must
    -- not break the listing of queues
    ADD CONSTRAINT queues_parks_representable CHECK (
        (parked_until IS NULL
         OR parked_until BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00')
        AND (keys_parked_until IS NULL
             OR keys_parked_until BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00')),
    ADD CONSTRAINT queues_rate_per_key_whole
        CHECK ((rate_limit_per_key IS NULL) = (rate_period_per_key IS NULL));

-- 3. Parked keys: no job of (queue, key) starts before `until`.
CREATE TABLE parked_keys (
    queue     text        NOT NULL,
    key       text        NOT NULL,
    until     timestamptz NOT NULL
        CHECK (until BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'),
    parked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, key)
);

-- 4. Whose turn it is in a fair queue: when a job of each key last started. The key served
--    least recently goes first. The jobs without a key take their turns as one more key,
--    '' (no concurrency key is empty).
CREATE TABLE key_turns (
    queue     text        NOT NULL,
    key       text        NOT NULL,
    served_at timestamptz NOT NULL,
    PRIMARY KEY (queue, key)
);

-- 5. The starts of rate-limited queues within their window (older ones are deleted by the
--    claims that count them): one row per claimed job, `key` its concurrency key.
CREATE TABLE rate_starts (
    queue text        NOT NULL,
    key   text,
    at    timestamptz NOT NULL
);
CREATE INDEX rate_starts_queue ON rate_starts (queue, at);
CREATE INDEX rate_starts_key ON rate_starts (queue, key, at) WHERE key IS NOT NULL;

-- 6. The claim of a controlled queue: which of its jobs may start now, at most `want`.
--
--    Exact across processes: claims of one controlled queue take turns (a transaction-level
--    advisory lock, held until the claim commits), and a VOLATILE function's statements
--    each see what committed before they began, so every count below includes every
--    earlier claim. Only claims start jobs, so running and started counts can only be too
--    high here (a job finished meanwhile), never too low: no over-admission.
--    It records the starts of a rate-limited queue; the caller's statement marks the ids
--    it returns `running`, the one UPDATE of every claim (a job inserted after that
--    statement began is not among them: its start was counted, a claim that takes fewer).
--    The due-and-claimable test below is the plain claim's (statements.CLAIM).
CREATE FUNCTION claim_controlled(p_queue text, p_want integer)
RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE
-- A claim's batch, not the default estimate of a thousand: the caller's UPDATE then finds
-- each id by the primary key instead of hashing the whole table.
ROWS 10
SET search_path FROM CURRENT
AS $$
DECLARE
    q       queues%ROWTYPE;
    room    bigint := p_want;
    t       timestamptz;
    by_key  boolean;
    rated   boolean;
BEGIN
    IF p_want IS NULL OR p_want < 1 THEN
        RETURN;
    END IF;
    -- Keyed by the schema and the queue's name; claims of several queues take their locks
    -- in this key's order (statements.CLAIM_CONTROLLED), so two claims cannot deadlock.
    PERFORM pg_advisory_xact_lock(hashtext('simplequeue.claim.' || current_schema()),
                                  hashtext(p_queue));
    t := clock_timestamp();
    SELECT * INTO q FROM queues WHERE name = p_queue;
    IF NOT FOUND OR (q.paused_at IS NOT NULL AND (q.paused_until IS NULL OR q.paused_until > now()))
       OR q.parked_until > t THEN
        RETURN;
    END IF;
    rated := q.rate_limit IS NOT NULL OR q.rate_limit_per_key IS NOT NULL;
    IF rated THEN
        DELETE FROM rate_starts AS s WHERE s.queue = p_queue
            AND s.at <= t - make_interval(secs => GREATEST(q.rate_period, q.rate_period_per_key));
    END IF;
    IF q.max_running IS NOT NULL THEN
        room := LEAST(room, q.max_running - (
            SELECT count(*) FROM jobs AS r WHERE r.status = 'running' AND r.queue = p_queue));
    END IF;
    IF q.rate_limit IS NOT NULL THEN
        room := LEAST(room, q.rate_limit - (
            SELECT count(*) FROM rate_starts AS s
            WHERE s.queue = p_queue AND s.at > t - make_interval(secs => q.rate_period)));
    END IF;
    IF room < 1 THEN
        RETURN;
    END IF;
    by_key := q.max_running_per_key IS NOT NULL OR q.rate_limit_per_key IS NOT NULL OR q.fair
              OR q.keys_parked_until > t;
    IF NOT by_key THEN
        RETURN QUERY
            WITH picked AS (
                SELECT j.id, j.concurrency_key FROM jobs AS j
                WHERE j.status = 'pending' AND NOT j.scheduled AND j.queue = p_queue
                  AND j.run_at <= now() AND j.attempt < j.max_attempts
                ORDER BY j.priority DESC, j.run_at, j.id
                LIMIT room
                FOR UPDATE SKIP LOCKED
            ), counted AS (
                INSERT INTO rate_starts (queue, key, at)
                SELECT p_queue, picked.concurrency_key, t FROM picked WHERE rated
            )
            SELECT picked.id FROM picked;
        RETURN;
    END IF;
    -- Per key: each key that has pending jobs (a skip scan of jobs_pending_key), what it
    -- may start now, and its next jobs; jobs without a key only under the queue's limits.
    -- Fair: the first job of every key before the second of any, the key served least
    -- recently first.
    RETURN QUERY
        WITH RECURSIVE keys(key) AS (
            (SELECT k.concurrency_key FROM jobs AS k
             WHERE k.status = 'pending' AND NOT k.scheduled AND k.queue = p_queue
               AND k.concurrency_key IS NOT NULL
             ORDER BY k.concurrency_key LIMIT 1)
            UNION ALL
            SELECT (SELECT k.concurrency_key FROM jobs AS k
                    WHERE k.status = 'pending' AND NOT k.scheduled AND k.queue = p_queue
                      AND k.concurrency_key > keys.key
                    ORDER BY k.concurrency_key LIMIT 1)
            FROM keys WHERE keys.key IS NOT NULL
        ), running AS (
            SELECT r.concurrency_key AS key, count(*) AS n FROM jobs AS r
            WHERE r.status = 'running' AND r.queue = p_queue AND r.concurrency_key IS NOT NULL
              AND q.max_running_per_key IS NOT NULL
            GROUP BY r.concurrency_key
        ), started AS (
            SELECT s.key, count(*) AS n FROM rate_starts AS s
            WHERE s.queue = p_queue AND s.key IS NOT NULL AND q.rate_limit_per_key IS NOT NULL
              AND s.at > t - make_interval(secs => q.rate_period_per_key)
            GROUP BY s.key
        ), allowed AS (
            SELECT keys.key, LEAST(room,
                       q.max_running_per_key - COALESCE(running.n, 0),
                       q.rate_limit_per_key - COALESCE(started.n, 0)) AS n
            FROM keys
            LEFT JOIN running ON running.key = keys.key
            LEFT JOIN started ON started.key = keys.key
            WHERE keys.key IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM parked_keys AS p
                              WHERE p.queue = p_queue AND p.key = keys.key AND p.until > t)
        ), candidates AS (
            SELECT nxt.id, allowed.key, nxt.priority, nxt.run_at, nxt.rank,
                   (SELECT turn.served_at FROM key_turns AS turn
                    WHERE q.fair AND turn.queue = p_queue AND turn.key = allowed.key) AS served_at
            FROM allowed
            CROSS JOIN LATERAL (
                SELECT ranked.*, row_number() OVER (
                    ORDER BY ranked.priority DESC, ranked.run_at, ranked.id) AS rank
                FROM (SELECT j.id, j.priority, j.run_at FROM jobs AS j
                      WHERE j.status = 'pending' AND NOT j.scheduled AND j.queue = p_queue
                        AND j.concurrency_key = allowed.key AND j.run_at <= now()
                        AND j.attempt < j.max_attempts
                      ORDER BY j.priority DESC, j.run_at, j.id
                      LIMIT allowed.n
                      FOR UPDATE SKIP LOCKED) AS ranked
            ) AS nxt
            WHERE allowed.n > 0
            UNION ALL
            SELECT bare.id, NULL, bare.priority, bare.run_at, row_number() OVER (
                       ORDER BY bare.priority DESC, bare.run_at, bare.id),
                   (SELECT turn.served_at FROM key_turns AS turn
                    WHERE q.fair AND turn.queue = p_queue AND turn.key = '')
            FROM (SELECT j.id, j.priority, j.run_at FROM jobs AS j
                  WHERE j.status = 'pending' AND NOT j.scheduled AND j.queue = p_queue
                    AND j.concurrency_key IS NULL AND j.run_at <= now()
                    AND j.attempt < j.max_attempts
                  ORDER BY j.priority DESC, j.run_at, j.id
                  LIMIT room
                  FOR UPDATE SKIP LOCKED) AS bare
        ), picked AS (
            SELECT c.id, c.key FROM candidates AS c
            ORDER BY CASE WHEN q.fair THEN c.rank ELSE 0 END,
                     CASE WHEN q.fair THEN c.served_at END NULLS FIRST,
                     c.priority DESC, c.run_at, c.id
            LIMIT room
        ), counted AS (
            INSERT INTO rate_starts (queue, key, at)
            SELECT p_queue, picked.key, t FROM picked WHERE rated
        ), served AS (
            INSERT INTO key_turns AS turn (queue, key, served_at)
            SELECT DISTINCT p_queue, COALESCE(picked.key, ''), t FROM picked WHERE q.fair
            ON CONFLICT (queue, key) DO UPDATE SET served_at = EXCLUDED.served_at
        )
        SELECT picked.id FROM picked;
END
$$;
