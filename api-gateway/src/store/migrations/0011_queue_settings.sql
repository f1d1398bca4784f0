-- Flow control per job type (PATCH /v1/queues/{type}): shared by every gateway, kept across
-- restarts. `generation` comes from one sequence, so it grows with every change anywhere;
-- slot tokens carry `slots_epoch`, the generation max_running was last set at, and
-- `slots_generation` is the epoch whose tokens were published;
-- `refilled_window` the last rate window a gateway refilled (claimed by a conditional update).
CREATE SEQUENCE warren_flow_generation;
CREATE TABLE warren_queue_settings (
    job_type         text PRIMARY KEY,
    paused           boolean     NOT NULL DEFAULT false,
    max_running      integer,
    rate_jobs        integer,
    rate_per_seconds double precision,
    generation       bigint      NOT NULL,
    slots_epoch      bigint      NOT NULL,  -- the generation max_running was last set at
    slots_generation bigint,
    refilled_window  bigint,
    updated_at       timestamptz NOT NULL
);
