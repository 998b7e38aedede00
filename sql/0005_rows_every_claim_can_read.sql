-- Values no claim could process, refused by the table itself: a row written by hand (or by
-- a role that may update jobs) with one of them would fail every claim that meets it,
-- stopping every queue of the workers that claim it. NOT VALID: rows already there are
-- not checked, only what is written from now on.
ALTER TABLE jobs
    -- a claim adds one to the lease and to the attempt, the reaper to reprocess_count
    ADD CONSTRAINT jobs_counters_in_range CHECK (
        lease BETWEEN 0 AND 2000000000 AND reprocess_count <= 2000000000) NOT VALID,
    -- times every client loads into its language's datetime, as for run_at (0002)
    ADD CONSTRAINT jobs_times_representable CHECK (
        created_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
        AND updated_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
        AND (completed_at IS NULL
             OR completed_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00')
        AND (heartbeat_at IS NULL
             OR heartbeat_at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00')
    ) NOT VALID;
