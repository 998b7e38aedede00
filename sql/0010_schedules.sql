-- Schedules: jobs enqueued on a cron expression or every fixed interval (queue.schedule()).
-- Workers that register a schedule keep its row; the maintenance leader enqueues its slots.
-- A slot is enqueued in the transaction that moves `last_slot` past it, and only when
-- `last_slot` still holds what the enqueuer read: each slot is enqueued once, whatever
-- the number of enqueuers, their restarts or their clocks (slots are counted on the
-- database clock).
--   cron / every   exactly one of them: a cron expression read in `timezone`, or an
--                  interval, its slots the multiples of it since the Unix epoch
--   missed         what a fleet that was down enqueues for the slots it missed
--   last_slot      every slot up to it is enqueued or passed over (missed, paused)
--   next_slot      the next slot, as the last enqueuer computed it (for operators)
--   seen_at        the last time a worker registered it (a schedule no code registers any
--                  more keeps its row, and nothing enqueues it)
CREATE TABLE schedules (
    name             text        PRIMARY KEY CHECK (name <> '' AND length(name) <= 200),
    queue            text,
    cron             text        CHECK (length(cron) <= 200),
    every            interval    CHECK (every >= interval '1 second'),
    timezone         text        NOT NULL DEFAULT 'UTC',
    missed           text        NOT NULL DEFAULT 'skip'
        CHECK (missed IN ('skip', 'latest', 'all')),
    paused           boolean     NOT NULL DEFAULT false,
    paused_at        timestamptz,
    last_slot        timestamptz NOT NULL DEFAULT now(),
    next_slot        timestamptz,
    last_job_id      uuid,
    last_enqueued_at timestamptz,
    enqueued         bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    seen_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_one_rule CHECK ((cron IS NULL) <> (every IS NULL))
);
