-- Uniqueness over time: a job may ask that its unique key stay taken after the job has
-- finished, for a period counted from its insert or for good (Job(unique_for=...)).
--
-- unique_keys: one row per key taken that way, claimed by the statement that inserts the
--   job (statements.INSERT_UNIQUE): inserted when nobody holds the key, taken over by a
--   new job only once expires_at has passed. It is not tied to the job's row: cancelling,
--   archiving, dead-lettering or deleting the job leaves the key taken ("send once" means
--   once enqueued); an operator releases it early (release_unique_key).
--     key         the job's unique_key (the same namespace as jobs_unique_key_live)
--     job_id      the job that holds it (no foreign key: the job moves to the archive)
--     queue       that job's queue, for operators
--     claimed_at  when that job's insert took it (the database clock)
--     expires_at  when it is free again; NULL: never
--   The reaper deletes rows past expires_at in bounded batches (unique_keys_expiring).
-- jobs.unique_for_seconds: what the job asked (seconds, 'Infinity' for good; NULL: the
--   key of a live job only, as before), read back with it and kept in the archive and
--   the DLQ.
CREATE TABLE unique_keys (
    key        text        PRIMARY KEY CHECK (key <> ''),
    job_id     uuid        NOT NULL,
    queue      text        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
        -- a time every client reads back (see 0002): raw SQL cannot poison a read of it
        CONSTRAINT unique_keys_expires_representable CHECK (
            expires_at >= '0001-01-02 00:00:00+00' AND expires_at <= '9999-12-30 00:00:00+00')
);
CREATE INDEX unique_keys_expiring ON unique_keys (expires_at) WHERE expires_at IS NOT NULL;

ALTER TABLE jobs ADD COLUMN unique_for_seconds double precision;
ALTER TABLE archive ADD COLUMN unique_for_seconds double precision;
ALTER TABLE dlq ADD COLUMN unique_for_seconds double precision;
