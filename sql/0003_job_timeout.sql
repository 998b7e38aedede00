-- A per-job timeout (seconds) that overrides its handler's `timeout`; NULL: the handler's.
ALTER TABLE jobs ADD COLUMN timeout_seconds double precision
    CONSTRAINT jobs_timeout_positive CHECK (timeout_seconds > 0 AND timeout_seconds < 'Infinity');
ALTER TABLE archive ADD COLUMN timeout_seconds double precision;
ALTER TABLE dlq ADD COLUMN timeout_seconds double precision;
