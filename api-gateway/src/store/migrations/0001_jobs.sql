-- Job records: the resource plus what the store needs to apply events and re-publish jobs.
CREATE TABLE warren_jobs (
    id              uuid PRIMARY KEY,          -- UUIDv7: ordering by id is ordering by age
    job_type        text        NOT NULL,
    status          text        NOT NULL,
    attempt         integer     NOT NULL,
    max_attempts    integer     NOT NULL,
    attempt_budget  integer     NOT NULL,
    progress        jsonb,
    result          jsonb,
    error           jsonb,
    payload         jsonb       NOT NULL,
    timeout_ms      bigint      NOT NULL,
    callback_url    text,
    seq             bigint      NOT NULL,      -- last applied event's seq within `attempt`
    version         bigint      NOT NULL,      -- count of changes (SSE event id)
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    next_attempt_at timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX warren_jobs_status ON warren_jobs (status, id DESC);
CREATE INDEX warren_jobs_type ON warren_jobs (job_type, id DESC);
CREATE INDEX warren_jobs_finished ON warren_jobs (finished_at) WHERE finished_at IS NOT NULL;

-- Idempotency keys: which request body a key was used with, and its job.
CREATE TABLE warren_idempotency (
    key          text        PRIMARY KEY,
    request_hash text        NOT NULL,
    job_id       uuid        NOT NULL,
    accepted     boolean     NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX warren_idempotency_created ON warren_idempotency (created_at);
