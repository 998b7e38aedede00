-- How a queue's workers commit their own writes (configure_queue(durability=...)):
--
--   durable  every write of the library waits for its WAL to be flushed, as PostgreSQL
--            does by default (the session's synchronous_commit, left as it is).
--   fast     a worker's own writes for the queue's jobs (claims, results, heartbeats,
--            progress, a handler's parks) commit with synchronous_commit off for their
--            transaction only: they return before the WAL reaches the disk, and a
--            crash of the server may lose the last of them (the jobs run again). Inserts
--            are never made fast, nor are operators' writes or the maintenance's.
--
-- A queue's row only: workers read it with the limits, once a second. Not part of
-- `controlled`: a fast queue is claimed by the plain claim as any other.
ALTER TABLE queues ADD COLUMN durability text NOT NULL DEFAULT 'durable'
    CONSTRAINT queues_durability_known CHECK (durability IN ('durable', 'fast'));
