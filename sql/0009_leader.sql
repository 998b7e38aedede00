-- One worker of the fleet leads the maintenance (the reaper, the janitor): the holder of a
-- lease row, renewed from its event loop, taken over by another worker once it expires.
-- One row per duty's name ('maintenance'); the database clock alone decides expiry.
--   worker_id    the holder (a workers.id), NULL once released
--   term         +1 at every new holder: two leaders that overlap are told apart by it
--   acquired_at  when this term began; renewed_at, the last renewal
CREATE TABLE leader (
    name        text        PRIMARY KEY CHECK (name <> ''),
    worker_id   uuid,
    term        bigint      NOT NULL DEFAULT 1,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
