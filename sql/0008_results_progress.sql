-- What a handler returned, and how far its running attempt has come.
--
-- result: the JSON value a successful attempt returned (NULL: none), written with the
--   completion by the same fenced statement, bounded by the worker's max_result_bytes.
-- progress, progress_message, progress_at: the latest progress the running attempt
--   reported (Job.set_progress), fenced by its lease; every claim clears them, so what
--   they show is the current attempt's (or, once it ended, the last attempt's).
-- All four go with the job to the archive and the DLQ. No index: they are read with
-- their row, never searched.
ALTER TABLE jobs ADD COLUMN result jsonb, ADD COLUMN progress jsonb,
    ADD COLUMN progress_message text, ADD COLUMN progress_at timestamptz;
ALTER TABLE archive ADD COLUMN result jsonb, ADD COLUMN progress jsonb,
    ADD COLUMN progress_message text, ADD COLUMN progress_at timestamptz;
ALTER TABLE dlq ADD COLUMN result jsonb, ADD COLUMN progress jsonb,
    ADD COLUMN progress_message text, ADD COLUMN progress_at timestamptz;
