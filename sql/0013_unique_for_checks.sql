-- A job's unique_for_seconds is what its reads give back (Job.unique_for): a period of
-- more than zero seconds, or 'Infinity' for good. Raw SQL must not store one no client
-- can read back: NaN is no JSON number (and PostgreSQL orders it above every number, so
-- it is named), and -Infinity or a negative period would read as nonsense.
ALTER TABLE jobs ADD CONSTRAINT jobs_unique_for_positive
    CHECK (unique_for_seconds > 0 AND unique_for_seconds <> 'NaN');
ALTER TABLE archive ADD CONSTRAINT archive_unique_for_positive
    CHECK (unique_for_seconds > 0 AND unique_for_seconds <> 'NaN');
ALTER TABLE dlq ADD CONSTRAINT dlq_unique_for_positive
    CHECK (unique_for_seconds > 0 AND unique_for_seconds <> 'NaN');
