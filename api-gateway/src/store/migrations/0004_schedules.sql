-- Recurring schedules: each due time makes a normal job (its id derived from the schedule and
-- the due time, so a due time never makes two).
CREATE TABLE warren_schedules (
    id              uuid PRIMARY KEY,
    cron            text        NOT NULL,
    timezone        text        NOT NULL,
    job_type        text        NOT NULL,
    payload         jsonb       NOT NULL,
    max_attempts    integer,
    timeout_ms      bigint,
    callback_url    text,
    paused          boolean     NOT NULL,
    next_run_at     timestamptz,
    last_run_at     timestamptz,
    last_job_id     uuid,
    misfires        bigint      NOT NULL,
    last_misfire_at timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE INDEX warren_schedules_due ON warren_schedules (next_run_at) WHERE NOT paused;
