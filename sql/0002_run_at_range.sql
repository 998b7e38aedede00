-- A due time every client can read back: workers load claimed rows into Python datetimes,
-- which stop at years 1 and 9999. '-infinity' or year 20000, written by raw SQL, would make
-- every claim that meets the row fail. Job() enforces the same range before inserting.
ALTER TABLE jobs ADD CONSTRAINT jobs_run_at_representable
    CHECK (run_at >= '0001-01-02 00:00:00+00' AND run_at <= '9999-12-30 00:00:00+00');
