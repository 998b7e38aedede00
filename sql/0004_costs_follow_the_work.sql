-- Costs that follow the work, not the backlog.

-- 1. Claims read only due jobs. A pending job written with a due time still ahead is
--    `scheduled`: it stays out of the claim's index until a poller promotes it, once due.
--    `scheduled = true` is always safe (the promotion looks at run_at). A row written by
--    hand with a future run_at and the default false is still claimed only when due, but
--    sits in the claim's index meanwhile: such rows should set scheduled = true.
ALTER TABLE jobs ADD COLUMN scheduled boolean NOT NULL DEFAULT false;
UPDATE jobs SET scheduled = true WHERE status = 'pending' AND run_at > now();

DROP INDEX jobs_claimable;
CREATE INDEX jobs_claimable ON jobs (queue, priority DESC, run_at, id)
    WHERE status = 'pending' AND NOT scheduled;
CREATE INDEX jobs_scheduled ON jobs (queue, run_at)
    WHERE status = 'pending' AND scheduled;

-- 2. Heartbeats are HOT updates: heartbeat_at is in no index any more, so a beat rewrites
--    the row in its page and touches no index. The reaper reads every running row instead
--    (as many as the workers run at once) to find the stalled ones.
DROP INDEX jobs_running;
CREATE INDEX jobs_running ON jobs (id) WHERE status = 'running';

-- 3. list_dlq reads the newest dead jobs from indexes in its own order, whatever the
--    DLQ's size, with or without a queue.
DROP INDEX dlq_queue_moved_at;
CREATE INDEX dlq_newest ON dlq (updated_at DESC, id DESC);
CREATE INDEX dlq_queue_newest ON dlq (queue, updated_at DESC, id DESC);
CREATE INDEX jobs_dead_newest ON jobs (updated_at DESC, id DESC)
    WHERE status IN ('failed', 'cancelled', 'unprocessable', 'critical_failure', 'bad_job');
CREATE INDEX jobs_dead_queue_newest ON jobs (queue, updated_at DESC, id DESC)
    WHERE status IN ('failed', 'cancelled', 'unprocessable', 'critical_failure', 'bad_job');
